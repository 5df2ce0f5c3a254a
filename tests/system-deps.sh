#!/usr/bin/env bash
# Installs, from Debian's packages, what `make test` runs natively and what its container stage
# needs, when it is missing. Needs root and apt; without them it says what to install instead.
#
#   required:        promtool and amtool (packages prometheus, prometheus-alertmanager), and the
#                    blackbox exporter that the native lab test runs (prometheus-blackbox-exporter)
#   container stage: Docker Engine (docker.io), the Compose v2 and buildx CLI plugins, debootstrap
#                    (stand-in base images where no registry can be reached), and chromium with
#                    chromium-driver (browser checks). Without them the stage skips itself.
#   k8s scripts:     shellcheck, for the scripts of the Kubernetes path that no cluster runs here.
set -euo pipefail

PLUGINS=/usr/local/lib/docker/cli-plugins
# Compose v2 and buildx are not packaged for bookworm. Trixie's packages are static Go binaries
# that run on bookworm; they are fetched with a private sources list (below), so the system's
# own sources stay as they are.
PLUGIN_SUITE=trixie

packages=()
command -v promtool >/dev/null || packages+=(prometheus)
command -v amtool >/dev/null || packages+=(prometheus-alertmanager)
command -v prometheus-blackbox-exporter >/dev/null || packages+=(prometheus-blackbox-exporter)
required=${#packages[@]}
# An engine already reachable (Docker Desktop, docker-ce, a remote DOCKER_HOST) is used as it is.
docker info >/dev/null 2>&1 || command -v dockerd >/dev/null || packages+=(docker.io)
command -v debootstrap >/dev/null || packages+=(debootstrap)
command -v chromium >/dev/null || packages+=(chromium)
command -v chromedriver >/dev/null || packages+=(chromium-driver)
command -v shellcheck >/dev/null || packages+=(shellcheck)
plugins=()
docker compose version >/dev/null 2>&1 || plugins+=(docker-compose)
docker buildx version >/dev/null 2>&1 || plugins+=(docker-buildx)

[ ${#packages[@]} -eq 0 ] && [ ${#plugins[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  missing="${packages[*]} ${plugins[*]}"
  if [ "$required" -gt 0 ]; then
    echo "promtool/amtool/the blackbox exporter are missing: install Debian's 'prometheus'," \
         "'prometheus-alertmanager' and 'prometheus-blackbox-exporter' (sudo apt-get install" \
         "--no-install-recommends prometheus prometheus-alertmanager prometheus-blackbox-exporter)" >&2
    exit 1
  fi
  echo "system-deps: not root with apt, so not installing:${missing}; the container stage will skip itself"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
if [ ${#packages[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

if [ ${#plugins[@]} -gt 0 ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/root"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $PLUGIN_SUITE main" \
    > "$work/sources.list"
  # The private lists live in a mktemp folder that apt's _apt user cannot write: apt runs as root.
  private=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
           -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o APT::Sandbox::User=root)
  apt-get -qq "${private[@]}" update
  (cd "$work" && apt-get -qq "${private[@]}" download "${plugins[@]}")
  for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$work/root"; done
  mkdir -p "$PLUGINS"
  install -m 0755 "$work"/root/usr/libexec/docker/cli-plugins/* "$PLUGINS/"
  echo "system-deps: installed ${plugins[*]} from Debian $PLUGIN_SUITE into $PLUGINS"
fi
