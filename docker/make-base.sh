#!/usr/bin/env bash
# Makes the base image `sam3d-base:bookworm` offline from the Debian mirror this
# machine's apt uses (no registry needed): debootstrap --variant=minbase, then
# podman import. For machines that cannot pull debian:bookworm-slim.
#   docker/make-base.sh [--mirror URL] [--tag TAG]
set -euo pipefail
cd "$(dirname "$0")/.."
tag=sam3d-base:bookworm
mirror=""
while [ $# -gt 0 ]; do
  case "$1" in
    --mirror) mirror=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
engine=${ENGINE:-podman}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/docker/containers.conf}
if "$engine" image exists "$tag" 2>/dev/null; then
  echo "$tag exists"; exit 0
fi
if [ -z "$mirror" ]; then
  # The first Debian archive (not security, not a third-party repository) apt uses.
  mirror=$( { grep -rhoE '^(URIs:|deb) +https?://[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null || true; } \
    | awk '{print $2}' | grep -E '/debian/?$' | head -n1 || true)
fi
[ -n "$mirror" ] || { echo "no Debian mirror found in the apt sources; pass --mirror URL" >&2; exit 2; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
echo "== debootstrap bookworm from $mirror"
debootstrap --variant=minbase --include=ca-certificates bookworm "$root" "$mirror" >/dev/null
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | "$engine" import - "$tag" >/dev/null
echo "== imported $tag"
