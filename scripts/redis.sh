#!/usr/bin/env bash
# Sourced by scripts/test.sh and scripts/stress.sh: installs redis-server
# when it is missing (apt-get) and starts a throwaway one on a free loopback
# port, exporting MULTITASK_TEST_REDIS and MULTITASK_REDIS_SERVER for the
# cluster tests, and a Redis Cluster of three masters, exporting
# MULTITASK_TEST_REDIS_CLUSTER; the servers go when the sourcing script exits. Under
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
CLUSTER_PIDS=()
cleanup() {
  local pid
  for pid in $REDIS_PID "${CLUSTER_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
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

# A port for a cluster node: free, and its cluster bus port (the port plus
# 10000) free and valid too; not one of the ports given.
free_cluster_port() {
  local p tries
  for tries in $(seq 1 200); do
    p=$((20000 + RANDOM % 20000))
    printf '%s\n' "$@" | grep -qx "$p" && continue
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue
    (exec 3<>"/dev/tcp/127.0.0.1/$((p + 10000))") 2>/dev/null && continue
    echo "$p"
    return 0
  done
  return 1
}

# A Redis Cluster of three masters (no replicas), each on a free port, for
# the sharded-queue tests: exports MULTITASK_TEST_REDIS_CLUSTER, a seed node's
# redis+cluster:// URL.
start_redis_cluster() {
  local ports=() port i dir
  for i in 1 2 3; do
    port=$(free_cluster_port "${ports[@]}") || return 1
    ports+=("$port")
    dir="$REDIS_DIR/cluster-$port"
    mkdir -p "$dir"
    redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
      --cluster-enabled yes --cluster-config-file "$dir/nodes.conf" \
      --dir "$dir" --daemonize no --logfile "$dir/redis.log" &
    CLUSTER_PIDS+=($!)
  done
  for port in "${ports[@]}"; do
    for i in $(seq 1 100); do
      redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG && break
      sleep 0.1
    done
  done
  local nodes=()
  for port in "${ports[@]}"; do nodes+=("127.0.0.1:$port"); done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes \
    >"$REDIS_DIR/cluster-create.log" 2>&1 || return 1
  # The masters agree on the slots through gossip: seconds, on a busy machine.
  for i in $(seq 1 300); do
    if redis-cli -h 127.0.0.1 -p "${ports[0]}" cluster info 2>/dev/null | grep -q 'cluster_state:ok'; then
      export MULTITASK_TEST_REDIS_CLUSTER="redis+cluster://127.0.0.1:${ports[0]}/"
      say "Redis Cluster of 3 masters on 127.0.0.1:${ports[*]}"
      return 0
    fi
    sleep 0.1
  done
  return 1
}

if ensure_redis && start_redis; then
  if ! start_redis_cluster; then
    if [ "${CI:-}" = "true" ]; then
      echo "error: a Redis Cluster could not be started; the sharded-queue tests need it" >&2
      cat "$REDIS_DIR/cluster-create.log" >&2 2>/dev/null || true
      exit 1
    fi
    echo "warning: no Redis Cluster; the sharded-queue tests will skip" >&2
  fi
elif [ "${CI:-}" = "true" ]; then
  echo "error: redis-server could not be installed or started; the cluster tests need it" >&2
  exit 1
else
  echo "warning: no redis-server; the cluster tests will skip (they fail under CI=true)" >&2
fi

