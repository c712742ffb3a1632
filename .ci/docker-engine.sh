# Sourced by .ci/run: make a Docker engine answer, so container-task tests really run in CI.
# Debian's docker.io, started with no bridge and no iptables rules (nothing leaves loopback) and
# its data under a temporary folder; busybox-static is what tests/test_containers.py builds its
# image from (no registry is reachable). Best effort: if anything fails, the docker-marked tests
# skip with the reason, and the rest of the suite runs as usual.

by_docker_engine() {
  if docker info >/dev/null 2>&1; then
    echo "docker: an engine already answers"; return 0
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "docker: not root, not starting an engine (docker tests will skip)"; return 0
  fi
  if ! command -v dockerd >/dev/null 2>&1 || ! command -v busybox >/dev/null 2>&1; then
    echo "docker: installing docker.io and busybox-static (Debian)"
    # Bounded: a registry that hangs must not eat CI's budget (the docker tests then skip).
    (timeout 300 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq \
      docker.io busybox-static) \
      >/tmp/by-apt-docker.log 2>&1 || { echo "docker: install failed (see /tmp/by-apt-docker.log)"; return 0; }
  fi
  local root; root=$(mktemp -d /tmp/by-dockerd.XXXXXX)
  dockerd --bridge=none --iptables=false --ip6tables=false --data-root "$root/data" --exec-root "$root/exec" \
    --pidfile "$root/dockerd.pid" -H "unix://$root/docker.sock" >"$root/dockerd.log" 2>&1 &
  export DOCKER_HOST="unix://$root/docker.sock"
  BY_DOCKERD_PID=$!
  for _ in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then echo "docker: engine started at $DOCKER_HOST"; return 0; fi
    sleep 0.5
  done
  echo "docker: the engine did not answer in 30 s (docker tests will skip); last log lines:"
  tail -n 5 "$root/dockerd.log" || true
  kill "$BY_DOCKERD_PID" 2>/dev/null || true
  unset DOCKER_HOST
  return 0
}

by_docker_engine || true
