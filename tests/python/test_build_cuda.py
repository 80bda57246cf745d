"""trainer/scripts/build-cuda.sh works on a fresh machine: it fetches the crates
before reading them offline (`cargo metadata --offline` fails where none are
downloaded yet), and pins the CUDA driver API bindings (12.6) that run on every
12.x and newer driver. A logging `cargo` in front of the real one records the calls;
STUB_ONLY=1 stops after the LLVM stub (seconds)."""

import os
import pathlib
import shutil
import stat
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("cargo") is None or shutil.which("cc") is None, reason="needs cargo and cc")
def test_the_build_fetches_first_and_pins_the_cuda_bindings(tmp_path):
    real = shutil.which("cargo")
    log = tmp_path / "calls.log"
    fake = tmp_path / "bin" / "cargo"
    fake.parent.mkdir()
    # `fetch` is recorded, not run (the crates are here already; no network in tests).
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$* CUDARC_CUDA_VERSION=${{CUDARC_CUDA_VERSION:-unset}}" >> {log}\n'
        '[ "$1" = fetch ] && exit 0\n'
        f'exec {real} "$@"\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, PATH=f"{fake.parent}:{os.environ['PATH']}", STUB_ONLY="1")
    env.pop("CUDARC_CUDA_VERSION", None)
    env.pop("CARGO_NET_OFFLINE", None)
    out = subprocess.run(
        ["bash", "trainer/scripts/build-cuda.sh"], cwd=ROOT, env=env, capture_output=True, encoding="utf-8"
    )
    assert out.returncode == 0, out.stdout + out.stderr
    calls = log.read_text(encoding="utf-8").splitlines()
    assert calls[0].startswith("fetch --locked"), calls
    assert any(c.startswith("metadata") for c in calls[1:]), calls
    assert all(c.endswith("CUDARC_CUDA_VERSION=12060") for c in calls), calls
    assert "stub functions" in out.stdout
