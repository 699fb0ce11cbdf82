#!/usr/bin/env bash
# The winners' path, an older build (BEFORE) against this tree's (AFTER): a sale too large to
# sell out, every request a new user and a win, `ticketrush bench` with CONNS connections for
# SECONDS_RUN seconds, interleaved ROUNDS times with the hello-world ceiling on the same stack.
# Prints each run's reservations/s, p99 and CPU a request (the servers', Redis's, the
# generator's), then the medians and their ratio to the ceiling.
#   BEFORE=/tmp/ticketrush-before bench/win-ab.sh
# By default one embedded node (a hold journaled, fsynced and written to the orders table).
# REDIS=1: NODES nodes (default 1) over one redis-server of this script's (appendfsync
# always; emptied before every run), WORKERS worker threads each (default 1), against NODES
# ceilings of as many workers: cluster.sh's layout, but interleaved, so that the ratio does
# not rest on one ceiling measured minutes away from the sale.
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh" # strict mode; the working directory is the repository root
: "${BEFORE:?set BEFORE to the older ticketrush binary}"
CONNS=${CONNS:-64}
SECONDS_RUN=${SECONDS_RUN:-8}
ROUNDS=${ROUNDS:-3}
REDIS=${REDIS:-0}
NODES=${NODES:-1}
WORKERS=${WORKERS:-1}
BASE=${BASE:-18483}
AFTER=$(release_bin)
OUT=$(mktemp -d)
trap 'stop_jobs; rm -rf "$OUT"' EXIT
[ "$REDIS" = 1 ] || NODES=1
REDIS_PORT=$((BASE + 99))
if [ "$REDIS" = 1 ]; then start_redis "$REDIS_PORT" "$OUT/redis"; fi

# CPU time (user + system) the processes have used, in clock ticks (USER_HZ, 100 a second).
cpu_ticks() {
  local t=0 p
  for p in "$@"; do
    [ -n "$p" ] && [ -r "/proc/$p/stat" ] || continue
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}
# The CPU time of this shell's finished children, in ms, from what `times` wrote to FILE
# (`times` runs in this shell: in a subshell it would not see them; a locale's decimal comma
# is read as a point).
children_ms() { # children_ms FILE
  awk 'NR == 2 {
    n = split($0, f, " "); ms = 0
    for (i = 1; i <= n; i++) { gsub(",", ".", f[i]); split(f[i], a, "m"); ms += (a[1] * 60 + a[2]) * 1000 }
    printf "%d\n", ms }' "$1"
}
# $1 CPU in units of (1 s / $2), per $3 requests, in µs (one decimal).
per() { awk -v c="$1" -v u="$2" -v n="$3" 'BEGIN { if (n > 0) printf "%.1f", c * 1e6 / u / n; else print "n/a" }'; }

# $1 label, then the server's command line (without --listen, --data-dir, --node-id), started
# NODES times on BASE+1..BASE+NODES.
run() {
  local label=$1 pids=() i
  shift
  rm -rf "$OUT"/data-*
  if [ "$REDIS" = 1 ]; then redis-cli -p "$REDIS_PORT" FLUSHALL >/dev/null; fi
  for i in $(seq "$NODES"); do
    local own=()
    if [ "$2" = serve ]; then own=(--node-id "n$i"); fi
    if [ "$2" = serve ] && [ "$REDIS" = 0 ]; then own+=(--data-dir "$OUT/data-$i"); fi
    "$@" "${own[@]}" --listen "127.0.0.1:$((BASE + i))" >/dev/null 2>&1 &
    pids+=($!)
  done
  wait_nodes "$NODES"
  local servers0 redis0 servers1 redis1 gen targets
  targets=$(targets "$NODES")
  servers0=$(cpu_ticks "${pids[@]}"); redis0=$(cpu_ticks "${REDIS_PID:-}")
  times >"$OUT/times0"
  # shellcheck disable=SC2086  # targets: word-split on purpose
  "$AFTER" bench $targets --sale s --users 5000000 --connections "$CONNS" \
    --max-seconds "$SECONDS_RUN" --no-check --quiet --json "$OUT/$label.json" >/dev/null || true
  times >"$OUT/times1"
  servers1=$(cpu_ticks "${pids[@]}"); redis1=$(cpu_ticks "${REDIS_PID:-}")
  gen=$(($(children_ms "$OUT/times1") - $(children_ms "$OUT/times0")))
  stop "${pids[@]}"
  local n redis=""; n=$(field "$OUT/$label.json" succeeded)
  if [ "$REDIS" = 1 ]; then redis=", redis $(per "$((redis1 - redis0))" 100 "$n")"; fi
  printf '%-14s rps %8s  succeeded %8s  p99 %6s ms  CPU µs a request: servers %s%s, generator %s\n' \
    "$label" "$(field "$OUT/$label.json" rps)" "$n" "$(p99 "$OUT/$label.json")" \
    "$(per "$((servers1 - servers0))" 100 "$n")" "$redis" "$(per "$gen" 1000 "$n")"
}

serve=(serve --admin-token b --log warn --drain-seconds 0 --sale s:10000000)
ceiling=(ceiling)
if [ "$REDIS" = 1 ]; then
  serve+=(--redis "redis://127.0.0.1:$REDIS_PORT" --workers "$WORKERS")
  ceiling+=(--workers "$WORKERS")
fi
for r in $(seq "$ROUNDS"); do
  run "ceiling-$r" "$AFTER" "${ceiling[@]}"
  run "before-$r" "$BEFORE" "${serve[@]}"
  run "after-$r" "$AFTER" "${serve[@]}"
done
echo "== medians of $ROUNDS rounds ($CONNS connections, ${SECONDS_RUN}s each, $NODES node(s), redis $REDIS)"
for k in ceiling before after; do
  m=$(for r in $(seq "$ROUNDS"); do field "$OUT/$k-$r.json" rps; done | median)
  echo "$k $m"
done | awk '{v[$1] = $2; print} END {printf "ratio to ceiling: before %.3f, after %.3f\n", v["before"] / v["ceiling"], v["after"] / v["ceiling"]}'
