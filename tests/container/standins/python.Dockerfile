# Stand-in for the official python:3.11 slim image, from Debian bookworm's own Python 3.11, for
# machines that cannot pull images. It offers what api/Dockerfile relies on: `python` and `pip`
# on PATH, pip free to install into the system (no EXTERNALLY-MANAGED marker), and useradd.
ARG BASE
FROM ${BASE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip python-is-python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* /usr/lib/python3.11/EXTERNALLY-MANAGED
# After apt, whose ca-certificates rebuilds the bundle from Debian's list alone: this machine's
# bundle may hold a CA its network needs (a TLS-inspecting proxy), and pip in builds needs it too.
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV LANG=C.UTF-8
CMD ["python3"]
