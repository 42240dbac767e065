#!/usr/bin/env bash
# Installs the Debian packages polyglot builds and runs with, when they are missing.
# Usage: scripts/install-deps.sh [--ci]   (--ci adds the tools the test suite validates with)
set -euo pipefail

packages=(librdkafka-dev libsqlite3-dev libjemalloc-dev pkg-config)
if [[ "${1:-}" == "--ci" ]]; then
    # Offline validation of the machine image (packer, systemd, shellcheck, cloud-init),
    # the local bake (debootstrap), and kcat for comparing against librdkafka alone.
    packages+=(packer shellcheck cloud-init debootstrap systemd systemd-container kcat time)
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    sudo=""
    [[ "$(id -u)" == 0 ]] || sudo="sudo"
    echo "Installing: ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ "${1:-}" == "--ci" ]]; then
    # The Packer template is parsed with python-hcl2, for the python3 on PATH.
    python3 -c 'import hcl2' 2>/dev/null || python3 -m pip install --quiet python-hcl2
fi
