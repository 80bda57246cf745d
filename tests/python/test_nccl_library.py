"""A GPU rank opens libnccl by the name NCCL ships under (libnccl.so.2: the libnccl2
package, the CUDA runtime images, pip's nvidia-nccl wheels), which cudarc's own loader
never tries. A fake libnccl.so.2 exposing ncclGetVersion stands in for NCCL here;
`s3-train info` says which libnccl this process would load, in every build."""

import os
import shutil
import subprocess

import pytest

BIN = os.environ.get("S3_TRAIN_BIN", "target/debug/s3-train")


def info(env):
    return subprocess.run([BIN, "info", "--preset", "tiny"], env=env, capture_output=True, encoding="utf-8")


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
def test_libnccl_so_2_is_found_by_its_shipped_name(tmp_path):
    src = tmp_path / "nccl.c"
    src.write_text("int ncclGetVersion(int *v) { *v = 22105; return 0; }\n")
    lib = tmp_path / "libnccl.so.2"  # the runtime package's name only: no libnccl.so link
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    env = dict(os.environ, LD_LIBRARY_PATH=f"{tmp_path}:{os.environ.get('LD_LIBRARY_PATH', '')}")
    env.pop("S3_NCCL_LIBRARY", None)
    out = info(env)
    assert out.returncode == 0, out.stderr
    assert "libnccl: 2.21.5 (libnccl.so.2)" in out.stdout, out.stdout

    # A file named outright wins over the search path.
    other = tmp_path / "elsewhere" / "nccl-custom.so"
    other.parent.mkdir()
    src.write_text("int ncclGetVersion(int *v) { *v = 22304; return 0; }\n")
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(other), str(src)], check=True)
    out = info(dict(env, S3_NCCL_LIBRARY=str(other)))
    assert f"libnccl: 2.23.4 ({other})" in out.stdout, out.stdout


def test_no_libnccl_is_said_not_fatal_for_info(tmp_path):
    env = dict(os.environ, S3_NCCL_LIBRARY=str(tmp_path / "missing.so"))
    out = info(env)
    assert out.returncode == 0, out.stderr
    assert "libnccl: none" in out.stdout and "S3_NCCL_LIBRARY" in out.stdout, out.stdout
