# Stand-in for prom/alertmanager from Debian bookworm's package (Alertmanager 0.25.0), for
# machines that cannot pull images. Laid out like the official image: entrypoint
# /bin/alertmanager (Debian names it prometheus-alertmanager), user nobody, data in
# /alertmanager owned by nobody, and a `wget` for the Compose healthcheck.
ARG BASE
FROM ${BASE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus-alertmanager wget \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s prometheus-alertmanager /usr/bin/alertmanager \
    && mkdir -p /alertmanager && chown nobody:nogroup /alertmanager
USER nobody
WORKDIR /alertmanager
EXPOSE 9093
VOLUME ["/alertmanager"]
ENTRYPOINT ["/bin/alertmanager"]
CMD ["--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager"]
