/// `provision.sh`: installs polyglot into the machine it runs on, or into the root of the chroot
/// it runs in. Packer runs it on the build instance and `image/bake-local.sh` in a chroot.
enum ProvisionScript {
    /// Debian packages the binary needs at run time (a `--static-swift-stdlib` build still links
    /// glibc, libstdc++, librdkafka and SQLite dynamically).
    /// `awscli` reads the Kafka secrets from SSM Parameter Store at every start.
    static let runtimePackages = ["librdkafka1", "libsqlite3-0", "libjemalloc2", "libstdc++6", "ca-certificates", "awscli"]

    static func render(_ options: ImageOptions) -> String {
        let install = options.installPath
        let fingerprint = EnvironmentFingerprint.defaultPath
        let fetchSecrets = SecretsScript.installPath(options)
        return #"""
        #!/bin/bash
        # \#(ImageRenderer.banner(options))
        #
        # Installs polyglot on this machine: runtime packages, the binary (after
        # checking its sha256), the secrets fetch, the systemd unit, the environment
        # file and the fingerprint that `polyglot image verify` checks at every start.
        #
        # Usage, as root:
        #   POLYGLOT_BINARY_SHA256=<hex> provision.sh [SOURCE_DIR]
        # SOURCE_DIR (default: this script's folder) holds `polyglot`,
        # `fetch-secrets.sh`, `polyglot@.service` and `polyglot.env`. The same script runs on the Packer
        # build instance, by hand, and in a chroot (the local bake); /proc must be
        # mounted. Running it again is safe. No role is enabled here: each Auto
        # Scaling Group's user data enables its own.
        set -euo pipefail

        readonly install_path=\#(install)
        readonly fetch_secrets_path=\#(fetchSecrets)
        readonly config_dir=/etc/polyglot
        readonly fingerprint_path=\#(fingerprint)
        readonly unit_path=/etc/systemd/system/polyglot@.service
        readonly audit_dropin_path=/etc/systemd/system/polyglot@audit.service.d/verdict.conf
        readonly runtime_packages=(\#(runtimePackages.joined(separator: " ")))

        die() {
          echo "provision.sh: $*" >&2
          exit 1
        }

        log() {
          echo "provision.sh: $*"
        }

        sha256_of() {
          sha256sum -- "$1" | cut -d' ' -f1
        }

        # True when running under a chroot: the root differs from PID 1's root.
        in_chroot() {
          if command -v systemd-detect-virt >/dev/null 2>&1; then
            systemd-detect-virt --quiet --chroot
            return
          fi
          [[ "$(stat -c %d:%i /)" != "$(stat -c %d:%i /proc/1/root/. 2>/dev/null || echo none)" ]]
        }

        # True when systemd manages this machine (not in a chroot, not during an
        # install without an init).
        systemd_running() {
          [[ -d /run/systemd/system ]] && ! in_chroot
        }

        expected_sha256=${POLYGLOT_BINARY_SHA256:-}
        [[ "$expected_sha256" =~ ^[0-9a-f]{64}$ ]] ||
          die "set POLYGLOT_BINARY_SHA256 to the binary's sha256 (64 lowercase hex digits)"
        source_dir=${1:-$(dirname -- "$(readlink -f -- "$0")")}
        for file in polyglot fetch-secrets.sh polyglot@.service polyglot.env; do
          [[ -f "$source_dir/$file" ]] || die "missing $source_dir/$file"
        done
        actual_sha256=$(sha256_of "$source_dir/polyglot")
        [[ "$actual_sha256" == "$expected_sha256" ]] ||
          die "$source_dir/polyglot has sha256 $actual_sha256, expected $expected_sha256"
        [[ "$(id -u)" -eq 0 ]] || die "run as root"
        [[ -e /proc/self/exe ]] || die "/proc is not mounted (the fingerprint hashes /proc/self/exe)"

        log "installing runtime packages: ${runtime_packages[*]}"
        export DEBIAN_FRONTEND=noninteractive
        # Re-provisioning is a new bake: let the held packages move, then hold them again.
        apt-mark unhold libc6 librdkafka1 libsqlite3-0 >/dev/null 2>&1 || true
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${runtime_packages[@]}"
        # The fingerprint records glibc, librdkafka and SQLite: an unattended
        # upgrade of one would make `polyglot image verify` refuse to start the
        # service, so they change only with a new image.
        apt-mark hold libc6 librdkafka1 libsqlite3-0 >/dev/null
        apt-get clean
        rm -rf /var/lib/apt/lists/*

        log "installing the binary to $install_path"
        install -d -m 0755 "$(dirname -- "$install_path")"
        install -m 0755 -o root -g root -- "$source_dir/polyglot" "$install_path.new"
        [[ "$(sha256_of "$install_path.new")" == "$expected_sha256" ]] ||
          die "$install_path.new does not match the expected sha256 after copying"
        mv -f -- "$install_path.new" "$install_path"
        if ldd "$install_path" | grep -q 'not found'; then
          ldd "$install_path" >&2
          die "$install_path misses shared libraries"
        fi

        log "installing the secrets fetch to $fetch_secrets_path"
        install -m 0755 -o root -g root -- "$source_dir/fetch-secrets.sh" "$fetch_secrets_path"

        log "installing the unit and the environment file"
        install -d -m 0755 "$(dirname -- "$unit_path")" "$config_dir"
        install -m 0644 -o root -g root -- "$source_dir/polyglot@.service" "$unit_path"
        # The auditor exits 1 when the run it stops found discrepancies: a verdict (already
        # on its findings topic), not a failure. Only for the audit instance: process exits
        # 1 when it fails.
        install -d -m 0755 "$(dirname -- "$audit_dropin_path")"
        printf '%s\n' '[Service]' 'SuccessExitStatus=1' >"$audit_dropin_path.new"
        chmod 0644 "$audit_dropin_path.new"
        mv -f -- "$audit_dropin_path.new" "$audit_dropin_path"
        # Root only: it may carry credentials (SASL passwords); systemd reads it as root.
        install -m 0600 -o root -g root -- "$source_dir/polyglot.env" "$config_dir/polyglot.env"

        log "writing the fingerprint to $fingerprint_path"
        "$install_path" image fingerprint >"$fingerprint_path.new"
        chmod 0644 "$fingerprint_path.new"
        mv -f -- "$fingerprint_path.new" "$fingerprint_path"
        "$install_path" image verify --fingerprint "$fingerprint_path"

        if systemd_running; then
          systemctl daemon-reload
        else
          log "no running systemd (chroot or image build): skipping daemon-reload"
        fi
        log "done: $("$install_path" --version | head -n 1), fingerprint $("$install_path" image fingerprint --digest)"

        """#
    }
}
