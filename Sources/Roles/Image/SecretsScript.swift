/// `fetch-secrets.sh`: reads the Kafka secrets of one role from SSM Parameter Store through the
/// instance profile and writes them where the unit reads them, before every start.
///
/// Secrets never pass through user data: user data names only the region and the parameter
/// path, and the values live in a root-only file under /run (memory, gone at shutdown).
enum SecretsScript {
    /// Where provision.sh installs the script: beside the binary.
    static func installPath(_ options: ImageOptions) -> String {
        let binary = options.installPath
        let folder = binary.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        return (folder.isEmpty ? "" : folder) + "/polyglot-fetch-secrets"
    }

    /// Written by each role's user data: which region and path to read.
    static let sourceFile = "/etc/polyglot/kafka-secrets.conf"
    /// Written by the script, read by the unit after every other environment file.
    static func environmentFile(role: String) -> String { "/run/polyglot/\(role)-secrets.env" }
    static let environmentFileTemplate = "/run/polyglot/%i-secrets.env"

    static func render(_ options: ImageOptions) -> String {
        #"""
        #!/bin/bash
        # \#(ImageRenderer.banner(options))
        #
        # Fetches the Kafka secrets of one polyglot role before it starts; the unit
        # runs it as root (ExecStartPre=+), then reads what it wrote.
        #
        # Usage: polyglot-fetch-secrets ROLE
        # Reads AWS_REGION and PARAMETER_PATH from \#(sourceFile)
        # (written by the Auto Scaling group's user data). Every parameter directly
        # under the path is one librdkafka property, named by its last path component
        # (e.g. <path>/sasl.password, a SecureString, and <path>/sasl.username,
        # <path>/security.protocol, <path>/sasl.mechanisms); together they become
        # POLYGLOT_KAFKA_PROPERTIES in /run/polyglot/ROLE-secrets.env (mode 0600),
        # which overrides the one in /etc/polyglot/polyglot.env. With no source file
        # or an empty path it removes that file and fetches nothing. On any failure
        # it exits 1 and the unit retries the whole start; values are never printed.
        # SECRETS_SOURCE_FILE and SECRETS_OUTPUT_DIR move the source file and
        # the output folder (for tests); the aws command honours AWS_ENDPOINT_URL.
        set -euo pipefail

        readonly source_file=${SECRETS_SOURCE_FILE:-\#(sourceFile)}
        readonly out_dir=${SECRETS_OUTPUT_DIR:-/run/polyglot}

        die() {
          echo "polyglot-fetch-secrets: $*" >&2
          exit 1
        }

        role=${1:-}
        [[ "$role" =~ ^[a-z]+$ ]] || die "usage: polyglot-fetch-secrets ROLE (process or audit)"
        out=$out_dir/$role-secrets.env

        region=""
        path=""
        if [[ -f "$source_file" ]]; then
          while IFS= read -r line || [[ -n "$line" ]]; do
            case "$line" in
              AWS_REGION=*) region=${line#AWS_REGION=} ;;
              PARAMETER_PATH=*) path=${line#PARAMETER_PATH=} ;;
            esac
          done <"$source_file"
        fi
        if [[ -z "$path" ]]; then
          rm -f -- "$out"
          echo "polyglot-fetch-secrets: no secrets path in $source_file: none fetched"
          exit 0
        fi
        [[ "$path" =~ \#(ImageOptions.Pattern.secretsParameterPath) ]] || die "PARAMETER_PATH $path is not an SSM parameter path"
        [[ "$region" =~ \#(ImageOptions.Pattern.region) ]] || die "AWS_REGION ${region:-(unset)} in $source_file is not a region"
        command -v aws >/dev/null || die "the aws command is missing (Debian package awscli)"

        install -d -m 0700 -- "$out_dir"
        umask 077
        scratch=$(mktemp -d)
        trap 'rm -rf -- "$scratch"' EXIT
        if ! aws ssm get-parameters-by-path --region "$region" --path "$path" \
          --with-decryption --no-recursive --output json >"$scratch/parameters.json" 2>"$scratch/error"; then
          die "cannot read $path in $region from SSM Parameter Store: $(tail -n 1 -- "$scratch/error")"
        fi
        python3 - "$path" "$scratch/parameters.json" "$out.new" <<'PYTHON'
        import json, re, sys

        path, source, target = sys.argv[1:]
        parameters = json.load(open(source))["Parameters"]
        pairs = []
        for parameter in sorted(parameters, key=lambda p: p["Name"]):
            name = parameter["Name"][len(path) + 1:]
            value = parameter["Value"]
            if not re.fullmatch(r"[a-z][a-z0-9._]*", name):
                sys.exit(f"polyglot-fetch-secrets: {parameter['Name']}: not a librdkafka property name")
            if "\n" in value or "\r" in value:
                sys.exit(f"polyglot-fetch-secrets: {parameter['Name']}: a value cannot span lines")
            pairs.append((name, value))
        properties = ";".join(f"{name}={value}" for name, value in pairs)
        # systemd's EnvironmentFile= quoting: inside double quotes only \ and " need escaping.
        quoted = properties.replace("\\", "\\\\").replace('"', '\\"')
        with open(target, "w") as f:
            f.write(f'POLYGLOT_KAFKA_PROPERTIES="{quoted}"\n' if pairs else "")
        print("polyglot-fetch-secrets: read " + (", ".join(n for n, _ in pairs) or "no parameter") + f" under {path}")
        PYTHON
        chmod 0600 -- "$out.new"
        mv -f -- "$out.new" "$out"

        """#
    }
}
