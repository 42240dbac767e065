#!/usr/bin/env bash
# Audit throughput: `audit --files` over 1,000,000 generated records (100,000 cards) and their
# replay output. Prints each run's records/s (inputs plus outputs, from the summary line), wall
# time and peak memory.
# Usage: scripts/bench-audit.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"

swift build -c release --static-swift-stdlib --scratch-path .build-release 2>&1 | grep -E 'error|Compiling|Build complete' | tail -1
bin=.build-release/release/polyglot
work=.build-release/bench
mkdir -p "$work"
[[ -s "$work/1m.jsonl" ]] || "$bin" generate 1000000 --cards 100000 --rate 1000 --seed 1 -o "$work/1m.jsonl"
"$bin" replay "$work/1m.jsonl" -o "$work/1m.out.jsonl" --dlq "$work/1m.dlq.jsonl" --no-progress

for ((i = 1; i <= runs; i++)); do
    status=0
    /usr/bin/time -f '%e s wall, %M KiB peak' "$bin" audit --files "$work/1m.jsonl" "$work/1m.out.jsonl" \
        --dlq "$work/1m.dlq.jsonl" --report "$work/1m.audit.json" 2>&1 >/dev/null |
        sed -E 's/^audit: //' | paste -sd ' ' - || status=$?
    [[ $status -eq 0 ]] || { echo "audit exited $status" >&2; exit 1; }
done
