# Stand-in for prom/blackbox-exporter from Debian sid's package (prometheus-blackbox-exporter,
# the version the tag names), for machines that cannot pull images. Bookworm's own package is
# 0.23, out of support; sid's binary links only libc and runs on bookworm. The builder puts the
# .deb file that `make system-deps` fetched into the build context. Laid out like the official
# image: entrypoint /bin/blackbox_exporter (Debian names it prometheus-blackbox-exporter), user
# nobody, the default configuration at /etc/blackbox_exporter/config.yml, and a `wget` for the
# Compose healthcheck.
ARG BASE
FROM ${BASE}
COPY debs/ /tmp/debs/
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/* \
    && for deb in /tmp/debs/*.deb; do dpkg-deb -x "$deb" /tmp/unpacked; done \
    && install -m 0755 /tmp/unpacked/usr/bin/prometheus-blackbox-exporter /usr/bin/blackbox_exporter \
    && mkdir -p /etc/blackbox_exporter \
    && cp /tmp/unpacked/etc/prometheus/blackbox.yml /etc/blackbox_exporter/config.yml \
    && rm -rf /tmp/debs /tmp/unpacked
USER nobody
EXPOSE 9115
ENTRYPOINT ["/bin/blackbox_exporter"]
CMD ["--config.file=/etc/blackbox_exporter/config.yml"]
