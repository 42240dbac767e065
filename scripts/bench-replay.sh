#!/usr/bin/env bash
# Replay throughput: 1,000,000 generated clean records over 100,000 cards, written to a file.
# Prints each run's records/s (from the summary line), wall time and peak memory.
# Usage: scripts/bench-replay.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"

swift build -c release --static-swift-stdlib --scratch-path .build-release 2>&1 | grep -E 'error|Compiling|Build complete' | tail -1
bin=.build-release/release/polyglot
work=.build-release/bench
mkdir -p "$work"
[[ -s "$work/1m.jsonl" ]] || "$bin" generate 1000000 --cards 100000 --rate 1000 --seed 1 -o "$work/1m.jsonl"

for ((i = 1; i <= runs; i++)); do
    /usr/bin/time -f '%e s wall, %M KiB peak' "$bin" replay "$work/1m.jsonl" -o "$work/1m.out.jsonl" --no-progress 2>&1 |
        sed -E 's/^replay: //' | paste -sd ' ' -
done
