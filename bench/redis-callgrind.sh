#!/usr/bin/env bash
# Redis's own instructions per reservation, repeatable where its CPU times are not: a
# redis-server (appendonly yes, appendfsync always, its own data dir) under
# `valgrind --tool=callgrind`, driven by bench/redis-script.py (this tree's scripts, calls of
# BATCH new users, every item a win). Two runs, SMALL and LARGE calls; the difference of their
# instructions over the difference of reservations is the cost of one, start-up cancelling out.
# Counts what Redis executes in user space (the scripts, the commands, writing the AOF
# buffer), not the kernel's write and fsync: the AOF bytes per reservation stand for those.
#   bench/redis-callgrind.sh
#   BATCH=16 SMALL=50 LARGE=300 bench/redis-callgrind.sh
#   LUA_DIR=/tmp/other/crates/store/lua bench/redis-callgrind.sh   (another tree's scripts;
#     LAYOUT=triples for a tree before stop 25)
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh" # strict mode; the working directory is the repository root
BATCH=${BATCH:-32}
SMALL=${SMALL:-100}
LARGE=${LARGE:-600}
PORT=${PORT:-18902}
command -v valgrind >/dev/null || { echo "needs valgrind: apt-get install -y valgrind" >&2; exit 1; }
OUT=$(mktemp -d)
trap 'stop_jobs; rm -rf "$OUT"' EXIT

# $1 calls: answers the instructions redis-server executed; the driver's line to stderr.
instructions() {
  local calls=$1
  rm -rf "$OUT/data" "$OUT"/cg.*
  mkdir -p "$OUT/data"
  valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.%p" redis-server --port "$PORT" \
    --bind 127.0.0.1 --dir "$OUT/data" --appendonly yes --appendfsync always --save "" \
    --daemonize no --loglevel warning >/dev/null 2>"$OUT/vg.txt" &
  local pid=$!
  for _ in $(seq 300); do redis-cli -p "$PORT" PING >/dev/null 2>&1 && break; sleep 0.1; done
  python3 bench/redis-script.py "$PORT" "$calls" "$BATCH" >&2
  redis-cli -p "$PORT" SHUTDOWN NOSAVE >/dev/null 2>&1 || true
  wait "$pid" 2>/dev/null || true
  cg_total "$OUT"/cg.*
}

a=$(instructions "$SMALL")
b=$(instructions "$LARGE")
cg_per_request "$a" "$b" $((SMALL * BATCH)) $((LARGE * BATCH)) "redis reserve_batch" "batch $BATCH" |
  sed 's/per request/per reservation/'
