#!/usr/bin/env bash
# Server CPU per request under wrk load: runs the given server command (listening on
# 127.0.0.1:18282), warms it up for 2 s, then counts its task-clock and context switches over a
# 5 s wrk run with bench/reserve.lua. Needs wrk and perf (Debian: wrk, linux-perf).
# Example: bench/server-cpu.sh target/release/ticketrush ceiling --listen 127.0.0.1:18282
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh" # strict mode; the working directory is the repository root
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
"$@" --listen 127.0.0.1:18282 >/dev/null 2>&1 &
P=$!
trap 'stop "$P"; rm -rf "$OUT"' EXIT
sleep 0.7
wrk -t2 -c100 -d2s -s bench/reserve.lua http://127.0.0.1:18282 -- bench >/dev/null
perf stat -e task-clock,context-switches -p "$P" -o "$OUT/stat.txt" sleep 6 &
S=$!
wrk -t2 -c100 -d5s -s bench/reserve.lua http://127.0.0.1:18282 -- bench >"$OUT/w.txt"
wait "$S"
R=$(wrk_requests "$OUT/w.txt")
T=$(awk '/task-clock/ {gsub(",","",$1); print $1}' "$OUT/stat.txt")
C=$(awk '/context-switches/ {gsub(",","",$1); print $1}' "$OUT/stat.txt")
awk -v r="$R" -v t="$T" -v c="$C" -v rps="$(wrk_rps "$OUT/w.txt")" \
  'BEGIN { printf "requests %d rps %s server_cpu_us_per_request %.2f context_switches_per_request %.3f\n", r, rps, t*1000/r, c/r }'
