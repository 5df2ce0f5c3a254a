#!/usr/bin/env bash
# Installs, from Debian's packages, what `make test` runs natively and what its container stage
# needs, when it is missing. Needs root and apt; without them it says what to install instead.
#
#   required:        Prometheus and promtool, Alertmanager and amtool, and the blackbox exporter,
#                    of the versions docker-compose.yml pins (Prometheus 3.5 LTS and friends).
#                    Bookworm's own packages (2.42, 0.25, 0.23) are out of support, so these come
#                    from Debian sid (below) into /opt/hvs-lab, linked from /usr/local/bin.
#   container stage: Docker Engine (docker.io), the Compose v2 and buildx CLI plugins, debootstrap
#                    (stand-in base images where no registry can be reached), and chromium with
#                    chromium-driver (browser checks). Without them the stage skips itself.
#   k8s scripts:     shellcheck, for the scripts of the Kubernetes path that no cluster runs here.
#
# Packages of other suites are fetched with `apt-get download` through a private sources list
# and unpacked with `dpkg-deb -x`: the system's own apt sources stay as they are. Their .deb files
# are kept in $DEB_CACHE, where the container stage takes them for its stand-in images.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PLUGINS=/usr/local/lib/docker/cli-plugins
# Compose v2 and buildx are not packaged for bookworm. Trixie's packages are static Go binaries
# that run on bookworm.
PLUGIN_SUITE=trixie
# Sid's monitoring packages link only libc (>= 2.34; bookworm has 2.36), so they run here.
MONITORING_SUITE=sid
OPT=/opt/hvs-lab
DEB_CACHE=${DEB_CACHE:-/var/cache/hvs-lab/debs}
BIN=/usr/local/bin

# The upstream version of an image that docker-compose.yml pins (the one source of them).
pinned() {
  sed -nE "s|^ +image: $1:v?([0-9][0-9.]*)\$|\1|p" "$ROOT/docker-compose.yml"
}
PROMETHEUS_VERSION=$(pinned prom/prometheus)
ALERTMANAGER_VERSION=$(pinned prom/alertmanager)
BLACKBOX_VERSION=$(pinned prom/blackbox-exporter)
for version in "$PROMETHEUS_VERSION" "$ALERTMANAGER_VERSION" "$BLACKBOX_VERSION"; do
  [[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || { echo "system-deps: no version pinned in docker-compose.yml" >&2; exit 1; }
done
# Each Debian package of the monitoring stack, the upstream version it must have, and the
# programs it brings, linked under the names Debian gives them.
MONITORING=(
  "prometheus $PROMETHEUS_VERSION prometheus"
  "promtool $PROMETHEUS_VERSION promtool"
  "prometheus-alertmanager $ALERTMANAGER_VERSION prometheus-alertmanager amtool"
  "prometheus-blackbox-exporter $BLACKBOX_VERSION prometheus-blackbox-exporter"
)
# Data that Debian's builds read from fixed paths: Alertmanager will not start without its
# default notification templates there, and Prometheus serves its page from web/.
SHARED=/usr/share/prometheus
SHARED_DATA=("prometheus-alertmanager alertmanager" "prometheus web")

# The version a program prints of itself ("prometheus, version X.Y.Z+ds1 (...)" gives X.Y.Z).
version_of() {
  "$1" --version 2>&1 | sed -nE '1s/.*version ([0-9]+\.[0-9]+\.[0-9]+).*/\1/p'
}

monitoring=()
for entry in "${MONITORING[@]}"; do
  read -r package version programs <<<"$entry"
  for data in "${SHARED_DATA[@]}"; do
    read -r owner folder <<<"$data"
    if [ "$owner" = "$package" ] && [ ! -e "$SHARED/$folder" ]; then
      monitoring+=("$entry")
      continue 2
    fi
  done
  for program in $programs; do
    if [ "$(version_of "$BIN/$program" 2>/dev/null)" != "$version" ] || ! ls "$DEB_CACHE/${package}_$version"[+-]*.deb >/dev/null 2>&1; then
      monitoring+=("$entry")
      break
    fi
  done
done

packages=()
# An engine already reachable (Docker Desktop, docker-ce, a remote DOCKER_HOST) is used as it is.
docker info >/dev/null 2>&1 || command -v dockerd >/dev/null || packages+=(docker.io)
command -v debootstrap >/dev/null || packages+=(debootstrap)
command -v chromium >/dev/null || packages+=(chromium)
command -v chromedriver >/dev/null || packages+=(chromium-driver)
command -v shellcheck >/dev/null || packages+=(shellcheck)
plugins=()
docker compose version >/dev/null 2>&1 || plugins+=(docker-compose)
docker buildx version >/dev/null 2>&1 || plugins+=(docker-buildx)

[ ${#monitoring[@]} -eq 0 ] && [ ${#packages[@]} -eq 0 ] && [ ${#plugins[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  if [ ${#monitoring[@]} -gt 0 ]; then
    echo "system-deps: the tests need Prometheus and promtool $PROMETHEUS_VERSION, Alertmanager and" \
         "amtool $ALERTMANAGER_VERSION and the blackbox exporter $BLACKBOX_VERSION in $BIN, under" \
         "Debian's names (prometheus-alertmanager, prometheus-blackbox-exporter): run" \
         "'sudo make system-deps' on Debian, or install the upstream releases under those names" >&2
    exit 1
  fi
  echo "system-deps: not root with apt, so not installing: ${packages[*]} ${plugins[*]}; the container stage will skip itself"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
if [ ${#packages[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# `fetch SUITE PACKAGE...`: the packages' current .deb files from SUITE, into $work/SUITE.
fetch() {
  local suite=$1 dir=$work/$1
  shift
  mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main" \
    >"$dir/sources.list"
  # The private lists live in a mktemp folder that apt's _apt user cannot write: apt runs as root.
  local private=(-o "Dir::Etc::SourceList=$dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
                 -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache" -o APT::Sandbox::User=root)
  apt-get -qq "${private[@]}" update
  (cd "$dir" && apt-get -qq "${private[@]}" download "$@")
}

if [ ${#plugins[@]} -gt 0 ]; then
  fetch "$PLUGIN_SUITE" "${plugins[@]}"
  for deb in "$work/$PLUGIN_SUITE"/*.deb; do dpkg-deb -x "$deb" "$work/plugins"; done
  mkdir -p "$PLUGINS"
  install -m 0755 "$work"/plugins/usr/libexec/docker/cli-plugins/* "$PLUGINS/"
  echo "system-deps: installed ${plugins[*]} from Debian $PLUGIN_SUITE into $PLUGINS"
fi

if [ ${#monitoring[@]} -gt 0 ]; then
  names=()
  for entry in "${monitoring[@]}"; do read -r package _ <<<"$entry"; names+=("$package"); done
  fetch "$MONITORING_SUITE" "${names[@]}"
  mkdir -p "$DEB_CACHE" "$BIN"
  for entry in "${monitoring[@]}"; do
    read -r package version programs <<<"$entry"
    deb=$(ls "$work/$MONITORING_SUITE/${package}_"*.deb)
    # Debian versions read "X.Y.Z+ds1-6": the upstream release is what comes before + or -.
    debian_version=$(dpkg-deb -f "$deb" Version)
    if [ "${debian_version%%[+-]*}" != "$version" ]; then
      echo "system-deps: Debian $MONITORING_SUITE has $package $debian_version, but docker-compose.yml" \
           "pins $version: move the pins in docker-compose.yml, k8s/helm-values.yaml and docs/versions.md together" >&2
      exit 1
    fi
    dest=$OPT/${package}_$debian_version
    rm -rf "$dest" && mkdir -p "$dest"
    dpkg-deb -x "$deb" "$dest"
    rm -f "$DEB_CACHE/${package}_"*.deb
    cp "$deb" "$DEB_CACHE/"
    for data in "${SHARED_DATA[@]}"; do
      read -r owner folder <<<"$data"
      [ "$owner" = "$package" ] || continue
      # A folder that Debian's own package installed there stays; a link of ours moves along.
      if [ -L "$SHARED/$folder" ] || [ ! -e "$SHARED/$folder" ]; then
        mkdir -p "$SHARED"
        ln -sfn "$dest$SHARED/$folder" "$SHARED/$folder"
      fi
    done
    for program in $programs; do
      ln -sfn "$dest/usr/bin/$program" "$BIN/$program"
      found=$(version_of "$BIN/$program")
      [ "$found" = "$version" ] || { echo "system-deps: $BIN/$program prints version '$found', not $version" >&2; exit 1; }
    done
    echo "system-deps: installed $package $debian_version from Debian $MONITORING_SUITE ($programs in $BIN)"
  done
fi
