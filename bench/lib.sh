# Helpers shared by the bench scripts (sourced, not run).
# A top-level number of a report written by `ticketrush bench --json` (two-space indent).
field() { sed -n "s/^  \"$2\": \([0-9.e+-]*\),\{0,1\}$/\1/p" "$1"; }
# The p99 latency of such a report, in ms.
p99() { sed -n 's/^    "p99": \([0-9.]*\),$/\1/p' "$1"; }
# Waits (10 s at most) until a server answers /healthz at URL $1.
wait_url() {
  for _ in $(seq 200); do curl -sf "$1/healthz" >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "no answer from $1" >&2
  return 1
}
