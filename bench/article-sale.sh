#!/usr/bin/env bash
# The article's sale in one run, all on loopback, everything stopped at the end:
#   1. the hello-world ceiling (`ticketrush ceiling`) loaded by wrk (bench/reserve.lua), and
#   2. the same ceiling loaded by our generator (`ticketrush bench --no-check`), same
#      connections, the same kind of request: is the generator at least as fast as wrk?
#      (1 and 2 alternate ROUNDS times; the medians are compared)
#   3. one node (`ticketrush serve`, embedded store) and the article's sale: USERS distinct
#      users, TICKETS tickets, our generator, with the check and the chart (CHART).
# Prints each, then the sale as a ratio to the ceiling measured by the same generator.
# Needs wrk (apt-get install -y wrk).
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh" # strict mode; the working directory is the repository root
need_time
USERS=${USERS:-1000000}
TICKETS=${TICKETS:-10000}
CONNS=${CONNS:-100}
SECONDS_RUN=${SECONDS_RUN:-10}
PORT=${PORT:-18182}
ROUNDS=${ROUNDS:-3}
# PIN=1: servers on core 0 with one worker, the generator (wrk -t1, bench --threads 1) on core
# 1, so generator and server do not preempt each other (as bench/single-node.sh does).
PIN=${PIN:-0}
CHART=${CHART:-docs/article-sale.svg}
command -v wrk >/dev/null || { echo "needs wrk: apt-get install -y wrk" >&2; exit 1; }
BIN=$(release_bin)
OUT=$(mktemp -d)
trap 'stop_jobs; rm -rf "$OUT"' EXIT
URL="http://127.0.0.1:$PORT"

# The two generators against the ceiling, interleaved ROUNDS times (the machine is shared, so
# its load drifts): wrk for SECONDS_RUN, then bench for as long (--max-seconds, users enough
# never to run out), so both see the same stretch of load. Each line also gives the
# generator's own CPU time (user + system) per request.
WORKERS=(); GEN=(); WRK=(wrk -t2); THREADS=()
if [ "$PIN" = 1 ]; then
  WORKERS=(--workers 1); GEN=(taskset -c 1); WRK=(taskset -c 1 wrk -t1); THREADS=(--threads 1)
fi
"$BIN" ceiling --listen "127.0.0.1:$PORT" "${WORKERS[@]}" >/dev/null 2>&1 &
CEIL=$!
pin $CEIL
wait_url "$URL"
for round in $(seq "$ROUNDS"); do
  echo "== ceiling round $round: ${WRK[*]} -c$CONNS -d${SECONDS_RUN}s"
  /usr/bin/time -f "%U %S" -o "$OUT/wrk-$round.cpu" \
    "${WRK[@]}" -c"$CONNS" -d"${SECONDS_RUN}s" --latency -s bench/reserve.lua "$URL" -- ceiling \
    > "$OUT/wrk-$round.txt"
  grep -E "Requests/sec|requests in|  99%" "$OUT/wrk-$round.txt"
  echo "== ceiling round $round: ticketrush bench --max-seconds $SECONDS_RUN --connections $CONNS --no-check"
  /usr/bin/time -f "%U %S" -o "$OUT/gen-$round.cpu" \
    "${GEN[@]}" "$BIN" bench --target "$URL" --sale ceiling --users 100000000 \
    --max-seconds "$SECONDS_RUN" --connections "$CONNS" "${THREADS[@]}" --no-check --quiet --json "$OUT/ceiling-$round.json" \
    | grep -E "requests|latency"
done
stop "$CEIL"

echo "== the article's sale: one node, $TICKETS tickets, $USERS users"
"$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$OUT/node" --admin-token bench \
  --sale "article:$TICKETS" --log warn "${WORKERS[@]}" >/dev/null &
NODE=$!
pin $NODE
wait_url "$URL"
mkdir -p "$(dirname "$CHART")"
status=0
"${GEN[@]}" "$BIN" bench --target "$URL" --sale article --users "$USERS" --connections "$CONNS" \
  "${THREADS[@]}" --quiet \
  --json "$OUT/sale.json" --chart "$CHART" || status=$?
echo "== node RSS after the sale (KiB): $(ps -o rss= -p "$NODE")"
stop "$NODE"

sale_rps=$(field "$OUT/sale.json" rps)
echo "== summary (ceiling: median of $ROUNDS rounds; CPU: the generator's user+sys µs per request)"
for round in $(seq "$ROUNDS"); do
  w=$(wrk_rps "$OUT/wrk-$round.txt")
  wn=$(wrk_requests "$OUT/wrk-$round.txt")
  g=$(field "$OUT/ceiling-$round.json" rps)
  gn=$(field "$OUT/ceiling-$round.json" requests)
  echo "round $round: wrk $w req/s ($(cpu_us "$OUT/wrk-$round.cpu" "$wn") µs CPU/req)," \
    "bench $g req/s ($(cpu_us "$OUT/gen-$round.cpu" "$gn") µs CPU/req)"
  echo "$w" >> "$OUT/wrk.all"; echo "$g" >> "$OUT/gen.all"
done
wrk_rps=$(median < "$OUT/wrk.all")
gen_rps=$(median < "$OUT/gen.all")
echo "ceiling, wrk (median):   rps $wrk_rps"
echo "ceiling, bench (median): rps $gen_rps"
echo "sale, bench:             rps $sale_rps  p99 $(p99 "$OUT/sale.json") ms, wins' p99 $(win_p99 "$OUT/sale.json") ms" \
  "(succeeded $(field "$OUT/sale.json" succeeded), sold_out $(field "$OUT/sale.json" sold_out)," \
  "errors $(field "$OUT/sale.json" errors), last success at $(field "$OUT/sale.json" last_success_s) s)"
awk -v g="$gen_rps" -v w="$wrk_rps" -v s="$sale_rps" 'BEGIN {
  printf "generator/wrk on the ceiling %.3f\nsale/ceiling (same generator) %.3f\n", g / w, s / g }'
echo "chart: $CHART; bench exit status $status (0: the check passed)"
exit "$status"
