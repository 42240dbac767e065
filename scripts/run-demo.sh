#!/usr/bin/env bash
# Installs what is missing, builds polyglot (release) and runs `polyglot demo`: the dev broker,
# the processor and the continuous auditor in one process over generated transactions. Extra
# arguments go to the demo (`scripts/run-demo.sh --records 100000 --keep-running`).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
swift build -c release --static-swift-stdlib --scratch-path .build-release 2>&1 | grep -Ev '^\[|^Building|warning: the use of .mktemp' || true
bin=.build-release/release/polyglot
"$bin" --version
exec "$bin" demo "$@"
