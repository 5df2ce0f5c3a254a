# Stand-in for prom/prometheus from Debian sid's packages (prometheus and promtool, the version
# the tag names), for machines that cannot pull images. Bookworm's own package is 2.42, out of
# support; sid's binaries link only libc and run on bookworm. The builder puts the .deb files
# that `make system-deps` fetched into the build context. Laid out like the official image:
# /bin/prometheus and /bin/promtool, user nobody, data in /prometheus owned by nobody, and a
# `wget` for the Compose healthcheck. Debian's package has no React web UI (it cannot build it
# under Debian policy): the stand-in serves Debian's page that says so, the API and the
# classic pages Debian still carries, where the official image serves the new UI.
ARG BASE
FROM ${BASE}
COPY debs/ /tmp/debs/
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/* \
    && for deb in /tmp/debs/*.deb; do dpkg-deb -x "$deb" /tmp/unpacked; done \
    && install -m 0755 /tmp/unpacked/usr/bin/prometheus /tmp/unpacked/usr/bin/promtool /usr/bin/ \
    && mkdir -p /etc/prometheus /usr/share/prometheus \
    && cp -r /tmp/unpacked/usr/share/prometheus/web /usr/share/prometheus/ \
    && cp /tmp/unpacked/etc/prometheus/prometheus.yml /etc/prometheus/ \
    && rm -rf /tmp/debs /tmp/unpacked \
    && mkdir -p /prometheus && chown nobody:nogroup /prometheus
USER nobody
WORKDIR /prometheus
EXPOSE 9090
VOLUME ["/prometheus"]
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
