"""tests/gpu/run.sh fits a lent GPU machine: it takes the gzipped binary, reads its
fixtures from the repository (tests/gpu/prepare.sh), refuses more ranks than GPUs,
keeps one deadline, and leaves one archive. Checked here with a fake nvidia-smi and a
fake s3-train (no GPU runs in CI)."""

import gzip
import os
import pathlib
import subprocess
import tarfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests/gpu/run.sh"

FAKE_TRAIN = """#!/bin/sh
case "$1" in
  --version) echo "s3-train fake-for-the-test" ;;
  info) echo "libnccl: 2.21.5 (libnccl.so.2)" ;;
  *) echo "unexpected: $*" >&2; exit 3 ;;
esac
"""


def fake_tools(tmp, gpus):
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    lines = "".join(f"GPU {i}: NVIDIA H100 (UUID: GPU-{i})\\n" for i in range(gpus))
    smi.write_text(f'#!/bin/sh\nprintf "{lines}"\n')
    smi.chmod(0o755)
    train = tmp / "s3-train.gz"
    train.write_bytes(gzip.compress(FAKE_TRAIN.encode()))
    return bin_dir, train


def run(tmp, *args, **env):
    full = dict(os.environ, OUT=str(tmp / "out"), **env)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=full, capture_output=True, encoding="utf-8")


def test_the_script_parses_and_says_how_to_use_it(tmp_path):
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    out = run(tmp_path, "--help")
    assert out.returncode == 0 and "--ranks N" in out.stdout and "BUDGET" in out.stdout, out.stdout


def test_the_all_reduce_is_verified_on_any_number_of_gpus():
    text = SCRIPT.read_text(encoding="utf-8")
    step = text.split("# --- 5.")[1].split("# --- 6.")[0]
    assert "--verify" in step, "the device pointers are checked before the timing"
    assert "gpus\" -gt 1" not in step, "one GPU is checked too: --verify reduces out of place"


def test_more_ranks_than_gpus_is_refused(tmp_path):
    bin_dir, train = fake_tools(tmp_path, gpus=1)
    out = run(tmp_path, "--ranks", "2", S3_TRAIN_BIN=str(train), PATH=f"{bin_dir}:{os.environ['PATH']}")
    assert out.returncode == 2 and "has 1 GPU(s)" in out.stderr, out.stderr


def test_the_gzipped_binary_runs_and_everything_lands_in_one_archive(tmp_path):
    # A CPU rehearsal with no time left: the binary is unpacked and asked its version and
    # libnccl, the missing fixtures are a failure, every step is skipped, the archive exists.
    _, train = fake_tools(tmp_path, gpus=0)
    out = run(tmp_path, "--ranks", "2", DEVICE="cpu", BUDGET="0", S3_TRAIN_BIN=str(train),
              S3_FIXTURES=str(tmp_path / "none"))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "s3-train fake-for-the-test" in out.stdout and "libnccl: 2.21.5 (libnccl.so.2)" in out.stdout
    assert "FAIL: no fixture" in out.stdout and "tests/gpu/prepare.sh" in out.stdout
    assert "== 3. skipped" in out.stdout and "unexpected" not in out.stdout + out.stderr
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["gpu-check.tar.gz", "summary.txt"], files
    with tarfile.open(tmp_path / "out/gpu-check.tar.gz") as t:
        assert "gpu-check/summary.txt" in t.getnames()
