#!/usr/bin/env bash
# Cluster mode in one run, all on loopback, everything stopped at the end:
#   1. the ceiling: NODES hello-world servers (`ticketrush ceiling`) loaded by our generator
#      through the same NODES targets, CONNS connections, USERS requests;
#   2. sell-through, batched: NODES `serve --redis` nodes on one Redis (appendonly yes,
#      appendfsync always), TICKETS tickets, USERS users (every request a winner);
#   3. the same with `--batch-size 1` (one script call per reservation);
#   4. with PG=1 (default): the order writer. The nodes of step 2 run with --postgres, and the
#      writers' lag is sampled during the sale; then a backlog of TICKETS reservations made
#      while no writer runs is drained by one `order-writer`: rows per second.
# Redis calls per reservation: the round trips the nodes count (ticketrush_store_round_trips_total,
# every script call and plain command, the reapers included), cross-checked with
# the EVALSHA calls Redis itself counts (INFO commandstats; commands run inside scripts are
# counted there too, so only EVALSHA is comparable).
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh" # strict mode; the working directory is the repository root
NODES=${NODES:-3}
TICKETS=${TICKETS:-200000}
USERS=${USERS:-$TICKETS}
CONNS=${CONNS:-96}
BASE=${BASE:-18300}
PG=${PG:-1}
# SINGLE=0 skips step 3; SERVE_FLAGS: extra flags for the nodes of steps 2 and 3 (an A/B of a
# setting).
SINGLE=${SINGLE:-1}
# Worker threads per server process, the same for the ceiling and the nodes. Three processes
# of two workers each on two cores mostly preempt one another; one each is the fair setup
# here (and what an operator would give a node that shares its cores).
WORKERS=${WORKERS:-1}
PG_ADMIN=${PG_ADMIN:-postgres://postgres@127.0.0.1:5432/postgres}
# BIN=path runs another build (an A/B against an older commit); by default this tree's.
if [ -z "${BIN:-}" ]; then
  BIN=$(release_bin)
fi
OUT=$(mktemp -d)
REDIS_PORT=$((BASE + 99))
DB=ticketrush_bench_$$
cleanup() {
  stop_jobs
  if [ "$PG" = 1 ]; then psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true; fi
  rm -rf "$OUT"
}
trap cleanup EXIT
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
PG_URL="postgres://postgres@127.0.0.1:5432/$DB"
rcli() { redis-cli -p "$REDIS_PORT" "$@"; }
evalsha() { rcli INFO commandstats | sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\),.*/\1/p'; }

start_redis "$REDIS_PORT" "$OUT"
if [ "$PG" = 1 ]; then psql "$PG_ADMIN" -qc "CREATE DATABASE $DB" >/dev/null; fi

echo "== 1. ceiling: $NODES hello-world servers ($WORKERS worker each), $USERS requests, $CONNS connections"
PIDS=()
for i in $(seq "$NODES"); do
  $BIN ceiling --listen "127.0.0.1:$((BASE + i))" --workers "$WORKERS" >/dev/null 2>&1 & PIDS+=($!)
done
wait_nodes "$NODES"
# shellcheck disable=SC2046
$BIN bench $(targets "$NODES") --sale ceiling --users "$USERS" --connections "$CONNS" --no-check --quiet \
  --json "$OUT/ceiling.json"
stop "${PIDS[@]}"

# Runs one sell-through: $1 name, then extra serve flags.
sell() {
  local name=$1; shift
  PIDS=()
  for i in $(seq "$NODES"); do
    # shellcheck disable=SC2086  # SERVE_FLAGS: extra flags, word-split on purpose
    $BIN serve --listen "127.0.0.1:$((BASE + i))" --redis "$REDIS_URL" --admin-token bench \
      --node-id "n$i-$name" --workers "$WORKERS" --log warn ${SERVE_FLAGS:-} "$@" >/dev/null & PIDS+=($!)
  done
  wait_nodes "$NODES"
  curl -sf -X POST "http://127.0.0.1:$((BASE + 1))/api/v1/sales" -H 'Content-Type: application/json' \
    -H 'Authorization: Bearer bench' -d "{\"id\":\"$name\",\"total\":$TICKETS,\"per_user_limit\":1}" >/dev/null
  local before; before=$(metric ticketrush_store_round_trips_total)
  local ev_before; ev_before=$(evalsha)
  local lag_max=0
  ( while sleep 0.5; do
      curl -s "http://127.0.0.1:$((BASE + 1))/metrics" | sed -n 's/^ticketrush_orders_lag_entries \([0-9]*\)$/\1/p'
    done ) > "$OUT/$name.lag" 2>/dev/null &
  local sampler=$!
  local status=0
  # shellcheck disable=SC2046
  $BIN bench $(targets "$NODES") --sale "$name" --users "$USERS" --connections "$CONNS" --quiet \
    --json "$OUT/$name.json" || status=$?
  kill "$sampler" 2>/dev/null || true
  local after; after=$(metric ticketrush_store_round_trips_total)
  local ev_after; ev_after=$(evalsha)
  local batches; batches=$(metric ticketrush_store_batches_total)
  local items; items=$(metric ticketrush_store_batch_items_total)
  local won; won=$(field "$OUT/$name.json" succeeded)
  lag_max=$(sort -n "$OUT/$name.lag" | tail -1); lag_max=${lag_max:-n/a}
  echo "$name: rps $(field "$OUT/$name.json" rps), reserved $won, p99 $(p99 "$OUT/$name.json") ms," \
    "errors $(field "$OUT/$name.json" errors), check exit $status"
  awk -v c=$((after - before)) -v e=$((ev_after - ev_before)) -v w="$won" -v b="$batches" -v i="$items" 'BEGIN {
    printf "  redis round trips %d, per reservation %.3f (EVALSHA seen by redis: %d); batches %d of %.1f on average\n", c, c / w, e, b, i / b }'
  if [ "$PG" = 1 ] && [ "$name" = batched ]; then
    echo "  order writer lag during the sale: max $lag_max entries (sampled every 0.5 s on node 1)"
    local t0; t0=$(date +%s.%N)
    $BIN audit --sale "$name" --redis "$REDIS_URL" --postgres "$PG_URL" --wait-seconds 120 | tail -1
    echo "  audit finished $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}') s after the run"
  fi
  stop "${PIDS[@]}"
}

echo "== 2. sell-through, batched (default --batch-size 256)"
if [ "$PG" = 1 ]; then sell batched --postgres "$PG_URL"; else sell batched; fi
if [ "$SINGLE" = 1 ]; then
  echo "== 3. sell-through, per request (--batch-size 1)"
  sell single --batch-size 1
fi

if [ "$PG" = 1 ]; then
  echo "== 4. order writer: drain a backlog of $TICKETS reservations"
  # The 'single' sale ran with no writer attached, so its stream kept only ~100,000 recent
  # events: make a fresh one with the writer flag set first, filled while no writer runs.
  $BIN order-writer --redis "$REDIS_URL" --postgres "$PG_URL" --consumer attach >/dev/null 2>&1 &
  W=$!
  PIDS=()
  for i in $(seq "$NODES"); do
    $BIN serve --listen "127.0.0.1:$((BASE + i))" --redis "$REDIS_URL" --admin-token bench \
      --node-id "n$i-backlog" --log warn >/dev/null & PIDS+=($!)
  done
  wait_nodes "$NODES"
  curl -sf -X POST "http://127.0.0.1:$((BASE + 1))/api/v1/sales" -H 'Content-Type: application/json' \
    -H 'Authorization: Bearer bench' -d "{\"id\":\"backlog\",\"total\":$TICKETS}" >/dev/null
  sleep 1.5   # the writer attaches to new sales once a second
  stop "$W"
  # shellcheck disable=SC2046
  $BIN bench $(targets "$NODES") --sale backlog --users "$TICKETS" --connections "$CONNS" --quiet \
    --json "$OUT/backlog.json" >/dev/null || true
  stop "${PIDS[@]}"
  base=$(psql "$PG_URL" -tAc "select count(*) from orders where sale_id = 'backlog'")
  want=$(field "$OUT/backlog.json" succeeded)
  t0=$(date +%s.%N)
  $BIN order-writer --redis "$REDIS_URL" --postgres "$PG_URL" --consumer drain >/dev/null 2>&1 &
  W=$!
  while [ "$(psql "$PG_URL" -tAc "select count(*) from orders where sale_id = 'backlog'")" -lt "$want" ]; do
    sleep 0.1
  done
  t1=$(date +%s.%N)
  stop "$W"
  awk -v n=$((want - base)) -v a="$t0" -v b="$t1" \
    'BEGIN { printf "  %d rows in %.2f s: %.0f rows/s (from the writer process start)\n", n, b - a, n / (b - a) }'
fi

echo "== summary"
c=$(field "$OUT/ceiling.json" rps); b=$(field "$OUT/batched.json" rps)
echo "ceiling rps $c (p99 $(p99 "$OUT/ceiling.json") ms)"
awk -v c="$c" -v b="$b" 'BEGIN { printf "batched:     %.0f reservations/s, %.3f of the ceiling\n", b, b / c }'
if [ "$SINGLE" = 1 ]; then
  s=$(field "$OUT/single.json" rps)
  awk -v c="$c" -v s="$s" 'BEGIN { printf "per request: %.0f reservations/s, %.3f of the ceiling\n", s, s / c }'
fi
