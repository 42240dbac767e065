#!/usr/bin/env bash
# End-to-end `polyglot process` throughput through the dev broker: N generated records (default
# 500,000) over 100,000 cards, keyed by card, in 32 partitions; exactly-once, one instance,
# --until-end. Then the state directory is deleted and a second run restores every store from the
# changelog (no new input), which measures restore speed.
# The dev broker (librdkafka's mock) waits session.timeout.ms before a group's first assignment, so
# the runs set it to 6 s. Prints the processor's final log line of each run (records/s counts from
# the first record to the last commit; restore rate over the time spent restoring), RUNS times
# over fresh brokers (default 5), then the median of each rate: on a shared 2-core machine single
# runs vary by up to 2x.
# Usage: scripts/bench-process.sh [RECORDS] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
records="${1:-500000}"
runs="${2:-5}"

if [[ -z "${BIN:-}" ]]; then
    swift build -c release --static-swift-stdlib --scratch-path .build-release 2>&1 | grep -E 'error|Compiling|Build complete' | tail -1
fi
# BIN=path runs an already built binary instead (to compare builds).
bin=${BIN:-.build-release/release/polyglot}
work=.build-release/bench-process
mkdir -p "$work"
rm -rf "$work/state" "$work/bootstrap"
input="$work/in-$records.jsonl"
[[ -s "$input" ]] || "$bin" generate "$records" --cards 100000 --rate 1000 --seed 1 -o "$input"

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : int((v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }

one_run() {
    rm -rf "$work/state" "$work/bootstrap"
    "$bin" dev broker --partitions 32 --bootstrap-file "$work/bootstrap" >/dev/null 2>"$work/broker.log" &
    broker=$!
    trap 'kill -TERM "$broker" 2>/dev/null; wait "$broker" 2>/dev/null || true' EXIT
    for _ in $(seq 100); do [[ -s "$work/bootstrap" ]] && break; sleep 0.1; done
    bootstrap=$(cat "$work/bootstrap")

    # Key each record by its cardId, as the original producers do. In large batches: the dev broker
    # (librdkafka's mock) finds a fetch offset by walking the partition's batches from the first, so
    # an input loaded as thousands of tiny batches makes every fetch of the run cost that walk (a
    # real broker has an offset index); with them the broker alone used more CPU than the processor.
    sed -E 's/^(.*"cardId":"([^"]*)".*)$/\2\t\1/' "$input" |
        kcat -P -b "$bootstrap" -t financial-transactions -K $'\t' -X partitioner=murmur2_random \
            -X linger.ms=200 -X batch.size=4000000 -X batch.num.messages=100000 -X queue.buffering.max.messages=1000000

    process() {
        "$bin" process --bootstrap-servers "$bootstrap" --state-dir "$work/state" --until-end --log-level notice \
            -X session.timeout.ms=6000 -X heartbeat.interval.ms=500 2>&1 |
            grep -E 'stopped|error' | sed -E 's/^[^ ]+ [a-z]+ polyglot.process: //'
    }
    local processed restored
    processed=$(process)
    rm -rf "$work/state"
    restored=$(process)
    kill -TERM "$broker" 2>/dev/null; wait "$broker" 2>/dev/null || true
    trap - EXIT
    echo "run $1: processing $records records: $processed" >&2
    echo "run $1: restore from the changelog (state directory deleted): $restored" >&2
    echo "$(grep -oE ' rate=[0-9]+' <<<"$processed" | cut -d= -f2) $(grep -oE 'restoreRate=[0-9]+' <<<"$restored" | cut -d= -f2)"
}

results=()
for ((i = 1; i <= runs; i++)); do results+=("$(one_run "$i")"); done
printf '%s\n' "${results[@]}" > "$work/rates"
echo "records/s over $runs runs: median $(cut -d' ' -f1 "$work/rates" | median), min $(cut -d' ' -f1 "$work/rates" | sort -n | head -1), max $(cut -d' ' -f1 "$work/rates" | sort -n | tail -1)"
echo "restore changelog records/s: median $(cut -d' ' -f2 "$work/rates" | median), min $(cut -d' ' -f2 "$work/rates" | sort -n | head -1), max $(cut -d' ' -f2 "$work/rates" | sort -n | tail -1)"
