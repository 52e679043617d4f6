#!/usr/bin/env bash
# Sourced by scripts/test.sh and scripts/stress.sh: installs redis-server
# when it is missing (apt-get) and starts a throwaway one on a free loopback
# port, exporting MULTITASK_TEST_REDIS and MULTITASK_REDIS_SERVER for the
# cluster tests; the server goes when the sourcing script exits. Under
# CI=true a missing server is an error, else a warning (the cluster tests
# then skip).

say() { printf '\n== %s: %s\n' "$(date +%H:%M:%S)" "$*"; }

ensure_redis() {
  # openssl makes the certificates of the TLS tests.
  if ! command -v openssl >/dev/null 2>&1; then
    say "installing openssl"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q openssl >/dev/null 2>&1 \
      || { $sudo apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q openssl >/dev/null 2>&1; } \
      || true
  fi
  if command -v redis-server >/dev/null 2>&1; then
    return 0
  fi
  say "installing redis-server"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q redis-server >/dev/null 2>&1 \
    || { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q redis-server >/dev/null 2>&1; } \
    || return 1
  # The Debian package starts a system service on 6379; the tests use their
  # own server on a free port and leave that one alone.
  command -v redis-server >/dev/null 2>&1
}

free_port() {
  python3 - <<'PY' 2>/dev/null && return 0
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
PY
  local p
  for p in $(seq 21000 21999); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  return 1
}

REDIS_PID=""
REDIS_DIR=""
cleanup() {
  if [ -n "$REDIS_PID" ]; then
    kill "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
  fi
  [ -n "$REDIS_DIR" ] && rm -rf "$REDIS_DIR"
}
trap cleanup EXIT

start_redis() {
  local port
  port=$(free_port) || return 1
  REDIS_DIR=$(mktemp -d)
  redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
    --dir "$REDIS_DIR" --daemonize no --logfile "$REDIS_DIR/redis.log" &
  REDIS_PID=$!
  local i
  for i in $(seq 1 100); do
    if redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG; then
      export MULTITASK_TEST_REDIS="redis://127.0.0.1:$port/"
      export MULTITASK_REDIS_SERVER
      MULTITASK_REDIS_SERVER=$(command -v redis-server)
      say "redis-server on 127.0.0.1:$port"
      return 0
    fi
    sleep 0.1
  done
  return 1
}

if ensure_redis && start_redis; then
  :
elif [ "${CI:-}" = "true" ]; then
  echo "error: redis-server could not be installed or started; the cluster tests need it" >&2
  exit 1
else
  echo "warning: no redis-server; the cluster tests will skip (they fail under CI=true)" >&2
fi

