# Stand-in for prom/alertmanager from Debian sid's package (prometheus-alertmanager, the version
# the tag names), for machines that cannot pull images. Bookworm's own package is 0.25, out of
# support; sid's binaries link only libc and run on bookworm. The builder puts the .deb file
# that `make system-deps` fetched into the build context. Laid out like the official image:
# entrypoint /bin/alertmanager and /bin/amtool (Debian names the server prometheus-alertmanager),
# user nobody, data in /alertmanager owned by nobody, and a `wget` for the Compose healthcheck.
ARG BASE
FROM ${BASE}
COPY debs/ /tmp/debs/
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/* \
    && for deb in /tmp/debs/*.deb; do dpkg-deb -x "$deb" /tmp/unpacked; done \
    && install -m 0755 /tmp/unpacked/usr/bin/prometheus-alertmanager /usr/bin/alertmanager \
    && install -m 0755 /tmp/unpacked/usr/bin/amtool /usr/bin/amtool \
    && mkdir -p /usr/share/prometheus \
    && cp -r /tmp/unpacked/usr/share/prometheus/alertmanager /usr/share/prometheus/ \
    && rm -rf /tmp/debs /tmp/unpacked \
    && mkdir -p /alertmanager && chown nobody:nogroup /alertmanager
USER nobody
WORKDIR /alertmanager
EXPOSE 9093
VOLUME ["/alertmanager"]
ENTRYPOINT ["/bin/alertmanager"]
CMD ["--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager"]
