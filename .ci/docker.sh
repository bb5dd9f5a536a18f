#!/usr/bin/env bash
# Make a Docker engine answer on this machine: install docker.io when dockerd is missing, start dockerd in the
# background when no engine answers, then wait (bounded) until `docker info` works. Idempotent; needs root to install.
set -euo pipefail

log=${CTX_DOCKERD_LOG:-/var/log/dockerd.log}
wait_seconds=${CTX_DOCKERD_WAIT:-60}

engine_answers() { timeout 5 docker info >/dev/null 2>&1; }

# The tests of pulling (tests/test_docker_pull.py) run their own Distribution registry on 127.0.0.1: the binary
# only, never the package's system service.
if ! command -v docker-registry >/dev/null; then
  echo "docker.sh: installing docker-registry" >&2
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y -qq docker-registry || { apt-get update -qq && apt-get install -y -qq docker-registry; }; } >/dev/null
  if command -v systemctl >/dev/null; then systemctl disable --now docker-registry >/dev/null 2>&1 || true; fi
fi

if command -v docker >/dev/null && engine_answers; then
  echo "docker.sh: engine already answers" >&2
  exit 0
fi

if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then
  echo "docker.sh: installing docker.io" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq docker.io >/dev/null
fi

if [ -n "${DOCKER_HOST:-}" ]; then
  echo "docker.sh: DOCKER_HOST=$DOCKER_HOST does not answer; not starting a local engine for it" >&2
  exit 1
fi

if ! pgrep -x dockerd >/dev/null; then
  echo "docker.sh: starting dockerd (log: $log)" >&2
  nohup dockerd >"$log" 2>&1 &
fi

for _ in $(seq "$wait_seconds"); do
  if engine_answers; then
    echo "docker.sh: engine answers ($(docker version --format '{{.Server.Version}}'))" >&2
    exit 0
  fi
  sleep 1
done
echo "docker.sh: no engine answered within ${wait_seconds}s; last lines of $log:" >&2
tail -n 20 "$log" >&2 || true
exit 1
