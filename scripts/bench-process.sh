#!/usr/bin/env bash
# End-to-end `polyglot process` throughput through the dev broker: N generated records (default
# 500,000) over 100,000 cards, keyed by card, in 32 partitions; exactly-once, one instance,
# --until-end. Then the state directory is deleted and a second run restores every store from the
# changelog (no new input), which measures restore speed.
# The dev broker (librdkafka's mock) waits session.timeout.ms before a group's first assignment, so
# the runs set it to 6 s. Prints the processor's final log line of each run, RUNS times over fresh
# brokers (default 5), then the median of each rate: on a shared 2-core machine single runs vary
# by up to 2x. records/s is records / processing_seconds, the span from the first record handled to
# the last commit (start-up, joining the group and restoring are outside it); the restore rate is
# changelog records over the time spent restoring.
# Each run is checked, and the script fails if a check does: the output topic received one record
# per valid input record and the dead-letter topic one per rejected line (the counts `replay`
# gives for the same file), and the restore read back every changelog record the first run wrote.
# BAD=fraction makes that fraction of the input malformed (default 0, the figures' workload).
# AUDIT=1 also runs `polyglot audit --once` over the topics after the first run of each pair,
# fails if it reports a discrepancy, and prints its audited records/s (inputs plus outputs over
# its whole run) and peak memory; with more than about 300,000 RECORDS the dev broker (5 MiB per
# partition) drops the oldest outputs, which the audit reports as truncated. AUDIT=continuous runs the continuous auditor
# instead (`polyglot audit --until-end`, its own group, state and findings topic, exactly once),
# fails unless it matched every input to its output or dead letter with no discrepancy, and
# prints its records/s over its processing_seconds (inputs, outputs and dead letters it read,
# and its own repartition records) and its peak memory, then the median of each run's auditor rate over its processor rate.
# Each role runs its default stream threads (process 1, audit 2); PROCESS_THREADS=n and
# AUDIT_THREADS=n set them (--stream-threads), to compare the roles at equal threads.
# BIN=path runs an already built binary instead (to compare builds); PROCESS_LIBRARY_PATH=dir
# puts dir first in the library path of the `process` runs only (the broker runs as built).
# METRICS_PORT=port serves /metrics and /healthz during the runs (default 0: off, so that
# another instance on the machine cannot make the run fail to listen).
# --window-kind tumbling|sliding picks the window kind of every command the script runs (process,
# the audits and the replay that gives the expected counts), through POLYGLOT_WINDOW_KIND.
# Usage: scripts/bench-process.sh [--window-kind KIND] [RECORDS] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == --window-kind ]]; then
    [[ "${2:-}" == tumbling || "${2:-}" == sliding ]] || { echo "--window-kind takes tumbling or sliding" >&2; exit 64; }
    export POLYGLOT_WINDOW_KIND=$2
    shift 2
fi
echo "window kind: ${POLYGLOT_WINDOW_KIND:-tumbling}" >&2
records="${1:-500000}"
runs="${2:-5}"

if [[ -z "${BIN:-}" ]]; then
    swift build -c release --static-swift-stdlib --scratch-path .build-release 2>&1 | grep -E 'error|Compiling|Build complete' | tail -1
fi
bin=${BIN:-.build-release/release/polyglot}
work=.build-release/bench-process
mkdir -p "$work"
rm -rf "$work/state" "$work/bootstrap"
input=$(scripts/bench-input.sh "$bin" "$work" "$records" --cards 100000 --rate 1000 --seed 1 --bad "${BAD:-0}")

# What the processor must produce from this input, by the broker-free path.
summary=$("$bin" replay "$input" -o "$work/replay.out.jsonl" --no-progress 2>&1 | grep '^replay:')
rm -f "$work/replay.out.jsonl"
valid=$(sed -E 's/^replay: ([0-9]+) records.*/\1/' <<<"$summary")
rejected=$(sed -E 's/.* ([0-9]+) rejected.*/\1/' <<<"$summary")
echo "input: $records lines, $valid valid, $rejected rejected (replay of $input)" >&2

process_env=(env)
if [[ -n "${PROCESS_LIBRARY_PATH:-}" ]]; then
    process_env+=("LD_LIBRARY_PATH=$PROCESS_LIBRARY_PATH${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}")
fi

median() { sort -n | awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; print (m == int(m)) ? m : sprintf("%.2f", m) }'; }
# A value of the processor's final log line: `field NAME LINE`.
field() { grep -oE "(^| )$1=[0-9.]+" <<<"$2" | head -1 | cut -d= -f2; }
fail() { echo "run $run: $*" >&2; exit 1; }
# A JSON log line as `message=... name=value ...` (its values, strings or numbers, hold no
# quotes, commas or spaces).
json_fields() { sed -E 's/^\{//; s/\}$//; s/"([^"]+)":("([^"]*)"|([^,"]*))/\1=\3\4/g; s/,([A-Za-z_]+=)/ \1/g; s/^time=[^ ]* level=[^ ]* logger=[^ ]* //'; }

one_run() {
    run=$1
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

    # The final log line, with the run's user CPU seconds (from time) appended.
    process() {
        local line
        line=$("${process_env[@]}" /usr/bin/time -o "$work/time" -f '%U' \
            "$bin" process --bootstrap-servers "$bootstrap" --state-dir "$work/state" --until-end --log-level notice \
            ${PROCESS_THREADS:+--stream-threads "$PROCESS_THREADS"} \
            --metrics-port "${METRICS_PORT:-0}" -X session.timeout.ms=6000 -X heartbeat.interval.ms=500 2>&1 |
            grep -E 'stopped|error' | json_fields)
        echo "$line userCPUSeconds=$(tail -1 "$work/time")"
    }
    # Records a topic received and records it still holds, summed over its partitions: its end
    # offsets, and end minus start offsets. On the dev broker an offset is a record (it writes no
    # transaction markers), but it keeps only the newest 5 MiB of each partition, so the oldest
    # outputs of a large run are gone by the end.
    offsets() {
        local args=() p
        for ((p = 0; p < 32; p++)); do args+=(-t "$1:$p:$2"); done
        kcat -Q -b "$bootstrap" "${args[@]}" | awk '{ s += $NF } END { print s }'
    }
    received() { offsets "$1" -1; }
    held() { echo $(($(offsets "$1" -1) - $(offsets "$1" -2))); }
    local processed restored outputs held_outputs dead changelog held_changelog audited="" audit_rate=0
    processed=$(process)
    if [[ "${AUDIT:-}" == continuous ]]; then
        local auditor counts
        auditor=$(/usr/bin/time -o "$work/time" -f '%U %M' "$bin" audit --bootstrap-servers "$bootstrap" --state-dir "$work/audit-state" \
            --until-end --settle 10m --log-level notice ${AUDIT_THREADS:+--stream-threads "$AUDIT_THREADS"} --metrics-port "${METRICS_PORT:-0}" -X session.timeout.ms=6000 -X heartbeat.interval.ms=500 2>&1 |
            grep -vE 'AUDIT-(INPUT|OUTPUT)' | grep -E 'stopped|error|^inputs ' | json_fields | sed -E 's/^[^ ]+ [a-z]+ polyglot.audit: //')
        rm -rf "$work/audit-state"
        counts=$(grep '^inputs ' <<<"$auditor") || fail "the auditor failed: $auditor"
        [[ "$counts" == "inputs $records, outputs $valid, deadLetters $rejected, missing 0, duplicate 0, orphan 0, mismatch 0,"* &&
            "$counts" == *"drift 0, unreadable 0"* ]] || fail "the auditor did not match every record: $counts"
        audit_rate=$(field average_rate_per_second "$auditor")
        echo "run $run: continuous audit: $counts; $(grep stopped <<<"$auditor" | grep -oE '\b(records|processing_seconds|average_rate_per_second|commits)=[^ ]+' | tr '\n' ' ')userCPUSeconds=$(tail -1 "$work/time" | cut -d' ' -f1) peakMemoryMiB=$(( $(tail -1 "$work/time" | cut -d' ' -f2) / 1024 ))" >&2
    elif [[ -n "${AUDIT:-}" ]]; then
        audited=$(/usr/bin/time -o "$work/audit-time" -f '%M' "$bin" audit --once --bootstrap-servers "$bootstrap" 2>&1 >/dev/null | grep '^audit:') ||
            fail "audit --once reported discrepancies or failed: ${audited:-no summary}"
        audit_rate=$(sed -E 's/.*\(([0-9]+) records\/s\).*/\1/' <<<"$audited")
        echo "run $run: $audited, peak memory $(( $(tail -1 "$work/audit-time") / 1024 )) MiB" >&2
    fi
    outputs=$(received enriched-transactions)
    held_outputs=$(held enriched-transactions)
    dead=$(received financial-transactions.dlq)
    changelog=$(received fraud-detector-processor-windows-changelog)
    held_changelog=$(held fraud-detector-processor-windows-changelog)
    rm -rf "$work/state"
    restored=$(process)
    kill -TERM "$broker" 2>/dev/null; wait "$broker" 2>/dev/null || true
    trap - EXIT
    echo "run $run: processing $records records: $processed" >&2
    echo "run $run: restore from the changelog (state directory deleted): $restored" >&2
    [[ "$(field aborts "$processed")" == 0 ]] || fail "a transaction aborted: the dev broker keeps aborted records, so the counts cannot be checked"
    [[ "$(field outputs "$processed")" == "$valid" && "$outputs" == "$valid" ]] ||
        fail "expected $valid outputs, the processor counted $(field outputs "$processed") and the output topic received $outputs"
    [[ "$(field dead_letters "$processed")" == "$rejected" && "$dead" == "$rejected" ]] ||
        fail "expected $rejected dead letters, the processor counted $(field dead_letters "$processed") and the topic received $dead"
    [[ "$held_changelog" == "$changelog" ]] ||
        fail "the dev broker dropped $((changelog - held_changelog)) of $changelog changelog records (5 MiB per partition): the restore cannot be checked"
    [[ "$(field restored_records "$restored")" == "$changelog" ]] ||
        fail "the first run wrote $changelog changelog records, the restore read $(field restored_records "$restored")"
    echo "run $run: checked: $outputs outputs (the dev broker still holds the newest $held_outputs), $dead dead letters," \
        "$changelog changelog records written and all of them restored" >&2
    echo "$(field average_rate_per_second "$processed") $(field restore_rate_per_second "$restored") $(field processing_seconds "$processed") $(field userCPUSeconds "$processed") $audit_rate"
}

results=()
for ((i = 1; i <= runs; i++)); do results+=("$(one_run "$i")"); done
printf '%s\n' "${results[@]}" > "$work/rates"
stat() { echo "median $(cut -d' ' -f"$1" "$work/rates" | median), min $(cut -d' ' -f"$1" "$work/rates" | sort -n | head -1), max $(cut -d' ' -f"$1" "$work/rates" | sort -n | tail -1)"; }
echo "records/s (over processing_seconds) over $runs runs: $(stat 1)"
echo "restore changelog records/s: $(stat 2)"
echo "processing_seconds: $(stat 3); process user CPU seconds: $(stat 4)"
if [[ "${AUDIT:-}" == continuous ]]; then
    echo "continuous audit records/s (over its processing_seconds): $(stat 5)"
    # Each run's auditor rate over the processor's rate in that run, so a busy moment of the
    # machine moves both sides of a ratio.
    awk '{ printf "%.2f\n", $5 / $1 }' "$work/rates" > "$work/ratios"
    echo "continuous audit / process records/s, per run: median $(median < "$work/ratios"), min $(sort -n "$work/ratios" | head -1), max $(sort -n "$work/ratios" | tail -1)"
elif [[ -n "${AUDIT:-}" ]]; then echo "audit --once audited records/s: $(stat 5)"; fi
