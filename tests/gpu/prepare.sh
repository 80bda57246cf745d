#!/usr/bin/env bash
# Copies the reference fixtures tests/gpu/run.sh checks against (sam3d_tiny: 6.7 MB)
# from ../shared into tests/gpu/fixtures/ (git-ignored), so that they travel with the
# repository to a GPU machine that has no ../shared.
set -euo pipefail
cd "$(dirname "$0")/../.."
src="${S3_FIXTURES_SRC:-../shared/fixtures/model}"
[ -f "$src/sam3d_tiny.json" ] || { echo "no fixtures at $src (set S3_FIXTURES_SRC)" >&2; exit 2; }
mkdir -p tests/gpu/fixtures
cp "$src"/sam3d_tiny.* tests/gpu/fixtures/
echo "tests/gpu/fixtures: $(du -sh tests/gpu/fixtures | cut -f1) — carry it with target/cuda-dist/s3-train.gz"
