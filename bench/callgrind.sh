#!/usr/bin/env bash
# Instructions per request, repeatable where times are not: one node (`serve`, embedded store,
# one worker) under `valgrind --tool=callgrind`, driven by `ticketrush bench` over one
# keep-alive connection. Two runs per case, SMALL and LARGE requests; the difference of their
# instruction counts over the difference of requests is the per-request cost, start-up and
# shutdown cancelling out. Cases: the ceiling (hello-world), the sold-out answer (a sale of
# 10 tickets, then losers), and the win (a sale larger than the run: every request a new hold,
# journaled and fsynced); with proven users (`--user-auth jwt`, HS256, the generator minting a
# token per request) the same two: sold-out-jwt and win-jwt; and win-redis, the win on a node
# over a redis-server of this script's (appendfsync always), not in the default set. Needs
# valgrind.
#   bench/callgrind.sh [BIN...]      (default: this tree's release build)
#   CASES="sold-out sold-out-jwt" bench/callgrind.sh   (default: all but win-redis)
#   CONNS=64 CASES=win-redis bench/callgrind.sh        (connections: 1 by default; more fill
#                                                       batches as a loaded node's are)
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh" # strict mode; the working directory is the repository root
SMALL=${SMALL:-1000}
LARGE=${LARGE:-6000}
PORT=${PORT:-18383}
CONNS=${CONNS:-1}
REDIS_PORT=$((PORT + 1))
GEN=${GEN:-}
command -v valgrind >/dev/null || { echo "needs valgrind: apt-get install -y valgrind" >&2; exit 1; }
if [ $# -eq 0 ]; then
  bin=$(release_bin)
  set -- "$bin"
fi
GEN=${GEN:-$1}
OUT=$(mktemp -d)
trap 'stop_jobs; rm -rf "$OUT"' EXIT
URL="http://127.0.0.1:$PORT"
CASES=${CASES:-ceiling sold-out win sold-out-jwt win-jwt}
printf '%s\n' "a-benchmark-secret-of-at-least-thirty-two-bytes" >"$OUT/jwt-secret"
JWT=(--user-auth jwt --jwt-secret-file "$OUT/jwt-secret")

# $1 binary, $2 case, $3 requests: answers the instructions the server executed.
instructions() {
  local bin=$1 case=$2 n=$3 sale tickets gen_jwt=() redis=""
  rm -rf "$OUT/data" "$OUT/redis" "$OUT"/cg.*
  local serve=(serve --data-dir "$OUT/data" --admin-token b --log warn --drain-seconds 0)
  case $case in
    ceiling) set -- "$bin" ceiling ;;
    sold-out) set -- "$bin" "${serve[@]}" --sale "s:10" ;;
    win) set -- "$bin" "${serve[@]}" --sale "s:1000000" ;;
    sold-out-jwt) set -- "$bin" "${serve[@]}" --sale "s:10" "${JWT[@]}"; gen_jwt=(--jwt-secret-file "$OUT/jwt-secret") ;;
    win-jwt) set -- "$bin" "${serve[@]}" --sale "s:1000000" "${JWT[@]}"; gen_jwt=(--jwt-secret-file "$OUT/jwt-secret") ;;
    win-redis)
      start_redis "$REDIS_PORT" "$OUT/redis"
      redis=$REDIS_PID
      set -- "$bin" "${serve[@]}" --sale "s:1000000" --redis "redis://127.0.0.1:$REDIS_PORT" ;;
  esac
  valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.%p" "$@" --listen "127.0.0.1:$PORT" \
    --workers 1 >/dev/null 2>"$OUT/vg.txt" &
  local pid=$!
  wait_url "$URL" 30 || true
  "$GEN" bench --target "$URL" --sale s --users "$n" --connections "$CONNS" --threads 1 \
    --no-check --quiet "${gen_jwt[@]}" >/dev/null
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true
  if [ -n "$redis" ]; then stop "$redis"; fi
  cg_total "$OUT"/cg.*
}

for bin in "$@"; do
  for c in $CASES; do
    a=$(instructions "$bin" "$c" "$SMALL")
    b=$(instructions "$bin" "$c" "$LARGE")
    cg_per_request "$a" "$b" "$SMALL" "$LARGE" "$bin" "$c"
  done
done
