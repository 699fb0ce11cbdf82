#!/usr/bin/env bash
# Many sales at once, on a single Redis and on a three-master Redis Cluster, in one run, all on
# loopback, everything stopped at the end: NODES `serve --redis` nodes (one worker each), SALES
# sales of TICKETS tickets, USERS users picking a sale by a skewed popularity (Zipf, the
# generator's `--sale A,B,...`). For each store: reservations per second, the generator's
# check, Redis round trips per reservation (what the nodes count), and each master's CPU
# (INFO cpu, user + sys) per reservation and its share of the work.
#   bench/many-sales.sh            SALES=1000 TICKETS=500 USERS=2000000 NODES=4 CONNS=96
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh" # strict mode; the working directory is the repository root
SALES=${SALES:-1000}
TICKETS=${TICKETS:-500}
USERS=${USERS:-2000000}
NODES=${NODES:-4}
CONNS=${CONNS:-96}
BASE=${BASE:-18600}
if [ -z "${BIN:-}" ]; then
  BIN=$(release_bin)
fi
OUT=$(mktemp -d)
REDIS_PIDS=()
trap 'stop_jobs; rm -rf "$OUT"' EXIT
cpu() { redis-cli -p "$1" INFO cpu | awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {printf "%.3f", s}'; }
redis() { # port, extra flags...
  local port=$1; shift
  start_redis "$port" "$OUT/r$port" "$@"
  REDIS_PIDS+=("$REDIS_PID")
}
ids=$(seq "$SALES" | sed 's/^/m/' | paste -sd, -)

# $1 label, $2 redis URL, $3 the masters' ports
run() {
  local label=$1 url=$2 ports=$3 pids=()
  for i in $(seq "$NODES"); do
    "$BIN" serve --listen "127.0.0.1:$((BASE + i))" --redis "$url" --admin-token bench \
      --node-id "n$i" --workers 1 --log warn >/dev/null & pids+=($!)
  done
  wait_nodes "$NODES"
  for s in $(seq "$SALES"); do
    curl -sf -X POST "http://127.0.0.1:$((BASE + 1 + s % NODES))/api/v1/sales" \
      -H 'Content-Type: application/json' -H 'Authorization: Bearer bench' \
      -d "{\"id\":\"m$s\",\"total\":$TICKETS}" >/dev/null
  done
  declare -A before
  for p in $ports; do before[$p]=$(cpu "$p"); done
  local trips0; trips0=$(metric ticketrush_store_round_trips_total)
  local status=0
  # shellcheck disable=SC2046
  TICKETRUSH_BENCH_SALE=$ids "$BIN" bench $(targets "$NODES") --users "$USERS" --connections "$CONNS" \
    --quiet --json "$OUT/$label.json" >/dev/null || status=$?
  local trips1; trips1=$(metric ticketrush_store_round_trips_total)
  local won; won=$(field "$OUT/$label.json" succeeded)
  local dur; dur=$(field "$OUT/$label.json" duration_s)
  echo "$label: $won reservations in ${dur}s = $(awk -v w="$won" -v d="$dur" 'BEGIN {printf "%.0f", w / d}') reservations/s," \
    "$(field "$OUT/$label.json" requests) requests at $(field "$OUT/$label.json" rps) req/s," \
    "early_sold_out $(field "$OUT/$label.json" early_sold_out), check exit $status"
  awk -v t=$((trips1 - trips0)) -v w="$won" 'BEGIN {printf "  redis round trips per reservation %.3f\n", t / w}'
  local total=0
  declare -A used
  for p in $ports; do
    used[$p]=$(awk -v a="${before[$p]}" -v b="$(cpu "$p")" 'BEGIN {printf "%.3f", b - a}')
    total=$(awk -v t="$total" -v u="${used[$p]}" 'BEGIN {printf "%.3f", t + u}')
  done
  for p in $ports; do
    awk -v p="$p" -v u="${used[$p]}" -v t="$total" -v w="$won" -v k="$(redis-cli -p "$p" DBSIZE)" \
      'BEGIN {printf "  master :%s  cpu %.2f s  %.1f us per reservation (of all)  share %.0f %%  keys %d\n", p, u, u * 1e6 / w, (t > 0 ? 100 * u / t : 0), k}'
  done
  stop "${pids[@]}"
}

echo "== single Redis: $SALES sales of $TICKETS tickets, $USERS users, $NODES nodes"
P=$((BASE + 90))
redis "$P"
run single "redis://127.0.0.1:$P" "$P"
stop "${REDIS_PIDS[@]}"; REDIS_PIDS=()

echo "== Redis Cluster, three masters: the same"
PORTS="$((BASE + 91)) $((BASE + 92)) $((BASE + 93))"
for p in $PORTS; do redis "$p" --cluster-enabled yes --cluster-node-timeout 2000 \
  --cluster-require-full-coverage no; done
# shellcheck disable=SC2046
redis-cli --cluster create $(for p in $PORTS; do printf '127.0.0.1:%s ' "$p"; done) \
  --cluster-replicas 0 --cluster-yes >/dev/null
for p in $PORTS; do
  until redis-cli -p "$p" CLUSTER INFO | grep -q cluster_state:ok; do sleep 0.1; done
done
run cluster "redis://127.0.0.1:$((BASE + 91))" "$PORTS"
