# shellcheck shell=bash
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# Helpers shared by the bench scripts (sourced, not run). Every script starts with
#   # shellcheck source=bench/lib.sh
#   . "$(dirname "$0")/lib.sh"
# which turns on strict mode and makes the repository root the working directory, so paths
# here and in the scripts are relative to it. The nodes of wait_nodes, targets and metric
# listen on 127.0.0.1:BASE+1 ... BASE+N (BASE set by the script; metric's N is NODES).

## Reports
# A top-level number of a report written by `ticketrush bench --json` (two-space indent).
field() { sed -n "s/^  \"$2\": \([0-9.e+-]*\),\{0,1\}$/\1/p" "$1"; }
# The p99 latency of such a report (every answer's: `latency_ms`, not `win_latency_ms`), in ms.
p99() { sed -n '/^  "latency_ms": {/,/^  }/ s/^    "p99": \([0-9.]*\),$/\1/p' "$1"; }
# The wins' p99 latency of such a report, in ms.
win_p99() { sed -n '/^  "win_latency_ms": {/,/^  }/ s/^    "p99": \([0-9.]*\),$/\1/p' "$1"; }
# From the output of `wrk --latency` (a file): requests per second, requests in all, and the
# p99 latency as wrk prints it, unit included (e.g. 1.23ms).
wrk_rps() { awk '/Requests\/sec/ {print $2}' "$1"; }
wrk_requests() { awk '/requests in/ {print $1}' "$1"; }
wrk_p99() { awk '$1=="99%" {print $2}' "$1"; }
# CPU µs a request: the "user system" seconds on FILE's last line (as `/usr/bin/time -f "%U %S"
# -o FILE` writes them, after a line of its own when the command failed) over N requests.
cpu_us() { tail -n 1 "$1" | awk -v n="$2" '{ if (n > 0) printf "%.1f\n", ($1 + $2) * 1e6 / n; else print "n/a" }'; }
# Exits unless /usr/bin/time (Debian's `time`, not the shell keyword) is there.
need_time() { [ -x /usr/bin/time ] || { echo "needs /usr/bin/time: apt-get install -y time" >&2; exit 1; }; }
# The CPU the processes have used so far, in the same "user system" seconds (/proc/PID/stat,
# USER_HZ 100); absent pids count nothing.
proc_cpu() { # proc_cpu PID...
  local p
  for p in "$@"; do if [ -n "$p" ]; then cat "/proc/$p/stat" 2>/dev/null || true; fi; done |
    awk '{u += $14; s += $15} END {printf "%.2f %.2f\n", u / 100, s / 100}'
}
# FILE2 minus FILE1, both "user system" seconds.
cpu_delta() { paste "$1" "$2" | awk '{printf "%.2f %.2f\n", $3 - $1, $4 - $2}'; }
# The median of the numbers on stdin, one a line (blank lines skipped): the middle one, for an
# even count the mean of the two middle ones; nothing for no input.
median() {
  sort -g | awk 'NF { v[++n] = $1 }
    END { if (n % 2) print v[(n + 1) / 2]; else if (n) printf "%.15g\n", (v[n / 2] + v[n / 2 + 1]) / 2 }'
}

## Callgrind
# The instructions of every callgrind output file given (a process and its parts).
cg_total() { sed -n 's/^summary: \([0-9]*\)$/\1/p' "$@" | awk '{s += $1} END {print s}'; }
# One line: LABEL... and the instructions per request of a run of SMALL and one of LARGE
# requests (the difference over the difference, so start-up and shutdown cancel out).
cg_per_request() { # cg_per_request INSTR_SMALL INSTR_LARGE REQUESTS_SMALL REQUESTS_LARGE LABEL...
  awk -v a="$1" -v b="$2" -v n=$(($4 - $3)) -v l="$(printf '%-40s %-9s' "${@:5}")" \
    'BEGIN { printf "%s %8.0f instructions per request\n", l, (b - a) / n }'
}

## Processes
# Builds this tree's release binary (quietly) and prints its path.
release_bin() {
  cargo build --release -q -p ticketrush >&2 || return
  echo "$PWD/target/release/ticketrush"
}
# Waits (SECONDS, 10 by default, at most) until a server answers /healthz at URL.
wait_url() { # wait_url URL [SECONDS]
  for _ in $(seq $((${2:-10} * 20))); do curl -sf "$1/healthz" >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "no answer from $1" >&2
  return 1
}
# Waits until each of N nodes answers /healthz.
wait_nodes() { # wait_nodes N
  local i
  for i in $(seq "$1"); do wait_url "http://127.0.0.1:$((BASE + i))" || return; done
}
# The `--target URL` flags of `ticketrush bench` for N nodes (unquoted: word-split on purpose).
targets() { # targets N
  for i in $(seq "$1"); do printf -- "--target http://127.0.0.1:%d " $((BASE + i)); done
}
# Sum of a counter over the NODES nodes' /metrics.
metric() { # metric NAME
  for i in $(seq "$NODES"); do curl -s "http://127.0.0.1:$((BASE + i))/metrics"; done |
    awk -v m="$1" '$1 == m {s += $2} END {print s + 0}'
}
# With PIN=1, moves process PID (all its threads) to core 0, the servers' core.
pin() { if [ "${PIN:-0}" = 1 ]; then taskset -p -a -c 0 "$1" >/dev/null; fi; }
# Stops the given processes (SIGTERM) and waits for them; never fails.
stop() { # stop PID...
  [ $# -gt 0 ] || return 0
  kill "$@" 2>/dev/null || true
  wait "$@" 2>/dev/null || true
}
# Stops every background job of this shell and waits for them (for an EXIT trap).
stop_jobs() {
  # shellcheck disable=SC2046  # one argument a pid
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
}
# Starts redis-server on PORT (loopback, data in DIR, AOF fsynced at every write, no RDB) with
# any extra FLAGs, in the background (its pid in REDIS_PID), and waits (5 s at most) for PING.
start_redis() { # start_redis PORT DIR [FLAG...]
  local port=$1 dir=$2; shift 2
  mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --appendonly yes \
    --appendfsync always --save "" --daemonize no --loglevel warning "$@" >/dev/null &
  # shellcheck disable=SC2034  # read by the caller
  REDIS_PID=$!
  for _ in $(seq 100); do redis-cli -p "$port" PING >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "redis-server on port $port did not answer" >&2
  return 1
}
