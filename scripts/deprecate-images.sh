#!/usr/bin/env bash
# Deprecates polyglot machine images past a retention: the images this account owns tagged
# Application=polyglot (as the Packer template tags them), created more than --retention-days
# ago, except the newest --keep, whatever their age. A deprecated image still launches by id
# (a running Auto Scaling group is not affected) but drops out of listings and searches.
#
# Usage: scripts/deprecate-images.sh [--retention-days N] [--keep N] [--dry-run]
# Region and credentials as for the aws command (AWS_REGION, a profile or an instance role).
set -euo pipefail

retention_days=90
keep=3
dry_run=false

die() {
  echo "deprecate-images.sh: $*" >&2
  exit 1
}

while (($#)); do
  case "$1" in
    --retention-days) retention_days=${2:-}; shift 2 || die "--retention-days needs a value" ;;
    --keep) keep=${2:-}; shift 2 || die "--keep needs a value" ;;
    --dry-run) dry_run=true; shift ;;
    -h | --help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[[ "$retention_days" =~ ^[0-9]+$ ]] || die "--retention-days must be a whole number of days, not '$retention_days'"
[[ "$keep" =~ ^[0-9]+$ ]] || die "--keep must be a whole number, not '$keep'"
command -v aws >/dev/null || die "the aws command is missing"

now=$(date -u +%s)
cutoff=$((now - retention_days * 86400))
# EC2 refuses a deprecation time in the past; it rounds to the minute.
deprecate_at=$(date -u -d "@$((now + 120))" +%Y-%m-%dT%H:%MZ)

# One line per image, newest first: creation time, id, deprecation time (None if none).
images=$(aws ec2 describe-images --owners self --filters Name=tag:Application,Values=polyglot \
  --query 'Images[].[CreationDate,ImageId,DeprecationTime]' --output text | sort -r)

position=0
deprecated=0
while read -r created id deprecation; do
  [[ -n "${id:-}" ]] || continue
  position=$((position + 1))
  ((position > keep)) || continue
  created_at=$(date -u -d "$created" +%s) || die "$id: unreadable creation date '$created'"
  ((created_at < cutoff)) || continue
  if [[ "$deprecation" != None ]] && (($(date -u -d "$deprecation" +%s) <= now + 120)); then
    continue
  fi
  if [[ "$dry_run" == true ]]; then
    echo "deprecate-images.sh: would deprecate $id (created $created)"
  else
    aws ec2 enable-image-deprecation --image-id "$id" --deprecate-at "$deprecate_at" >/dev/null
    echo "deprecate-images.sh: deprecated $id (created $created) at $deprecate_at"
  fi
  deprecated=$((deprecated + 1))
done <<<"$images"
echo "deprecate-images.sh: $deprecated image(s) past ${retention_days} days deprecated, newest ${keep} kept"
