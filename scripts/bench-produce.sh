#!/usr/bin/env bash
# `polyglot produce` throughput into the dev broker: N generated records (default 500,000) over
# 100,000 cards, into financial-transactions with 32 partitions, each run on a fresh broker (the
# dev broker keeps about 5 MB per partition, so repeated loads into one would drop records).
# Prints each run's summary line, then the median rate over RUNS runs (default 5). The rate is
# records over the load's own time, from the first line read to the last delivery report
# (connecting and reading metadata are outside it). Each run is checked: its summary counts
# every line as delivered and keyed (produce exits 1 when a record is not delivered).
# BIN=path runs an already built binary instead.
# Usage: scripts/bench-produce.sh [RECORDS] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
records="${1:-500000}"
runs="${2:-5}"

if [[ -z "${BIN:-}" ]]; then
    swift build -c release --static-swift-stdlib --scratch-path .build-release 2>&1 | grep -E 'error|Compiling|Build complete' | tail -1
fi
bin=${BIN:-.build-release/release/polyglot}
work=.build-release/bench-produce
mkdir -p "$work"
input=$(scripts/bench-input.sh "$bin" "$work" "$records" --cards 100000 --rate 1000 --seed 1)

median() { sort -n | awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; print (m == int(m)) ? m : sprintf("%.2f", m) }'; }

: > "$work/runs"
for ((run = 1; run <= runs; run++)); do
    rm -f "$work/bootstrap"
    "$bin" dev broker --partitions 32 --bootstrap-file "$work/bootstrap" >/dev/null 2>"$work/broker.log" &
    broker=$!
    trap 'kill -TERM "$broker" 2>/dev/null; wait "$broker" 2>/dev/null || true' EXIT
    for _ in $(seq 100); do [[ -s "$work/bootstrap" ]] && break; sleep 0.1; done
    "$bin" produce "$input" --bootstrap-servers "$(cat "$work/bootstrap")" 2>"$work/summary"
    summary=$(cat "$work/summary")
    echo "$summary"
    grep -qE "^produce: $records records .*: $records keyed, 0 unkeyed$" <<<"$summary" || { echo "run $run: not every record was keyed and delivered" >&2; exit 1; }
    echo "$summary" | grep -oE '\(([0-9]+) records/s\)' | tr -dc 0-9 >> "$work/runs"
    echo >> "$work/runs"
    kill -TERM "$broker"
    wait "$broker" 2>/dev/null || true
    trap - EXIT
done
echo "median over $runs runs: $(median < "$work/runs") records/s"
