#!/usr/bin/env bash
# Prints the path of a generated benchmark input, writing it first if it is not cached. The file
# is named by a digest of the generator's sources and the generation arguments, so a changed
# generator (or other arguments) writes a new input instead of reusing one it would not produce.
# Usage: scripts/bench-input.sh BINARY DIRECTORY GENERATE-ARGUMENTS...
# e.g. scripts/bench-input.sh .build-release/release/polyglot .build-release/bench 1000000 --cards 100000 --seed 1
set -euo pipefail
cd "$(dirname "$0")/.."
if (($# < 3)); then
    echo "usage: $0 BINARY DIRECTORY GENERATE-ARGUMENTS..." >&2
    exit 2
fi
bin=$1
dir=$2
shift 2

sources=(Sources/Roles/Generation/*.swift)
[[ -f Sources/polyglot/GenerateCommand.swift ]] && sources+=(Sources/polyglot/GenerateCommand.swift)
arguments=$(printf '%s\n' "$@" | sha256sum | cut -c1-12)
generator=$(cat "${sources[@]}" | sha256sum | cut -c1-12)
input="$dir/input-$arguments-$generator.jsonl"
if [[ ! -s "$input" ]]; then
    mkdir -p "$dir"
    # The same arguments' input from an older generator is never read again.
    rm -f "$dir/input-$arguments-"*.jsonl
    "$bin" generate "$@" -o "$input.partial" >&2
    mv "$input.partial" "$input"
fi
echo "$input"
