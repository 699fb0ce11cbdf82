#!/usr/bin/env bash
# What a reservation costs Redis: NODES `serve --redis` nodes on one Redis (appendonly yes,
# appendfsync always, its own data dir), a sale of TICKETS tickets, USERS new users each
# winning one (`ticketrush bench`, CONNS connections). Reports, per reservation made:
#   - Redis CPU (used_cpu_user + used_cpu_sys, INFO cpu, over the run), in µs;
#   - script calls (EVALSHA, as Redis counts them) and the commands run inside them (every
#     other cmdstat, INFO commandstats);
#   - AOF bytes written (aof_current_size before and after);
# and the nodes' average batch (ticketrush_store_batch_items_total / _batches_total).
# ROUNDS rounds, each binary of BIN (space-separated paths; this tree's release build by
# default) once a round, alternating, so an A/B sees the same machine.
#   bench/redis-cpu.sh
#   BIN="/tmp/tr-before target/release/ticketrush" ROUNDS=3 bench/redis-cpu.sh
#   REDIS_FLAGS="--appendfsync no" bench/redis-cpu.sh     (what the fsyncs cost)
#   SERVE_FLAGS="--batch-wait-us 2000" bench/redis-cpu.sh (the nodes' flags)
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh" # strict mode; the working directory is the repository root
NODES=${NODES:-1}
TICKETS=${TICKETS:-1000000}
USERS=${USERS:-100000}
CONNS=${CONNS:-64}
ROUNDS=${ROUNDS:-1}
BASE=${BASE:-18500}
if [ -z "${BIN:-}" ]; then
  BIN=$(release_bin)
fi
OUT=$(mktemp -d)
REDIS_PORT=$((BASE + 99))
trap 'stop_jobs; rm -rf "$OUT"' EXIT
rcli() { redis-cli -p "$REDIS_PORT" "$@"; }
cpu() { rcli INFO cpu | awk -F: -v k="${1:-sys|user}" '$1 ~ "^used_cpu_(" k ")$" {s += $2} END {printf "%.6f", s}'; }
evalsha() { rcli INFO commandstats | sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\),.*/\1/p'; }
# Every command but the scripts themselves and this script's own INFO calls.
inner() {
  rcli INFO commandstats | tr -d '\r' |
    awk -F'[:=,]' '/^cmdstat_/ && $1 != "cmdstat_evalsha" && $1 != "cmdstat_info" {s += $3} END {print s + 0}'
}
aof() { rcli INFO persistence | tr -d '\r' | sed -n 's/^aof_current_size:\([0-9]*\)$/\1/p'; }

# One run: $1 binary, $2 label.
run() {
  local bin=$1 label=$2
  rm -rf "$OUT/redis"
  # shellcheck disable=SC2086  # REDIS_FLAGS: extra flags, word-split on purpose
  start_redis "$REDIS_PORT" "$OUT/redis" ${REDIS_FLAGS:-}
  local redis_pid=$REDIS_PID
  local pids=()
  for i in $(seq "$NODES"); do
    # shellcheck disable=SC2086  # SERVE_FLAGS: extra flags, word-split on purpose
    "$bin" serve --listen "127.0.0.1:$((BASE + i))" --redis "redis://127.0.0.1:$REDIS_PORT" \
      --admin-token bench --node-id "n$i" --workers 1 --log warn ${SERVE_FLAGS:-} >/dev/null & pids+=($!)
  done
  wait_nodes "$NODES"
  curl -sf -X POST "http://127.0.0.1:$((BASE + 1))/api/v1/sales" -H 'Content-Type: application/json' \
    -H 'Authorization: Bearer bench' -d "{\"id\":\"s\",\"total\":$TICKETS,\"per_user_limit\":1}" >/dev/null
  local c0 e0 i0 a0
  c0=$(cpu); u0=$(cpu user); e0=$(evalsha); e0=${e0:-0}; i0=$(inner); a0=$(aof)
  # shellcheck disable=SC2046
  "$bin" bench $(targets "$NODES") --sale s --users "$USERS" --connections "$CONNS" --no-check \
    --quiet --json "$OUT/r.json" >/dev/null
  local c1 e1 i1 a1 won batches items
  c1=$(cpu); u1=$(cpu user); e1=$(evalsha); i1=$(inner); a1=$(aof)
  won=$(field "$OUT/r.json" succeeded)
  batches=$(NODES=$NODES metric ticketrush_store_batches_total)
  items=$(NODES=$NODES metric ticketrush_store_batch_items_total)
  awk -v l="$label" -v w="$won" -v rps="$(field "$OUT/r.json" rps)" -v c="$c0" -v C="$c1" -v u="$u0" -v U="$u1" \
    -v e=$((e1 - e0)) -v i=$((i1 - i0)) -v a=$((a1 - a0)) -v b="$batches" -v it="$items" 'BEGIN {
    printf "%-36s %8d reserved %8.0f/s  redis cpu %5.1f us (user %4.1f)  scripts %.3f  commands %.2f  aof %4.0f B  batch %.1f\n",
      l, w, rps, (C - c) * 1e6 / w, (U - u) * 1e6 / w, e / w, i / w, a / w, it / b }'
  if [ -n "${SHOW_STATS:-}" ]; then rcli INFO commandstats | tr -d '\r' | grep -v '^#'; fi
  stop "${pids[@]}"
  stop "$redis_pid"
}

echo "per reservation: $NODES node(s), $USERS wins of a $TICKETS-ticket sale, $CONNS connections, appendfsync always"
for r in $(seq "$ROUNDS"); do
  for b in $BIN; do run "$b" "round $r $b"; done
done
