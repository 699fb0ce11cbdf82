#!/usr/bin/env bash
# The article's sale in one run, all on loopback, everything stopped at the end:
#   1. the hello-world ceiling (`ticketrush ceiling`) loaded by wrk (bench/reserve.lua),
#   2. the same ceiling loaded by our generator (`ticketrush bench --no-check`), same
#      connections, the same kind of request: is the generator at least as fast as wrk?
#   3. one node (`ticketrush serve`, embedded store) and the article's sale: USERS distinct
#      users, TICKETS tickets, our generator, with the check and the chart (CHART).
# Prints each, then the sale as a ratio to the ceiling measured by the same generator.
# Needs wrk (apt-get install -y wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=${USERS:-1000000}
TICKETS=${TICKETS:-10000}
CONNS=${CONNS:-100}
SECONDS_RUN=${SECONDS_RUN:-10}
PORT=${PORT:-18182}
CHART=${CHART:-docs/article-sale.svg}
command -v wrk >/dev/null || { echo "needs wrk: apt-get install -y wrk" >&2; exit 1; }
cargo build --release -q -p ticketrush
BIN=target/release/ticketrush
OUT=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"' EXIT
URL="http://127.0.0.1:$PORT"
wait_port() { for _ in $(seq 100); do curl -sf "$URL/healthz" >/dev/null 2>&1 && return 0; sleep 0.1; done; return 1; }
# A top-level number of a report written by `bench --json` (pretty-printed, two-space indent).
field() { sed -n "s/^  \"$2\": \([0-9.e+-]*\),\{0,1\}$/\1/p" "$1"; }
p99() { sed -n 's/^    "p99": \([0-9.]*\),$/\1/p' "$1"; }

echo "== 1. ceiling, wrk -t2 -c$CONNS -d${SECONDS_RUN}s"
$BIN ceiling --listen "127.0.0.1:$PORT" >/dev/null 2>&1 &
CEIL=$!
wait_port
wrk -t2 -c"$CONNS" -d"${SECONDS_RUN}s" --latency -s bench/reserve.lua "$URL" -- ceiling | tee "$OUT/wrk.txt"

echo "== 2. ceiling, ticketrush bench --users $USERS --connections $CONNS --no-check"
$BIN bench --target "$URL" --sale ceiling --users "$USERS" --connections "$CONNS" --no-check \
  --quiet --json "$OUT/ceiling.json"
kill "$CEIL"; wait "$CEIL" 2>/dev/null || true

echo "== 3. the article's sale: one node, $TICKETS tickets, $USERS users"
$BIN serve --listen "127.0.0.1:$PORT" --data-dir "$OUT/node" --admin-token bench \
  --sale "article:$TICKETS" --log warn >/dev/null &
NODE=$!
wait_port
mkdir -p "$(dirname "$CHART")"
status=0
$BIN bench --target "$URL" --sale article --users "$USERS" --connections "$CONNS" --quiet \
  --json "$OUT/sale.json" --chart "$CHART" || status=$?
echo "== node RSS after the sale (KiB): $(ps -o rss= -p "$NODE")"
kill "$NODE"; wait "$NODE" 2>/dev/null || true

wrk_rps=$(awk '/Requests\/sec/ {print $2}' "$OUT/wrk.txt")
wrk_p99=$(awk '$1=="99%" {print $2}' "$OUT/wrk.txt")
gen_rps=$(field "$OUT/ceiling.json" rps)
sale_rps=$(field "$OUT/sale.json" rps)
echo "== summary"
echo "ceiling, wrk:             rps $wrk_rps  p99 $wrk_p99"
echo "ceiling, ticketrush bench: rps $gen_rps  p99 $(p99 "$OUT/ceiling.json") ms"
echo "sale,    ticketrush bench: rps $sale_rps  p99 $(p99 "$OUT/sale.json") ms" \
  "(succeeded $(field "$OUT/sale.json" succeeded), sold_out $(field "$OUT/sale.json" sold_out)," \
  "errors $(field "$OUT/sale.json" errors))"
awk -v g="$gen_rps" -v w="$wrk_rps" -v s="$sale_rps" 'BEGIN {
  printf "generator/wrk on the ceiling %.3f\nsale/ceiling (same generator) %.3f\n", g / w, s / g }'
echo "chart: $CHART; bench exit status $status (0: the check passed)"
exit "$status"
