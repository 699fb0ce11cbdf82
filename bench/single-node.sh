#!/usr/bin/env bash
# One node, one sale of TICKETS tickets, distinct users, CONNS keep-alive connections, for
# SECONDS: first the hello-world ceiling on the same HTTP stack, then the real node, with the
# very same requests (bench/reserve.lua). Prints both and the ratio. Needs wrk
# (apt-get install wrk). Everything listens on loopback and stops by itself.
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh" # strict mode; the working directory is the repository root
TICKETS=${TICKETS:-10000}
CONNS=${CONNS:-100}
SECONDS_RUN=${SECONDS_RUN:-15}
THREADS=${THREADS:-2}
PORT=${PORT:-18181}
# PIN=1: server on core 0 with one worker, wrk on core 1 with one thread, so they do not
# preempt each other (the fairer per-core comparison on a 2-core machine).
PIN=${PIN:-0}
command -v wrk >/dev/null || { echo "needs wrk: apt-get install -y wrk" >&2; exit 1; }
BIN=$(release_bin)
DATA=$(mktemp -d)
trap 'stop_jobs; rm -rf "$DATA"' EXIT

WORKERS=()
WRK=(wrk -t"$THREADS")
if [ "$PIN" = 1 ]; then WORKERS=(--workers 1); WRK=(taskset -c 1 wrk -t1); fi
run_wrk() { "${WRK[@]}" -c"$CONNS" -d"${SECONDS_RUN}s" --latency -s bench/reserve.lua "$1" -- bench; }

echo "== ceiling: hello-world on the same stack"
"$BIN" ceiling --listen 127.0.0.1:$PORT "${WORKERS[@]}" >/dev/null 2>&1 &
CEIL=$!
pin $CEIL
wait_url "http://127.0.0.1:$PORT"
run_wrk "http://127.0.0.1:$PORT" | tee "$DATA/ceiling.txt"
stop "$CEIL"

echo "== ticketrush serve: sale bench:$TICKETS"
"$BIN" serve --listen 127.0.0.1:$PORT --data-dir "$DATA/node" --admin-token bench \
  --sale "bench:$TICKETS" --log warn "${WORKERS[@]}" >/dev/null &
NODE=$!
pin $NODE
wait_url "http://127.0.0.1:$PORT"
run_wrk "http://127.0.0.1:$PORT" | tee "$DATA/node.txt"
echo "== sale after the run"
curl -s "http://127.0.0.1:$PORT/api/v1/sales/bench"; echo
curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^ticketrush_(reservation_attempts|store_batch)' || true
echo "== node RSS (KiB): $(ps -o rss= -p "$NODE")"
stop "$NODE"

c=$(wrk_rps "$DATA/ceiling.txt"); n=$(wrk_rps "$DATA/node.txt")
echo "== summary"
echo "ceiling rps $c p99 $(wrk_p99 "$DATA/ceiling.txt")"
echo "node    rps $n p99 $(wrk_p99 "$DATA/node.txt")"
awk -v n="$n" -v c="$c" 'BEGIN { printf "ratio node/ceiling %.3f\n", n / c }'
