#!/usr/bin/env bash
# The winners' path, an older build (BEFORE) against this tree's (AFTER): a sale too large to
# sell out, every request a new user and a win, `ticketrush bench` with CONNS connections for
# SECONDS_RUN seconds, interleaved ROUNDS times with the hello-world ceiling on the same stack.
# Prints each run's reservations/s, p99 and CPU a request (the servers' and Redis's from
# /proc, the generator's from /usr/bin/time), then the medians and their ratio to the ceiling.
#   BEFORE=/tmp/ticketrush-before bench/win-ab.sh
# By default one embedded node (a hold journaled, fsynced and written to the orders table).
# REDIS=1: NODES nodes (default 1) over one redis-server of this script's (appendfsync
# always; emptied before every run), WORKERS worker threads each (default 1), against NODES
# ceilings of as many workers: cluster.sh's layout, but interleaved, so that the ratio does
# not rest on one ceiling measured minutes away from the sale.
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh" # strict mode; the working directory is the repository root
: "${BEFORE:?set BEFORE to the older ticketrush binary}"
need_time
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
  local targets; targets=$(targets "$NODES")
  proc_cpu "${pids[@]}" >"$OUT/servers0.cpu"; proc_cpu "${REDIS_PID:-}" >"$OUT/redis0.cpu"
  # shellcheck disable=SC2086  # targets: word-split on purpose
  /usr/bin/time -f "%U %S" -o "$OUT/$label.gen" \
    "$AFTER" bench $targets --sale s --users 5000000 --connections "$CONNS" \
    --max-seconds "$SECONDS_RUN" --no-check --quiet --json "$OUT/$label.json" >/dev/null || true
  proc_cpu "${pids[@]}" >"$OUT/servers1.cpu"; proc_cpu "${REDIS_PID:-}" >"$OUT/redis1.cpu"
  stop "${pids[@]}"
  local n redis=""; n=$(field "$OUT/$label.json" succeeded)
  cpu_delta "$OUT/servers0.cpu" "$OUT/servers1.cpu" >"$OUT/servers.cpu"
  if [ "$REDIS" = 1 ]; then
    cpu_delta "$OUT/redis0.cpu" "$OUT/redis1.cpu" >"$OUT/redis.cpu"
    redis=", redis $(cpu_us "$OUT/redis.cpu" "$n")"
  fi
  printf '%-14s rps %8s  succeeded %8s  p99 %6s ms  CPU µs a request: servers %s%s, generator %s\n' \
    "$label" "$(field "$OUT/$label.json" rps)" "$n" "$(p99 "$OUT/$label.json")" \
    "$(cpu_us "$OUT/servers.cpu" "$n")" "$redis" "$(cpu_us "$OUT/$label.gen" "$n")"
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
