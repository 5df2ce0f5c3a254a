# Stand-in for prom/blackbox-exporter from Debian bookworm's package (blackbox_exporter 0.23.0),
# for machines that cannot pull images. Laid out like the official image: entrypoint
# /bin/blackbox_exporter (Debian names it prometheus-blackbox-exporter), user nobody, the
# default configuration at /etc/blackbox_exporter/config.yml, and a `wget` for the Compose
# healthcheck.
ARG BASE
FROM ${BASE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus-blackbox-exporter wget \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s prometheus-blackbox-exporter /usr/bin/blackbox_exporter \
    && mkdir -p /etc/blackbox_exporter \
    && cp /etc/prometheus/blackbox.yml /etc/blackbox_exporter/config.yml
USER nobody
EXPOSE 9115
ENTRYPOINT ["/bin/blackbox_exporter"]
CMD ["--config.file=/etc/blackbox_exporter/config.yml"]
