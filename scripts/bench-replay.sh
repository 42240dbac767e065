#!/usr/bin/env bash
# Replay throughput: 1,000,000 generated clean records over 100,000 cards, written to a file.
# Prints each run's summary line, wall time and peak memory (from time), then the medians.
# BIN=path runs an already built binary instead.
# --window-kind tumbling|sliding picks the detector's window kind (default tumbling).
# Usage: scripts/bench-replay.sh [--window-kind KIND] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == --window-kind ]]; then
    [[ "${2:-}" == tumbling || "${2:-}" == sliding ]] || { echo "--window-kind takes tumbling or sliding" >&2; exit 64; }
    export POLYGLOT_WINDOW_KIND=$2
    shift 2
fi
echo "window kind: ${POLYGLOT_WINDOW_KIND:-tumbling}" >&2
runs="${1:-5}"

if [[ -z "${BIN:-}" ]]; then
    swift build -c release --static-swift-stdlib --scratch-path .build-release 2>&1 | grep -E 'error|Compiling|Build complete' | tail -1
fi
bin=${BIN:-.build-release/release/polyglot}
work=.build-release/bench
input=$(scripts/bench-input.sh "$bin" "$work" 1000000 --cards 100000 --rate 1000 --seed 1)

median() { sort -n | awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; print (m == int(m)) ? m : sprintf("%.2f", m) }'; }

: > "$work/replay-runs"
for ((i = 1; i <= runs; i++)); do
    /usr/bin/time -o "$work/time" -f '%e %M' "$bin" replay "$input" -o "$work/1m.out.jsonl" --no-progress 2>"$work/summary"
    summary=$(sed -E 's/^replay: //' "$work/summary")
    read -r wall peak < "$work/time"
    echo "$summary, $wall s wall, $peak KiB peak"
    echo "$(grep -oE '\(([0-9]+) records/s\)' <<<"$summary" | tr -dc 0-9) $wall $peak" >> "$work/replay-runs"
done
echo "median over $runs runs: $(cut -d' ' -f1 "$work/replay-runs" | median) records/s, $(cut -d' ' -f2 "$work/replay-runs" | median) s wall, $(cut -d' ' -f3 "$work/replay-runs" | median | awk '{ printf "%.1f", $1 / 1024 }') MiB peak"
