#!/usr/bin/env bash
# Instructions per request of the load-balancing tier, repeatable where times are not: the
# hello-world ceiling runs natively as the one backend, and the tier in front of it runs under
# `valgrind --tool=callgrind` with one worker: `ticketrush gateway --workers 1`, and nginx with
# the configuration `ticketrush nginx-conf` prints, cut to one worker process and no master
# (`worker_processes 1; master_process off;`: the same one-core shape). `ticketrush bench`
# drives it over one keep-alive connection; two runs per tier, SMALL and LARGE requests, the
# difference of their instruction counts over the difference of requests is the per-request
# cost (start-up and shutdown cancel out). Needs valgrind; installs nginx if missing.
#   bench/tier-callgrind.sh [BIN...]     (default: this tree's release build)
#   TIERS="gateway" bench/tier-callgrind.sh /tmp/before target/release/ticketrush
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh" # strict mode; the working directory is the repository root
SMALL=${SMALL:-1000}
LARGE=${LARGE:-6000}
PORT_BACKEND=${PORT_BACKEND:-18394}
PORT_TIER=${PORT_TIER:-18395}
TIERS=${TIERS:-gateway nginx}
command -v valgrind >/dev/null || { echo "needs valgrind: apt-get install -y valgrind" >&2; exit 1; }
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  echo "bench/tier-callgrind.sh: installing nginx" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [ $# -eq 0 ]; then
  set -- "$(release_bin)"
fi
GEN=${GEN:-$1}
OUT=$(mktemp -d)
trap 'stop_jobs; rm -rf "$OUT"' EXIT

"$GEN" ceiling --listen "127.0.0.1:$PORT_BACKEND" --log warn >/dev/null 2>&1 &
wait_url "http://127.0.0.1:$PORT_BACKEND"

# $1 binary, $2 tier, $3 requests: answers the instructions the tier executed.
instructions() {
  local bin=$1 tier=$2 n=$3 pid
  rm -rf "$OUT"/cg.* "$OUT/nginx"
  case $tier in
    gateway)
      valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.%p" "$bin" gateway --workers 1 \
        --listen "127.0.0.1:$PORT_TIER" --node "127.0.0.1:$PORT_BACKEND=1" --log warn \
        --drain-seconds 0 >/dev/null 2>"$OUT/vg.txt" &
      ;;
    nginx)
      mkdir -p "$OUT/nginx"
      "$bin" nginx-conf --listen "127.0.0.1:$PORT_TIER" --node "127.0.0.1:$PORT_BACKEND=1" |
        sed -e 's/^worker_processes .*/worker_processes 1;/' >"$OUT/nginx/ticketrush.conf"
      valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.%p" "$NGINX" -p "$OUT/nginx" \
        -c "$OUT/nginx/ticketrush.conf" -e "$OUT/nginx/error.log" \
        -g 'daemon off; master_process off;' >/dev/null 2>"$OUT/vg.txt" &
      ;;
  esac
  pid=$!
  wait_url "http://127.0.0.1:$PORT_TIER" 30 || true
  "$GEN" bench --target "http://127.0.0.1:$PORT_TIER" --sale s --users "$n" --connections 1 \
    --threads 1 --no-check --quiet >/dev/null
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true
  cg_total "$OUT"/cg.*
}

for bin in "$@"; do
  for t in $TIERS; do
    a=$(instructions "$bin" "$t" "$SMALL")
    b=$(instructions "$bin" "$t" "$LARGE")
    cg_per_request "$a" "$b" "$SMALL" "$LARGE" "$bin" "$t"
  done
done
