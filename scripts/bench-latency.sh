#!/usr/bin/env bash
# Output latency of `polyglot process`, exactly-once, through the dev broker (8 partitions):
# generated transactions are produced at fixed rates (RATES, default 5000, 20000, 50000 and
# 100000 records/s, SECONDS_PER_RATE seconds each, default 20) with event time = the wall clock
# at produce, each on its card's partition; a read_committed consumer takes `now - timestamp` of
# every output, so a latency covers the processor and the commit that made its output visible.
# Prints p50, p95, p99 and max per rate, then the same harness with no processor (the consumer
# reads the input topic itself) as the floor.
# The dev broker lets read_committed consumers see records of open transactions, so there the
# consumer's figures stop at the produce and miss the commit; each rate's line is therefore
# followed by the processor's own polyglot_record_latency_seconds for that rate (input timestamp
# to the commit that made the output visible, as bucket bounds: "p99 <= 150 ms"), which holds on
# any cluster.
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
port=$((20000 + RANDOM % 20000))
# shellcheck disable=SC2086
"$bin" process --bootstrap-servers "$bootstrap" --state-dir "$work/state" --metrics-port "$port" --log-level info \
    -X session.timeout.ms=6000 -X heartbeat.interval.ms=500 ${PROCESS_ARGS:-} 2>"$work/process.log" &
process=$!
for _ in $(seq 300); do
    (($(grep -c 'task started' "$work/process.log" || true) >= partitions)) && break
    kill -0 "$process" 2>/dev/null || { cat "$work/process.log" >&2; exit 1; }
    sleep 0.1
done
(($(grep -c 'task started' "$work/process.log" || true) >= partitions)) || { echo "process did not start its tasks" >&2; exit 1; }

# The processor's latency histogram between two scrapes, as quantile bounds.
histogram() { curl -fsS "http://127.0.0.1:$port/metrics" | grep '^polyglot_record_latency_seconds_bucket' || true; }
quantiles() {
    awk '
        FNR == 1 { file++ }
        { match($0, /le="[^"]*"/); le = substr($0, RSTART + 4, RLENGTH - 5); n = $NF }
        file == 1 { before[le] = n; next }
        { order[++k] = le; after[le] = n }
        END {
            total = after["+Inf"] - before["+Inf"]
            if (total <= 0) { print "  process commits: no record committed"; exit }
            split("50 95 99", qs, " ")
            line = sprintf("  process commits: %d records, latency ms", total)
            for (q = 1; q <= 3; q++) {
                rank = total * qs[q] / 100
                for (i = 1; i <= k; i++) if (after[order[i]] - before[order[i]] >= rank) break
                bound = order[i] == "+Inf" ? "inf" : order[i] * 1000
                line = line sprintf(" p%s <= %s", qs[q], bound)
            }
            print line
        }' "$1" "$2"
}
IFS=, read -ra each <<<"$rates"
for rate in "${each[@]}"; do
    histogram >"$work/before"
    "$bin" dev latency-bench --bootstrap-servers "$bootstrap" --rates "$rate" --seconds "$seconds"
    histogram >"$work/after"
    quantiles "$work/before" "$work/after"
done
kill -TERM "$process"
wait "$process" || { tail -5 "$work/process.log" >&2; exit 1; }
process=""

# The floor: the same producer and read_committed consumer, on the input topic itself.
"$bin" dev latency-bench --bootstrap-servers "$bootstrap" --rates "$rates" --seconds "$seconds" --floor
