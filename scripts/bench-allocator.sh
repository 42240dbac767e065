#!/usr/bin/env bash
# What jemalloc buys: one release binary, run as built (it links jemalloc) and against a stub
# libjemalloc.so.2 that defines nothing, so that every allocation falls through to glibc's malloc.
# Same code, same machine code; only the allocator differs. Each pair runs both, in alternating
# order so a change in the machine's speed does not favour one; then the medians per allocator:
#   replay: scripts/bench-replay.sh's workload (1,000,000 records, 100,000 cards), peak memory
#     and user CPU from `time -v`;
#   process: scripts/bench-process.sh with RECORDS records (default 500,000) and one run, the
#     processor's records/s and user CPU (the dev broker runs with jemalloc in both).
# Before measuring, checks that each configuration uses the allocator it claims: jemalloc prints
# its statistics at exit when MALLOC_CONF asks, which it can only do if it is the allocator.
# Needs a C compiler (cc) for the stub.
# Usage: scripts/bench-allocator.sh [PAIRS] [RECORDS]
set -euo pipefail
cd "$(dirname "$0")/.."
pairs="${1:-5}"
records="${2:-500000}"

swift build -c release --static-swift-stdlib --scratch-path .build-release 2>&1 | grep -E 'error|Compiling|Build complete' | tail -1
bin=.build-release/release/polyglot
work=.build-release/bench-allocator
mkdir -p "$work/stub"
cc -shared -fPIC -o "$work/stub/libjemalloc.so.2" -x c /dev/null
stub="$PWD/$work/stub"

uses_jemalloc() {
    local out
    out=$(env "$@" MALLOC_CONF=stats_print:true "$bin" --version 2>&1)
    [[ "$out" == *"jemalloc statistics"* ]]
}
uses_jemalloc || { echo "$bin does not allocate through jemalloc" >&2; exit 1; }
if uses_jemalloc "LD_LIBRARY_PATH=$stub"; then
    echo "the stub in $stub did not replace jemalloc" >&2
    exit 1
fi
echo "checked: $bin allocates through jemalloc as built, through glibc's malloc with LD_LIBRARY_PATH=$stub" >&2

input=$(scripts/bench-input.sh "$bin" .build-release/bench 1000000 --cards 100000 --rate 1000 --seed 1)
median() { sort -n | awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; print (m == int(m)) ? m : sprintf("%.2f", m) }'; }

# One measurement of allocator $1 (jemalloc or glibc), appended to $work/runs-$1: replay's peak KiB
# and user CPU seconds, process's records/s and user CPU seconds.
measure() {
    local library_env=(env)
    [[ "$1" == glibc ]] && library_env+=("LD_LIBRARY_PATH=$stub")
    "${library_env[@]}" /usr/bin/time -v -o "$work/time" "$bin" replay "$input" -o "$work/replay.out.jsonl" --no-progress 2>/dev/null
    local peak user
    peak=$(grep 'Maximum resident set size' "$work/time" | grep -oE '[0-9]+$')
    user=$(grep 'User time' "$work/time" | grep -oE '[0-9.]+$')
    if [[ "$1" == glibc ]]; then
        BIN=$bin PROCESS_LIBRARY_PATH=$stub scripts/bench-process.sh "$records" 1 >/dev/null
    else
        BIN=$bin scripts/bench-process.sh "$records" 1 >/dev/null
    fi
    # bench-process.sh's rates file: records/s, restore rate, processing seconds, user CPU.
    read -r rate _ _ cpu < .build-release/bench-process/rates
    echo "$peak $user $rate $cpu" >> "$work/runs-$1"
    echo "pair $2, $1: replay $peak KiB peak, $user s user CPU; process $rate records/s, $cpu s user CPU" >&2
}

rm -f "$work/runs-jemalloc" "$work/runs-glibc"
for ((i = 1; i <= pairs; i++)); do
    if ((i % 2)); then order=(jemalloc glibc); else order=(glibc jemalloc); fi
    for allocator in "${order[@]}"; do measure "$allocator" "$i"; done
done
column() { cut -d' ' -f"$2" "$work/runs-$1" | median; }
for allocator in jemalloc glibc; do
    echo "$allocator, medians of $pairs runs: replay $(column "$allocator" 1 | awk '{ printf "%.1f", $1 / 1024 }') MiB peak, $(column "$allocator" 2) s user CPU;" \
        "process ($records records) $(column "$allocator" 3) records/s, $(column "$allocator" 4) s user CPU"
done
