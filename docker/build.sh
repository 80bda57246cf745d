#!/usr/bin/env bash
# Builds the images: sam3d-ingest:dev and sam3d-trainer:dev-cpu (dev-cuda with
# --variant cuda).
#   docker/build.sh [--base IMAGE] [--builder IMAGE] [--prebuilt DIR] [--engine podman|docker]
#                   [--variant cpu|cuda] [--only ingest|trainer] [--version V]
# --base     runtime base image (default debian:bookworm-slim; docker/make-base.sh makes
#            sam3d-base:bookworm offline)
# --builder  Rust builder image (default rust:1.95-slim-bookworm)
# --prebuilt copy s3-* binaries from DIR (e.g. target/release) instead of compiling
#            in the builder stage
set -euo pipefail
cd "$(dirname "$0")/.."
engine=podman base=debian:bookworm-slim builder=rust:1.95-slim-bookworm prebuilt="" variant=cpu only="" version=""
while [ $# -gt 0 ]; do
  case "$1" in
    --base) base=$2; shift 2 ;;
    --builder) builder=$2; shift 2 ;;
    --prebuilt) prebuilt=$2; shift 2 ;;
    --engine) engine=$2; shift 2 ;;
    --variant) variant=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --version) version=$2; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (--help)" >&2; exit 2 ;;
  esac
done
case "$variant" in cpu|cuda) ;; *) echo "--variant cpu or cuda" >&2; exit 2 ;; esac
command -v "$engine" >/dev/null || { echo "$engine not found (--engine podman|docker)" >&2; exit 2; }
if [ "$engine" = podman ]; then
  export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/docker/containers.conf}
fi
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
version=${version:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)}
binaries=builder
rm -rf docker/.prebuilt
if [ -n "$prebuilt" ]; then
  binaries=prebuilt
  mkdir -p docker/.prebuilt
  for b in s3-ingest s3-shards s3-orch s3-train; do
    [ -x "$prebuilt/$b" ] || { echo "$prebuilt/$b missing (cargo build --release --bins)" >&2; exit 2; }
    cp "$prebuilt/$b" docker/.prebuilt/
  done
  trap 'rm -rf docker/.prebuilt' EXIT
fi
build() {
  local name=$1 tag=$2
  echo "== $engine build $tag ($binaries binaries, base $base)"
  "$engine" build --quiet -f "docker/$name/Dockerfile" -t "$tag" \
    --build-arg BASE="$base" --build-arg BUILDER="$builder" --build-arg BINARIES="$binaries" \
    --build-arg VARIANT="$variant" --build-arg VERSION="$version" --build-arg COMMIT="$commit" . >/dev/null
}
[ "$only" = trainer ] || build ingest sam3d-ingest:dev
[ "$only" = ingest ] || build trainer "sam3d-trainer:dev-$variant"
