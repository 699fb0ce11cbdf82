#!/usr/bin/env bash
# Restart time and disk use of the embedded store after N reservations, for one or more builds:
# a node (`serve`, embedded store) sells a sale of N tickets to N users (`ticketrush bench`,
# every request a win), stops on SIGTERM, and is started again on the same data dir; the
# restart is timed from the process start to its "listening" line (the journal replayed, the
# orders table opened), twice: the first restart of a journal whose history outgrew its
# records compacts it, the second replays the records. Disk use is listed per file after the
# sale and after each restart. PAY=1 pays every reservation (a settled history: two events per
# reservation); PAY=0 (default) leaves them held.
#   bench/restart.sh N BIN...        e.g. PAY=1 bench/restart.sh 100000 /tmp/old target/release/ticketrush
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh" # strict mode; the working directory is the repository root
N=${1:?reservations}; shift
PORT=${PORT:-18484}
GEN=${GEN:-target/release/ticketrush}
PAY=${PAY:-0}
OUT=$(mktemp -d)
trap 'stop_jobs; rm -rf "$OUT"' EXIT
URL="http://127.0.0.1:$PORT"
for bin in "$@"; do
  D="$OUT/data"; rm -rf "$D"
  "$bin" serve --listen "127.0.0.1:$PORT" --data-dir "$D" --admin-token b --sale "s:$N" --log warn >/dev/null &
  pid=$!; wait_url "$URL" 30
  "$GEN" bench --target "$URL" --sale s --users "$N" --connections 64 --pay-ratio "$PAY" --quiet --max-seconds 600 >/dev/null || true
  stop "$pid"
  sizes() { (cd "$D" && for f in *; do printf '%s %s  ' "$f" "$(du -b "$f" | cut -f1)"; done); }
  echo "$bin: after the sale: $(sizes)"
  for n in 1 2; do
    rm -f "$OUT/line"
    t0=$(date +%s.%N)
    "$bin" serve --listen "127.0.0.1:$PORT" --data-dir "$D" --admin-token b --log warn > "$OUT/line" &
    pid=$!
    until grep -q listening "$OUT/line" 2>/dev/null; do sleep 0.01; done
    t1=$(date +%s.%N)
    counts=$(curl -s "$URL/api/v1/sales/s" | sed -n 's/.*"reserved":\([0-9]*\),"paid":\([0-9]*\).*/reserved \1 paid \2/p')
    stop "$pid"
    awk -v a="$t0" -v b="$t1" -v n="$n" -v c="$counts" -v s="$(sizes)" \
      'BEGIN { printf "  restart %d: %.2f s (%s); %s\n", n, b - a, c, s }'
  done
done
