#!/bin/bash
# Bakes the polyglot machine image locally and tests it, with no cloud account:
#
#   1. debootstrap a Debian 12 (bookworm) root filesystem, cached as a tarball
#      so later runs start in seconds;
#   2. copy in the release binary and the files of this folder, and run the
#      SAME provision.sh that Packer runs, in a chroot;
#   3. inside the chroot, run `polyglot replay` on the shared vectors and
#      compare with the expected outputs byte for byte, run
#      `polyglot image verify`, and check that a changed fingerprint is caught;
#   4. with --boot, add systemd to the root filesystem, boot it in a container
#      (systemd-nspawn) and run polyglot@process.service, its sandbox and its
#      `image verify` ExecStartPre as on EC2, with ExecStart replaced by a
#      replay of the `basic` vector, and compare that output too.
#
# Usage, as root (debootstrap, chroot and mount need it):
#   image/bake-local.sh [--binary PATH] [--vectors DIR] [--cache DIR]
#                       [--mirror URL] [--refresh] [--boot] [--keep]
#
#   --binary   release binary (default: .build-release/release/polyglot), built with
#              swift build -c release --static-swift-stdlib --scratch-path .build-release
#   --vectors  folder of NAME.in.jsonl / NAME.out.jsonl / NAME.dlq.jsonl and the
#              README.md table of replay flags (default: ../shared/vectors,
#              beside the repository)
#   --cache    where the base root filesystem is kept
#              (default: ${XDG_CACHE_HOME:-$HOME/.cache}/polyglot-bake)
#   --mirror   Debian mirror (default: POLYGLOT_DEBIAN_MIRROR, else the first
#              Debian mirror in this machine's apt sources)
#   --refresh  debootstrap again even when the cache holds a root filesystem
#   --boot     also boot the image under systemd (needs systemd-nspawn, from
#              Debian's systemd-container)
#   --keep     keep the baked root filesystem (its path is printed)
set -euo pipefail

readonly suite=bookworm
image_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
readonly image_dir
repo_root=$(dirname -- "${image_dir}")
readonly repo_root

binary=${repo_root}/.build-release/release/polyglot
vectors=${repo_root}/../shared/vectors
cache=${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/polyglot-bake
mirror=${POLYGLOT_DEBIAN_MIRROR:-}
refresh=false
boot=false
keep=false

die() {
  echo "bake-local: $*" >&2
  exit 1
}

log() {
  printf 'bake-local [%4ss]: %s\n' "${SECONDS}" "$*"
}

usage() {
  sed -n '/^# Usage/,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

while (($# > 0)); do
  case $1 in
    --binary) binary=${2:?--binary needs a path}; shift 2 ;;
    --vectors) vectors=${2:?--vectors needs a folder}; shift 2 ;;
    --cache) cache=${2:?--cache needs a folder}; shift 2 ;;
    --mirror) mirror=${2:?--mirror needs a URL}; shift 2 ;;
    --refresh) refresh=true; shift ;;
    --boot) boot=true; shift ;;
    --keep) keep=true; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

# The first Debian archive (not security) in the apt sources, one-line or deb822.
detect_mirror() {
  local file uri
  for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [[ -f ${file} ]] || continue
    uri=$(grep -hoE '^(URIs:[[:space:]]*|deb[[:space:]]+(\[[^]]*\][[:space:]]+)?)https?://[^[:space:]]+/debian/?([[:space:]]|$)' "${file}" |
      grep -oE 'https?://[^[:space:]]+' | head -n 1 || true)
    if [[ -n ${uri} ]]; then
      echo "${uri%/}"
      return 0
    fi
  done
  return 1
}

[[ $(id -u) -eq 0 ]] || die "run as root: debootstrap, chroot and mount need it"
for tool in debootstrap chroot mount umount tar sha256sum cmp diff; do
  command -v "${tool}" >/dev/null || die "${tool} is missing (apt-get install debootstrap diffutils)"
done
[[ -x ${binary} ]] || die "no binary at ${binary}: build it with swift build -c release --static-swift-stdlib --scratch-path .build-release"
binary=$(readlink -f -- "${binary}")
if ldd "${binary}" 2>/dev/null | grep -q 'libswiftCore'; then
  die "${binary} links the Swift runtime dynamically: build it with --static-swift-stdlib"
fi
[[ -d ${vectors} ]] || die "no vectors folder at ${vectors} (pass --vectors)"
vectors=$(readlink -f -- "${vectors}")
[[ -f ${vectors}/README.md ]] || die "no ${vectors}/README.md with the replay flags of each case"
if [[ ${boot} == true ]]; then
  command -v systemd-nspawn >/dev/null || die "--boot needs systemd-nspawn (apt-get install systemd-container)"
  [[ -f ${vectors}/basic.in.jsonl && -f ${vectors}/basic.out.jsonl ]] || die "--boot replays the basic vector: none in ${vectors}"
fi
if [[ -z ${mirror} ]]; then
  mirror=$(detect_mirror) || die "no Debian mirror in the apt sources: pass --mirror URL"
fi
arch=$(dpkg --print-architecture)

work=$(mktemp -d "${TMPDIR:-/tmp}/polyglot-bake.XXXXXX")
rootfs=${work}/rootfs

# Mount points under the root filesystem, deepest first.
mounts_under_rootfs() {
  awk -v root="${rootfs}" '$2 == root || index($2, root "/") == 1 { print $2 }' /proc/self/mounts | sort -r
}

cleanup() {
  local status=$? mount_point
  while read -r mount_point; do
    [[ -n ${mount_point} ]] || continue
    umount -- "${mount_point}" 2>/dev/null || umount --lazy -- "${mount_point}" || true
  done < <(mounts_under_rootfs)
  if [[ -n $(mounts_under_rootfs) ]]; then
    echo "bake-local: ${rootfs} still has mounts; not deleting ${work}" >&2
  elif [[ ${keep} == true ]]; then
    echo "bake-local: kept the baked root filesystem at ${rootfs}"
  else
    rm -rf -- "${work}"
  fi
  exit "${status}"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

in_chroot() {
  chroot "${rootfs}" /usr/bin/env -i \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 "$@"
}

# 1. Base root filesystem: debootstrap once, then unpack the cached tarball.
base_tarball=${cache}/debian-12-${suite}-minbase-${arch}.tar.gz
if [[ ${refresh} == true || ! -f ${base_tarball} ]]; then
  log "debootstrap ${suite} (${arch}, minbase) from ${mirror}"
  mkdir -p -- "${cache}" "${work}/base"
  debootstrap --variant=minbase --arch="${arch}" "${suite}" "${work}/base" "${mirror}" >"${work}/debootstrap.log" 2>&1 ||
    {
      tail -n 30 "${work}/debootstrap.log" >&2
      die "debootstrap failed"
    }
  tar --numeric-owner -C "${work}/base" -czf "${base_tarball}.partial" .
  mv -f -- "${base_tarball}.partial" "${base_tarball}"
  rm -rf -- "${work}/base"
fi
log "unpacking ${base_tarball}"
mkdir -p -- "${rootfs}"
tar --numeric-owner -C "${rootfs}" -xzpf "${base_tarball}"

# What the chroot needs that a booted machine has: /proc (the fingerprint hashes
# /proc/self/exe), name resolution for apt, and no service starts from packages.
mount -t proc proc "${rootfs}/proc"
if [[ -e /etc/resolv.conf ]]; then
  cp -L -- /etc/resolv.conf "${rootfs}/etc/resolv.conf"
fi
printf '#!/bin/sh\nexit 101\n' >"${rootfs}/usr/sbin/policy-rc.d"
chmod 0755 "${rootfs}/usr/sbin/policy-rc.d"

# 2. Provision, exactly as the Packer template does: files in
#    /tmp/polyglot-image, then provision.sh with the expected sha256.
binary_sha256=$(sha256sum -- "${binary}" | cut -d' ' -f1)
staging=${rootfs}/tmp/polyglot-image
install -d -m 0700 -- "${staging}"
install -m 0755 -- "${binary}" "${staging}/polyglot"
install -m 0644 -- "${image_dir}/polyglot@.service" "${image_dir}/polyglot.env" "${staging}/"
install -m 0755 -- "${image_dir}/provision.sh" "${image_dir}/fetch-secrets.sh" "${staging}/"
log "running provision.sh in the chroot (binary sha256 ${binary_sha256})"
in_chroot POLYGLOT_BINARY_SHA256="${binary_sha256}" bash /tmp/polyglot-image/provision.sh /tmp/polyglot-image
rm -rf -- "${staging}"

# 3. Check what was installed.
failures=0
fail() {
  echo "bake-local: FAIL: $*" >&2
  failures=$((failures + 1))
}
installed_sha256=$(sha256sum -- "${rootfs}/usr/local/bin/polyglot" | cut -d' ' -f1)
[[ ${installed_sha256} == "${binary_sha256}" ]] || fail "installed binary has sha256 ${installed_sha256}"
cmp -s -- "${image_dir}/polyglot@.service" "${rootfs}/etc/systemd/system/polyglot@.service" ||
  fail "installed unit differs from image/polyglot@.service"
[[ $(stat -c %a -- "${rootfs}/etc/polyglot/polyglot.env") == 600 ]] || fail "polyglot.env is not mode 0600"
cmp -s -- "${image_dir}/fetch-secrets.sh" "${rootfs}/usr/local/bin/polyglot-fetch-secrets" ||
  fail "installed secrets fetch differs from image/fetch-secrets.sh"
# With no source file (no user data here) it fetches nothing and succeeds: the booted unit
# below runs it as its first ExecStartPre.
in_chroot /usr/local/bin/polyglot-fetch-secrets process >/dev/null || fail "polyglot-fetch-secrets fails without a secrets path"
[[ -s ${rootfs}/etc/polyglot/fingerprint.json ]] || fail "no fingerprint at /etc/polyglot/fingerprint.json"
held=$(in_chroot apt-mark showhold | tr '\n' ' ')
[[ ${held} == *librdkafka1* && ${held} == *libsqlite3-0* && ${held} == *libc6* ]] ||
  fail "runtime packages are not held: ${held}"

log "polyglot image verify in the chroot"
in_chroot polyglot image verify || fail "polyglot image verify failed on the freshly baked root"

# A fingerprint whose glibc differs must stop the service from starting.
sed 's/"glibc":"[^"]*"/"glibc":"0.0-drifted"/' "${rootfs}/etc/polyglot/fingerprint.json" >"${rootfs}/tmp/drifted.json"
set +e
drift_report=$(in_chroot polyglot image verify --fingerprint /tmp/drifted.json 2>&1)
drift_status=$?
set -e
if [[ ${drift_status} -ne 1 || ${drift_report} != *'glibc: baked "0.0-drifted"'* ]]; then
  fail "verify did not report a drifted glibc (exit ${drift_status}): ${drift_report}"
fi

# 4. Replay every shared vector inside the chroot: every folder under the vectors that holds a
#    README.md (subfolders included), each case with the flags of its folder's table.
# Compare line and code only; the other members are free text.
dlq_codes() {
  sed -E 's/^\{ *"line": *([0-9]+), *"error": *"([a-z_0-9]+)".*$/\1 \2/' -- "$1"
}
cases=0
while IFS= read -r -d '' readme; do
  dir=$(dirname -- "${readme}")
  rel=${dir#"${vectors}"}
  rel=${rel#/}
  declare -A case_flags=()
  while IFS= read -r line; do
    if [[ ${line} =~ ^\|[[:space:]]*([A-Za-z0-9_-]+)[[:space:]]*\|[[:space:]]*(.*[^[:space:]])[[:space:]]*\|[[:space:]]*$ ]]; then
      name=${BASH_REMATCH[1]}
      flags=${BASH_REMATCH[2]//\`/}
      [[ ${name} == case ]] && continue
      [[ ${flags} == "(defaults)" ]] && flags=""
      case_flags[${name}]=${flags}
    fi
  done <"${readme}"

  mkdir -p -- "${rootfs}/tmp/vectors/${rel}" "${rootfs}/tmp/replay/${rel}"
  for input in "${dir}"/*.in.jsonl; do
    [[ -e ${input} ]] || continue
    name=$(basename -- "${input}" .in.jsonl)
    label=${rel:+${rel}/}${name}
    if [[ ! -v case_flags[${name}] ]]; then
      fail "${label}: no row in ${readme} gives its replay flags"
      continue
    fi
    cp -- "${input}" "${rootfs}/tmp/vectors/${label}.in.jsonl"
    read -r -a flags <<<"${case_flags[${name}]}"
    log "replay ${label} ${flags[*]}"
    if ! in_chroot polyglot replay "/tmp/vectors/${label}.in.jsonl" -o "/tmp/replay/${label}.out.jsonl" \
      --dlq "/tmp/replay/${label}.dlq.jsonl" --no-progress "${flags[@]}" 2>"${work}/${name}.replay.log"; then
      cat "${work}/${name}.replay.log" >&2
      fail "${label}: replay exited non-zero"
      continue
    fi
    cases=$((cases + 1))
    if ! cmp -- "${dir}/${name}.out.jsonl" "${rootfs}/tmp/replay/${label}.out.jsonl"; then
      diff -u -- "${dir}/${name}.out.jsonl" "${rootfs}/tmp/replay/${label}.out.jsonl" | head -n 20 >&2 || true
      fail "${label}: output differs from ${name}.out.jsonl"
    fi
    if [[ -f ${dir}/${name}.dlq.jsonl ]]; then
      if ! diff -u <(dlq_codes "${dir}/${name}.dlq.jsonl") <(dlq_codes "${rootfs}/tmp/replay/${label}.dlq.jsonl") >&2; then
        fail "${label}: dead letters differ from ${name}.dlq.jsonl"
      fi
    fi
  done
  unset case_flags
done < <(find "${vectors}" -name README.md -print0 | sort -z)
((cases > 0)) || fail "no vector was replayed"

# 5. Boot: the unit as written, under a real systemd, in a container.
booted=""
if [[ ${boot} == true ]]; then
  log "installing systemd into the root filesystem to boot it"
  if ! {
    in_chroot apt-get update -q &&
      in_chroot env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        systemd systemd-sysv dbus
  } >"${work}/boot-apt.log" 2>&1; then
    tail -n 30 "${work}/boot-apt.log" >&2
    die "could not install systemd to boot the image"
  fi
  umount -- "${rootfs}/proc"
  rm -f -- "${rootfs}/usr/sbin/policy-rc.d"
  install -d -m 0755 -- "${rootfs}/usr/share/polyglot-bake"
  install -m 0644 -- "${vectors}/basic.in.jsonl" "${rootfs}/usr/share/polyglot-bake/"
  dropin=${rootfs}/etc/systemd/system/polyglot@process.service.d
  install -d -m 0755 -- "${dropin}"
  cat >"${dropin}/bake.conf" <<'UNIT'
[Service]
ExecStart=
ExecStart=/usr/local/bin/polyglot replay /usr/share/polyglot-bake/basic.in.jsonl -o %S/polyglot/%i/out.jsonl --no-progress
UNIT
  cat >"${rootfs}/etc/systemd/system/bake-report.service" <<'UNIT'
[Unit]
Description=Report polyglot@process.service to the local bake, then power off
After=polyglot@process.service
Requires=polyglot@process.service

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'systemctl show -p Result -p ExecMainStatus polyglot@process.service >/root/bake-report; systemd-analyze security --no-pager polyglot@process.service | tail -n 1 >>/root/bake-report; journalctl -b --no-pager -o cat -u polyglot@process.service >/root/bake-journal'
ExecStartPost=/bin/systemctl --no-block poweroff

[Install]
WantedBy=multi-user.target
UNIT
  in_chroot systemctl enable polyglot@process.service bake-report.service >/dev/null 2>&1
  log "booting the image with systemd-nspawn"
  if ! timeout 180 systemd-nspawn --quiet --directory="${rootfs}" --boot --register=no --keep-unit \
    --private-network >"${work}/boot.log" 2>&1; then
    tail -n 30 "${work}/boot.log" >&2
    fail "the booted image did not power off cleanly"
  fi
  report=$(cat -- "${rootfs}/root/bake-report" 2>/dev/null || true)
  [[ ${report} == *Result=success* && ${report} == *ExecMainStatus=0* ]] ||
    fail "polyglot@process.service did not succeed in the booted image: ${report:-no report}"
  grep -q 'polyglot image verify: the environment matches' -- "${rootfs}/root/bake-journal" 2>/dev/null ||
    fail "the unit's ExecStartPre did not verify the fingerprint"
  grep -q 'polyglot-fetch-secrets: no secrets path' -- "${rootfs}/root/bake-journal" 2>/dev/null ||
    fail "the unit's ExecStartPre did not run the secrets fetch"
  if ! cmp -- "${vectors}/basic.out.jsonl" "${rootfs}/var/lib/private/polyglot/process/out.jsonl"; then
    fail "basic: output of the booted unit differs from basic.out.jsonl"
  fi
  exposure=$(grep -oE 'exposure level for [^:]+: [0-9.]+' <<<"${report}" | grep -oE '[0-9.]+$' || true)
  if [[ -z ${exposure} ]] || ! awk -v e="${exposure}" 'BEGIN { exit !(e <= 3.0) }'; then
    fail "exposure of polyglot@process.service is ${exposure:-unknown}, above 3.0"
  fi
  if ((failures > 0)); then
    cat -- "${rootfs}/root/bake-journal" >&2 2>/dev/null || true
  fi
  booted=", booted under systemd (exposure ${exposure:-unknown})"
fi

if ((failures > 0)); then
  die "${failures} check(s) failed after ${SECONDS}s"
fi
log "OK: provisioned, verified, drift caught, ${cases} vector(s) byte-identical${booted} in ${SECONDS}s"
