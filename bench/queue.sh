#!/usr/bin/env bash
# The waiting room's costs on one embedded node (issue 18), each against the hello-world
# ceiling on the same stack in the same run:
#   1. a position poll (GET /api/v1/sales/q/queue/ID), the traffic a queued sale mostly gets:
#      instructions per request under callgrind (one worker, one keep-alive connection,
#      SMALL and LARGE polls, the difference over the difference), and requests per second
#      with wrk (THREADS threads, CONNS connections, SECONDS each) against the ceiling's;
#   2. memory per queued user: the node's RSS before and after JOINS_SECONDS of joins (wrk
#      posting new users to a sale that opens after them: all in the pre-queue), then the
#      first poll after the opening, which draws the pre-queue's order;
#   3. `ticketrush bench --queue`: USERS users through a room admitting RATE a second, opening
#      OPEN_IN seconds after it is created (so the rush straddles the opening).
#   bench/queue.sh [BIN]          (default: this tree's release build; needs valgrind and wrk)
#   PARTS="1" ROUNDS=5 bench/queue.sh   (which parts; wrk rounds of part 1, ceiling and poll
#                                        alternated, the median ratio reported)
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh" # strict mode; the working directory is the repository root
BIN=${1:-$(release_bin)}
PORT=${PORT:-18390}
SMALL=${SMALL:-1000}
LARGE=${LARGE:-6000}
THREADS=${THREADS:-1}
CONNS=${CONNS:-50}
SECONDS_EACH=${SECONDS_EACH:-10}
JOINS_SECONDS=${JOINS_SECONDS:-30}
USERS=${USERS:-40000}
RATE=${RATE:-2000}
OPEN_IN=${OPEN_IN:-1}
PARTS=${PARTS:-1 2 3}
ROUNDS=${ROUNDS:-3}
part() { case " $PARTS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
URL="http://127.0.0.1:$PORT"
OUT=$(mktemp -d)
trap 'stop_jobs; rm -rf "$OUT"' EXIT
for tool in valgrind wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done

# A node on a fresh data dir (extra flags after), answering on $URL; its pid in $NODE.
start_node() {
  rm -rf "$OUT/data"
  "$@" --listen "127.0.0.1:$PORT" >/dev/null 2>"$OUT/node.log" &
  NODE=$!
  wait_url "$URL" 30
}
# Creates a queued sale q opening in $1 seconds, admitting $2 a second; prints nothing.
queued_sale() {
  local opens
  opens=$(python3 -c "import datetime as d,sys; t=d.datetime.now(d.timezone.utc)+d.timedelta(seconds=float(sys.argv[1])); print(t.strftime('%Y-%m-%dT%H:%M:%S.')+'%03dZ' % (t.microsecond // 1000))" "$1")
  curl -sf -XPOST "$URL/api/v1/sales" -H 'authorization: Bearer b' -H 'content-type: application/json' \
    -d "{\"id\":\"q\",\"total\":1000000,\"opens_at\":\"$opens\",\"queue\":{\"admit_per_second\":$2}}" >/dev/null
}
# Joins user $1 to sale q; prints the place's id.
join() {
  curl -sf -XPOST "$URL/api/v1/sales/q/queue" -H 'content-type: application/json' \
    -d "{\"user_id\":\"$1\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["queue_id"])'
}
# GETs PATH N times over one keep-alive connection.
get_n() { # get_n PATH N
  python3 - "$PORT" "$1" "$2" <<'EOF'
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
for _ in range(int(sys.argv[3])):
    c.request("GET", sys.argv[2])
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
EOF
}
SERVE=(serve --data-dir "$OUT/data" --admin-token b --log warn --drain-seconds 0)

if part 1; then
echo "== 1. a position poll against the ceiling"
# Instructions the server executed for N requests of CASE (ceiling or poll).
instructions() { # instructions CASE N
  rm -f "$OUT"/cg.*
  local case=$1 n=$2
  if [ "$case" = ceiling ]; then
    start_node valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.%p" "$BIN" ceiling --workers 1
    get_n /anything "$n"
  else
    start_node valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.%p" "$BIN" "${SERVE[@]}" --workers 1
    queued_sale 3600 100
    get_n "/api/v1/sales/q/queue/$(join u1)" "$n"
  fi
  kill -INT "$NODE"; wait "$NODE" 2>/dev/null || true
  sed -n 's/^summary: \([0-9]*\)$/\1/p' "$OUT"/cg.* | awk '{s += $1} END {print s}'
}
for c in ceiling poll; do
  a=$(instructions "$c" "$SMALL")
  b=$(instructions "$c" "$LARGE")
  awk -v a="$a" -v b="$b" -v n=$((LARGE - SMALL)) -v c="$c" \
    'BEGIN { printf "%-8s %8.0f instructions per request (callgrind, one worker)\n", c, (b - a) / n }'
done
for r in $(seq "$ROUNDS"); do
  start_node "$BIN" ceiling
  wrk -t"$THREADS" -c"$CONNS" -d"${SECONDS_EACH}s" --latency "$URL/anything" >"$OUT/wrk-ceiling.txt"
  stop "$NODE"
  start_node "$BIN" "${SERVE[@]}"
  queued_sale 3600 100
  qid=$(join u1)
  wrk -t"$THREADS" -c"$CONNS" -d"${SECONDS_EACH}s" --latency "$URL/api/v1/sales/q/queue/$qid" >"$OUT/wrk-poll.txt"
  stop "$NODE"
  c=$(wrk_rps "$OUT/wrk-ceiling.txt"); p=$(wrk_rps "$OUT/wrk-poll.txt")
  awk -v c="$c" -v p="$p" -v t="$THREADS" -v k="$CONNS" -v r="$r" \
    'BEGIN { printf "round %d, wrk -t%d -c%d: ceiling %.0f/s, poll %.0f/s: %.2f of the ceiling\n", r, t, k, c, p, p / c }'
  echo "  p99: ceiling $(wrk_p99 "$OUT/wrk-ceiling.txt"), poll $(wrk_p99 "$OUT/wrk-poll.txt")"
  awk -v c="$c" -v p="$p" 'BEGIN { print p / c }' >>"$OUT/ratios"
done
echo "median of $ROUNDS rounds: $(median <"$OUT/ratios") of the ceiling"
fi

if part 2; then
echo "== 2. memory per queued user"
start_node "$BIN" "${SERVE[@]}"
queued_sale $((JOINS_SECONDS + 15)) 100
opened=$(( $(date +%s) + JOINS_SECONDS + 15 ))
rss() { awk '/^VmRSS/ {print $2}' "/proc/$NODE/status"; }
before=$(rss)
cat >"$OUT/join.lua" <<'EOF'
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", "/api/v1/sales/q/queue", {["Content-Type"] = "application/json"},
    string.format('{"user_id":"w%d-%d"}', math.random(1, 1000000000), n))
end
EOF
wrk -t1 -c64 -d"${JOINS_SECONDS}s" --latency -s "$OUT/join.lua" "$URL" >"$OUT/wrk-join.txt"
size=$(curl -sf -XPOST "$URL/api/v1/sales/q/queue" -H 'content-type: application/json' \
  -d '{"user_id":"last"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["queue_size"])')
after=$(rss)
echo "joins: $(wrk_rps "$OUT/wrk-join.txt")/s durable (wrk -t1 -c64, p99 $(wrk_p99 "$OUT/wrk-join.txt"))"
awk -v b="$before" -v a="$after" -v n="$size" \
  'BEGIN { printf "queued %d users: RSS %d -> %d KiB, %.0f bytes per queued user\n", n, b, a, (a - b) * 1024 / n }'
qid=$(join u1)
while [ "$(date +%s)" -le "$opened" ]; do sleep 0.2; done
echo "first poll after the opening (draws the pre-queue's order): $(curl -s -o /dev/null -w '%{time_total}' "$URL/api/v1/sales/q/queue/$qid") s; the next: $(curl -s -o /dev/null -w '%{time_total}' "$URL/api/v1/sales/q/queue/$qid") s"
stop "$NODE"

fi

if part 3; then
echo "== 3. bench --queue: $USERS users, $RATE admitted a second, opening in $OPEN_IN s"
start_node "$BIN" "${SERVE[@]}"
queued_sale "$OPEN_IN" "$RATE"
"$BIN" bench --queue --target "$URL" --sale q --users "$USERS" --connections 200 --max-seconds 120 \
  --json "$OUT/queue.json" || true
stop "$NODE"
fi
