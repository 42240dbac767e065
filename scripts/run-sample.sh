#!/usr/bin/env bash
# Installs what is missing, builds polyglot (release) and replays the bundled sample.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
swift build -c release --static-swift-stdlib --scratch-path .build-release 2>&1 | grep -Ev '^\[|^Building|warning: the use of .mktemp' || true
bin=.build-release/release/polyglot
out=.build-release/sample

mkdir -p "$out"
"$bin" --version
"$bin" replay samples/transactions.jsonl -o "$out/enriched.jsonl" --dlq "$out/dead-letters.jsonl"
echo
echo "First flagged transactions ($out/enriched.jsonl):"
grep -m 3 '"isFlagged":true' "$out/enriched.jsonl"
echo
echo "First dead letters ($out/dead-letters.jsonl):"
head -n 3 "$out/dead-letters.jsonl"
