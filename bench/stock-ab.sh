#!/usr/bin/env bash
# A/B of the stock path in one run: an older build (BEFORE) against this tree's (AFTER),
# interleaved ROUNDS times on this shared machine, all on loopback, everything stopped at the
# end. The load generator is always AFTER's `ticketrush bench` (the same client for both, and
# the one that reports `early_sold_out` and the tail), so only the servers differ.
#   1. ceiling: NODES hello-world servers, TICKETS requests (the ratio's denominator);
#   2. sell-through: NODES `serve --redis` nodes on one Redis (AOF always), TICKETS tickets,
#      as many users (every request should win);
#   3. small sale: 4 nodes on one Redis, SMALL tickets, as many users (every user should win);
#   4. the article's sale: one embedded node, USERS users, SALE_TICKETS tickets.
# Each line: rps, p99, sold_out (users told "sold out"), early_sold_out (told so before a
# later winner was sent) and the tail (first to last win of the final 1 % of wins).
#   BEFORE=/tmp/ticketrush-before bench/stock-ab.sh
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh" # strict mode; the working directory is the repository root
: "${BEFORE:?set BEFORE to the older ticketrush binary}"
NODES=${NODES:-3}
TICKETS=${TICKETS:-100000}
SMALL=${SMALL:-300}
USERS=${USERS:-1000000}
SALE_TICKETS=${SALE_TICKETS:-10000}
CONNS=${CONNS:-96}
ROUNDS=${ROUNDS:-2}
BASE=${BASE:-18400}
WORKERS=${WORKERS:-1}
if [ -z "${AFTER:-}" ]; then
  AFTER=$(release_bin)
fi
OUT=$(mktemp -d)
REDIS_PORT=$((BASE + 99))
trap 'stop_jobs; rm -rf "$OUT"' EXIT
line() {
  printf '%-8s %-12s rps %8.0f  p99 %7.3f ms  sold_out %6s  early_sold_out %6s  tail %s ms\n' \
    "$1" "$2" "$(field "$3" rps)" "$(p99 "$3")" "$(field "$3" sold_out)" \
    "$(field "$3" early_sold_out)" "$(field "$3" tail_ms)"
}

# $1 label, $2 binary, $3 nodes, $4 tickets, $5 json
redis_sale() {
  local label=$1 bin=$2 n=$3 tickets=$4 json=$5 pids=()
  rm -rf "$OUT/redis"
  start_redis "$REDIS_PORT" "$OUT/redis"
  for i in $(seq "$n"); do
    "$bin" serve --listen "127.0.0.1:$((BASE + i))" --redis "redis://127.0.0.1:$REDIS_PORT" \
      --admin-token ab --node-id "n$i" --workers "$WORKERS" --log warn >/dev/null & pids+=($!)
  done
  wait_nodes "$n"
  curl -sf -X POST "http://127.0.0.1:$((BASE + 1))/api/v1/sales" -H 'Content-Type: application/json' \
    -H 'Authorization: Bearer ab' -d "{\"id\":\"ab\",\"total\":$tickets,\"per_user_limit\":1}" >/dev/null
  # shellcheck disable=SC2046
  "$AFTER" bench $(targets "$n") --sale ab --users "$tickets" --connections "$CONNS" --quiet \
    --json "$json" >/dev/null || true
  stop "${pids[@]}" "$REDIS_PID"
}

article() {
  local bin=$1 json=$2
  rm -rf "$OUT/data"
  "$bin" serve --listen "127.0.0.1:$((BASE + 1))" --data-dir "$OUT/data" --admin-token ab \
    --sale "article:$SALE_TICKETS" --log warn >/dev/null &
  local pid=$!
  wait_url "http://127.0.0.1:$((BASE + 1))"
  "$AFTER" bench --target "http://127.0.0.1:$((BASE + 1))" --sale article --users "$USERS" \
    --connections 100 --quiet --json "$json" >/dev/null || true
  stop "$pid"
}

for r in $(seq "$ROUNDS"); do
  echo "== round $r"
  pids=()
  for i in $(seq "$NODES"); do
    "$AFTER" ceiling --listen "127.0.0.1:$((BASE + i))" --workers "$WORKERS" >/dev/null 2>&1 & pids+=($!)
  done
  wait_nodes "$NODES"
  # shellcheck disable=SC2046
  "$AFTER" bench $(targets "$NODES") --sale ceiling --users "$TICKETS" --connections "$CONNS" \
    --no-check --quiet --json "$OUT/ceiling.json" >/dev/null
  stop "${pids[@]}"
  line ceiling "$NODES nodes" "$OUT/ceiling.json"
  # Alternate which goes first, so a drift in the machine's load favours neither.
  order="before after"; [ $((r % 2)) = 0 ] && order="after before"
  for which in $order; do
    bin=$BEFORE; [ "$which" = after ] && bin=$AFTER
    redis_sale sell "$bin" "$NODES" "$TICKETS" "$OUT/sell-$which.json"
    line "$which" "sell-through" "$OUT/sell-$which.json"
    awk -v s="$(field "$OUT/sell-$which.json" rps)" -v c="$(field "$OUT/ceiling.json" rps)" \
      'BEGIN { printf "         sell-through / ceiling %.3f\n", s / c }'
    redis_sale small "$bin" 4 "$SMALL" "$OUT/small-$which.json"
    line "$which" "small $SMALL/4" "$OUT/small-$which.json"
    article "$bin" "$OUT/article-$which.json"
    line "$which" "article" "$OUT/article-$which.json"
  done
done
