#!/usr/bin/env bash
# Output latency of `polyglot process`, exactly-once, through the dev broker (8 partitions):
# generated transactions are produced at fixed rates (RATES, default 5000, 20000, 50000 and
# 100000 records/s, SECONDS_PER_RATE seconds each, default 20) with event time = the wall clock
# at produce, each on its card's partition; a read_committed consumer takes `now - timestamp` of
# every output, so a latency covers the processor and the commit that made its output visible.
# Prints p50, p95, p99 and max per rate, then the same harness with no processor (the consumer
# reads the input topic itself) as the floor.
# PROCESS_ARGS adds flags to `process` (for example "--commit-interval 50ms -X linger.ms=5");
# BIN=path runs an already built binary instead (to compare builds).
# Usage: scripts/bench-latency.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rates="${RATES:-5000,20000,50000,100000}"
seconds="${SECONDS_PER_RATE:-20}"
partitions=8

if [[ -z "${BIN:-}" ]]; then
    swift build -c release --static-swift-stdlib --scratch-path .build-release 2>&1 | grep -E 'error|Compiling|Build complete' | tail -1
fi
bin=${BIN:-.build-release/release/polyglot}
work=.build-release/bench-latency
rm -rf "$work"
mkdir -p "$work"

"$bin" dev broker --partitions "$partitions" --bootstrap-file "$work/bootstrap" >/dev/null 2>"$work/broker.log" &
broker=$!
process=""
cleanup() {
    [[ -n "$process" ]] && kill -TERM "$process" 2>/dev/null && wait "$process" 2>/dev/null
    kill -TERM "$broker" 2>/dev/null
    wait "$broker" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 100); do [[ -s "$work/bootstrap" ]] && break; sleep 0.1; done
bootstrap=$(cat "$work/bootstrap")

# The processor, until every partition's task runs (the dev broker waits session.timeout.ms
# before a group's first assignment: 6 s here).
# shellcheck disable=SC2086
"$bin" process --bootstrap-servers "$bootstrap" --state-dir "$work/state" --metrics-port 0 --log-level info \
    -X session.timeout.ms=6000 -X heartbeat.interval.ms=500 ${PROCESS_ARGS:-} 2>"$work/process.log" &
process=$!
for _ in $(seq 300); do
    (($(grep -c 'task started' "$work/process.log" || true) >= partitions)) && break
    kill -0 "$process" 2>/dev/null || { cat "$work/process.log" >&2; exit 1; }
    sleep 0.1
done
(($(grep -c 'task started' "$work/process.log" || true) >= partitions)) || { echo "process did not start its tasks" >&2; exit 1; }

"$bin" dev latency-bench --bootstrap-servers "$bootstrap" --rates "$rates" --seconds "$seconds"
kill -TERM "$process"
wait "$process" || { tail -5 "$work/process.log" >&2; exit 1; }
process=""

# The floor: the same producer and read_committed consumer, on the input topic itself.
"$bin" dev latency-bench --bootstrap-servers "$bootstrap" --rates "$rates" --seconds "$seconds" --floor
