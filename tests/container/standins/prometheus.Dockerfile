# Stand-in for prom/prometheus from Debian bookworm's package (Prometheus 2.42.0), for machines
# that cannot pull images. Laid out like the official image: entrypoint /bin/prometheus, user
# nobody, data in /prometheus owned by nobody, and a `wget` for the Compose healthcheck.
ARG BASE
FROM ${BASE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus wget \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus && chown nobody:nogroup /prometheus
USER nobody
WORKDIR /prometheus
EXPOSE 9090
VOLUME ["/prometheus"]
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
