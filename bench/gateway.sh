#!/usr/bin/env bash
# What the load-balancing tier costs: wrk against one backend directly (the ceiling of any tier
# in front of it), then through `ticketrush gateway`, then through nginx running the
# configuration `ticketrush nginx-conf` prints, in one run, on the same backend process, with the
# same connections and the very same requests (bench/reserve.lua). Prints each and the ratios.
# ROUNDS rounds of direct, gateway, nginx in turn, medians reported, so that a neighbour's load
# on a shared machine hits all three alike. With perf installed it also counts the tier's own
# CPU time per request (gateway process; nginx master and workers), which load moves less.
#
# BACKENDS: which backends to measure, in turn: `ceiling` (hello-world on the node's stack: the
# tier's own cost shows most) and/or `node` (a real node, sale bench:TICKETS; a 2 s warm-up
# sells the tickets, so the measured runs are the article's sold-out path).
# BIN: the ticketrush binary (default: this tree's release build). BEFORE: another build's
# binary; its gateway runs as a fourth tier, `before`, in the same rounds (an A/B of a change).
# Installs wrk and nginx with apt when missing. Loopback only; stops everything it started.
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh" # strict mode; the working directory is the repository root
CONNS=${CONNS:-100}
SECONDS_RUN=${SECONDS_RUN:-10}
THREADS=${THREADS:-2}
TICKETS=${TICKETS:-10000}
BACKENDS=${BACKENDS:-"ceiling node"}
ROUNDS=${ROUNDS:-3}
PORT_BACKEND=${PORT_BACKEND:-18391}
PORT_GATEWAY=${PORT_GATEWAY:-18392}
PORT_NGINX=${PORT_NGINX:-18393}
PORT_BEFORE=${PORT_BEFORE:-18397}
BEFORE=${BEFORE:-}
TIERS="direct gateway nginx${BEFORE:+ before}"

need() { # need COMMAND PACKAGE...
  command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] && return 0
  echo "bench/gateway.sh: installing $1" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && { apt-get install -y -qq "${@:2}" >/dev/null 2>&1 || apt-get install -y -qq "$1" >/dev/null; }
}
need wrk wrk
need nginx nginx-light
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
BIN=${BIN:-$(release_bin)}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  stop "${PIDS[@]}"
  rm -rf "$WORK"
}
trap cleanup EXIT

# Waits until http://127.0.0.1:PORT/healthz answers 200 (10 s at most) and PID still runs (so
# the answer is ours, not another program's on the same port).
wait_port() { # wait_port PORT PID
  for _ in $(seq 100); do
    kill -0 "$2" 2>/dev/null || { echo "the process for port $1 exited (port taken?)" >&2; return 1; }
    curl -sf "http://127.0.0.1:$1/healthz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "nothing answered on port $1" >&2
  return 1
}
for port in $PORT_BACKEND $PORT_GATEWAY $PORT_NGINX ${BEFORE:+$PORT_BEFORE}; do
  if curl -s -o /dev/null "http://127.0.0.1:$port/"; then
    echo "port $port is already in use; set PORT_BACKEND, PORT_GATEWAY, PORT_NGINX" >&2
    exit 1
  fi
done
run_wrk() { # run_wrk PORT SECONDS
  wrk -t"$THREADS" -c"$CONNS" -d"$2s" --latency -s bench/reserve.lua "http://127.0.0.1:$1" -- bench
}
non2xx() { awk '/Non-2xx/ {print $NF}' "$1"; }
# CPU microseconds the measured process(es) spent per request answered (perf task-clock).
cpu_us() { # cpu_us BASE
  [ -s "$1.cpu" ] || { echo "-"; return; }
  awk -v r="$(wrk_requests "$1.txt")" \
    '/task-clock/ {gsub(",", "", $1); printf "%.1f\n", $1 * 1000 / r}' "$1.cpu"
}

# The tier in front of the backend, started once for all backends (they share the port).
"$BIN" gateway --listen 127.0.0.1:$PORT_GATEWAY --node 127.0.0.1:$PORT_BACKEND=1 --log warn >/dev/null &
GATEWAY=$!
PIDS+=("$GATEWAY")
if [ -n "$BEFORE" ]; then
  "$BEFORE" gateway --listen 127.0.0.1:$PORT_BEFORE --node 127.0.0.1:$PORT_BACKEND=1 --log warn >/dev/null &
  GATEWAY_BEFORE=$!
  PIDS+=("$GATEWAY_BEFORE")
fi
mkdir -p "$WORK/nginx"
"$BIN" nginx-conf --listen 127.0.0.1:$PORT_NGINX --node 127.0.0.1:$PORT_BACKEND=1 >"$WORK/nginx/ticketrush.conf"
"$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/ticketrush.conf" -e "$WORK/nginx/error.log" -g 'daemon off;' &
NGINX_PID=$!
PIDS+=("$NGINX_PID")

for backend in $BACKENDS; do
  case "$backend" in
    ceiling) "$BIN" ceiling --listen 127.0.0.1:$PORT_BACKEND >/dev/null 2>&1 & ;;
    node) "$BIN" serve --listen 127.0.0.1:$PORT_BACKEND --data-dir "$WORK/node" --admin-token bench \
            --sale "bench:$TICKETS" --node-id backend --log warn >/dev/null & ;;
    *) echo "unknown backend $backend" >&2; exit 2 ;;
  esac
  B=$!
  PIDS+=("$B")
  wait_port $PORT_BACKEND "$B"
  wait_port $PORT_GATEWAY "$GATEWAY"
  wait_port $PORT_NGINX "$NGINX_PID"
  if [ -n "$BEFORE" ]; then wait_port $PORT_BEFORE "$GATEWAY_BEFORE"; fi
  echo "== backend $backend: warm-up (2 s, direct)"
  run_wrk $PORT_BACKEND 2 >/dev/null
  for round in $(seq "$ROUNDS"); do
    for tier in $TIERS; do
      case "$tier" in
        before) port=$PORT_BEFORE; pids=$GATEWAY_BEFORE ;;
        direct) port=$PORT_BACKEND; pids=$B ;;
        gateway) port=$PORT_GATEWAY; pids=$GATEWAY ;;
        nginx) port=$PORT_NGINX; pids=$(echo "$NGINX_PID" $(pgrep -P "$NGINX_PID") | tr ' ' ',') ;;
      esac
      f="$WORK/$backend-$tier-$round"
      echo "== backend $backend via $tier, round $round"
      PERF=""
      if command -v perf >/dev/null 2>&1; then
        perf stat -e task-clock -p "$pids" -o "$f.cpu" sleep "$SECONDS_RUN" &
        PERF=$!
      fi
      run_wrk "$port" "$SECONDS_RUN" | tee "$f.txt"
      if [ -n "$PERF" ]; then wait "$PERF" || true; fi
    done
  done
  if [ "$backend" = node ]; then
    echo "== sale after the runs"; curl -s "http://127.0.0.1:$PORT_BACKEND/api/v1/sales/bench"; echo
  fi
  stop "$B"
done
echo "== gateway RSS (KiB): $(ps -o rss= -p "$GATEWAY")"

echo "== summary ($CONNS connections, wrk -t$THREADS, ${SECONDS_RUN}s x $ROUNDS rounds, medians; cpu: the process's own CPU per request; non-2xx on the node are sold_out answers)"
for backend in $BACKENDS; do
  d=$(for r in $(seq "$ROUNDS"); do wrk_rps "$WORK/$backend-direct-$r.txt"; done | median)
  for tier in $TIERS; do
    r=$(for r in $(seq "$ROUNDS"); do wrk_rps "$WORK/$backend-$tier-$r.txt"; done | median)
    p=$(for r in $(seq "$ROUNDS"); do wrk_p99 "$WORK/$backend-$tier-$r.txt" | sed 's/ms$//;s/us$/e-3/;s/\([0-9]\)s$/\1e3/'; done | median)
    c=$(for r in $(seq "$ROUNDS"); do cpu_us "$WORK/$backend-$tier-$r"; done | median)
    each=$(for r in $(seq "$ROUNDS"); do wrk_rps "$WORK/$backend-$tier-$r.txt" | awk '{printf "%.0f ", $1}'; done)
    awk -v b="$backend" -v t="$tier" -v r="$r" -v d="$d" -v p="$p" -v c="$c" -v e="$each" \
      'BEGIN { printf "%-8s %-8s rps %8.0f  of direct %.3f  p99 %6.2f ms  cpu %5s us/req  (rounds: %s)\n", b, t, r, r / d, p, c, e }'
  done
done
