#!/usr/bin/env bash
# The winners' path on one embedded node, an older build (BEFORE) against this tree's (AFTER):
# a sale too large to sell out, every request a new user and a win (a hold journaled, fsynced
# and written to the orders table), `ticketrush bench` with CONNS connections for SECONDS_RUN
# seconds, interleaved ROUNDS times with the hello-world ceiling on the same stack. Prints each
# run's reservations/s and p99, then the medians and their ratio to the ceiling.
#   BEFORE=/tmp/ticketrush-before bench/win-ab.sh
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh" # strict mode; the working directory is the repository root
: "${BEFORE:?set BEFORE to the older ticketrush binary}"
CONNS=${CONNS:-64}
SECONDS_RUN=${SECONDS_RUN:-8}
ROUNDS=${ROUNDS:-3}
PORT=${PORT:-18484}
AFTER=$(release_bin)
OUT=$(mktemp -d)
trap 'stop_jobs; rm -rf "$OUT"' EXIT
URL="http://127.0.0.1:$PORT"

# $1 label, then the server's command line (without --listen).
run() {
  local label=$1
  shift
  rm -rf "$OUT/data"
  "$@" --listen "127.0.0.1:$PORT" >/dev/null 2>&1 &
  local pid=$!
  wait_url "$URL" 30
  "$AFTER" bench --target "$URL" --sale s --users 5000000 --connections "$CONNS" \
    --max-seconds "$SECONDS_RUN" --no-check --quiet --json "$OUT/$label.json" >/dev/null || true
  stop "$pid"
  printf '%-14s rps %8s  succeeded %8s  p99 %6s ms\n' "$label" "$(field "$OUT/$label.json" rps)" \
    "$(field "$OUT/$label.json" succeeded)" "$(p99 "$OUT/$label.json")"
}

serve=(serve --data-dir "$OUT/data" --admin-token b --log warn --drain-seconds 0 --sale s:10000000)
for r in $(seq "$ROUNDS"); do
  run "ceiling-$r" "$AFTER" ceiling
  run "before-$r" "$BEFORE" "${serve[@]}"
  run "after-$r" "$AFTER" "${serve[@]}"
done
echo "== medians of $ROUNDS rounds ($CONNS connections, ${SECONDS_RUN}s each)"
for k in ceiling before after; do
  m=$(for r in $(seq "$ROUNDS"); do field "$OUT/$k-$r.json" rps; done | median)
  echo "$k $m"
done | awk '{v[$1] = $2; print} END {printf "ratio to ceiling: before %.3f, after %.3f\n", v["before"] / v["ceiling"], v["after"] / v["ceiling"]}'
