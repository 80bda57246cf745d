"""The container images of docker/, built with podman by docker/build.sh from binaries
built on the host (no second Rust build), on a base made offline from the Debian
mirror (docker/make-base.sh), then run with no network: the ingest image ingests a
phantom corpus into a mounted folder that s3-shards on the host verifies, and the CPU
trainer image passes the reference fixture."""

import json
import os
import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BINARIES = pathlib.Path(os.environ.get("S3_BIN_DIR", ROOT / "target" / "debug"))
SHARDS = os.environ.get("S3_SHARDS_BIN", str(BINARIES / "s3-shards"))
FIXTURE = ROOT.parent / "shared" / "fixtures" / "model"
BASE = "localhost/sam3d-base:bookworm"
ENV = {**os.environ, "CONTAINERS_CONF": str(ROOT / "docker" / "containers.conf")}


def podman(*args, **kw):
    # UTF-8 whatever the locale: a C or POSIX locale would decode it as ASCII and fail.
    return subprocess.run(["podman", *args], env=ENV, capture_output=True, encoding="utf-8", errors="replace", **kw)


@pytest.fixture(scope="module")
def images():
    assert shutil.which("podman"), "podman not found: tests/run installs it as root (apt-get install podman runc)"
    subprocess.run([str(ROOT / "docker" / "make-base.sh")], env=ENV, check=True)
    subprocess.run(
        [str(ROOT / "docker" / "build.sh"), "--base", BASE, "--prebuilt", str(BINARIES)], env=ENV, check=True
    )
    return {"ingest": "sam3d-ingest:dev", "trainer": "sam3d-trainer:dev-cpu"}


def run(image, *args, mounts=()):
    cmd = ["run", "--rm", "--network", "none"]
    for host, guest, mode in mounts:
        cmd += ["-v", f"{host}:{guest}:{mode}"]
    return podman(*cmd, image, *args)


def test_help_with_no_arguments_non_root_and_labelled(images):
    for name, image in images.items():
        out = run(image)
        assert out.returncode == 0, out.stderr
        assert "Usage:" in out.stdout, out.stdout
        info = json.loads(podman("image", "inspect", image).stdout)[0]
        config = info["Config"]
        assert config["User"] == "10001", config
        labels = config["Labels"]
        assert labels["org.opencontainers.image.version"] == "0.1.0"
        assert re.fullmatch(r"[0-9a-f]{7,}|unknown", labels["org.opencontainers.image.revision"]), labels
        assert not any(k.startswith("AWS_") for k in (config.get("Env") or [])), config["Env"]


def test_no_credentials_or_data_in_any_layer(images):
    # The environment of the build carries test credentials: none may end up in an image.
    for image in images.values():
        history = podman("history", "--no-trunc", "--format", "{{.CreatedBy}}", image).stdout
        assert "AWS_SECRET_ACCESS_KEY" not in history and "test-secret" not in history, history
        listing = run(image, "--help")
        assert listing.returncode == 0
    out = podman("run", "--rm", "--network", "none", "--entrypoint", "/bin/sh", images["ingest"], "-c",
                 "ls /home/sam3d /usr/local/bin; find / -xdev -name '*.nii*' -o -xdev -name '*.parquet' | head")
    assert out.returncode == 0, out.stderr
    assert ".nii" not in out.stdout and ".parquet" not in out.stdout, out.stdout
    assert "s3-ingest" in out.stdout and "s3-shards" in out.stdout and "s3-orch" in out.stdout, out.stdout


def test_the_ingest_image_ingests_into_a_mounted_folder(images, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    work.chmod(0o777)  # the image's user (uid 10001) writes here
    synth = run(images["ingest"], "synth", "--out", "/work/raw", "--cases", "2", mounts=[(work, "/work", "rw")])
    assert synth.returncode == 0, synth.stderr
    ingest = run(images["ingest"], "--manifest", "/work/raw/datasets.toml", "--out", "/work/store", "--jobs", "2",
                 mounts=[(work, "/work", "rw")])
    assert ingest.returncode == 0, ingest.stderr
    verify = subprocess.run([SHARDS, "verify", str(work / "store")], capture_output=True, encoding="utf-8")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    m = re.search(r"(\d+) samples ok, .* 0 problem", verify.stdout)
    assert m and int(m.group(1)) > 0, verify.stdout


def test_the_cpu_trainer_image_passes_the_reference_fixture(images):
    info = run(images["trainer"], "info", "--preset", "tiny")
    assert info.returncode == 0 and "total trainable" in info.stdout, info.stdout + info.stderr
    check = run(images["trainer"], "check-fixture", "/fixtures/sam3d_tiny", mounts=[(FIXTURE, "/fixtures", "ro")])
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_cuda_dockerfile_parses_and_its_stages_resolve():
    # The CUDA base cannot be pulled here: check what the builder would resolve.
    text = (ROOT / "docker" / "trainer" / "Dockerfile").read_text(encoding="utf-8")
    global_args = {}
    stages = set()
    seen_from = False
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word == "ARG" and not seen_from:
            name, _, default = rest.partition("=")
            global_args[name] = default
        if word == "FROM":
            seen_from = True
            parts = rest.split()
            ref = re.sub(r"\$\{(\w+)\}", lambda m: global_args.get(m.group(1), "?"), parts[0])
            assert "?" not in ref, f"FROM {parts[0]}: undefined build argument"
            if ref.startswith("bin-"):
                assert ref in stages, f"FROM {ref}: no such stage"
            if len(parts) == 3 and parts[1].upper() == "AS":
                stages.add(parts[2])
        if word == "COPY" and "--from=" in rest:
            src = rest.split("--from=")[1].split()[0]
            assert src in stages, f"COPY --from={src}: no such stage"
    for binaries in ("builder", "prebuilt"):
        assert f"bin-{binaries}" in stages
    assert "VARIANT" in global_args and "trainer/scripts/build-cuda.sh" in text


def test_the_cuda_variant_builds_offline_and_checks_what_nvrtc_and_nccl_need():
    """The cuda image: its builder uses the offline recipe (build-cuda.sh), and its
    runtime stage installs and then checks the CUDA headers cubecl's NVRTC kernels
    include and libnccl.so.2, so a missing one fails the image build, not a rank."""
    text = (ROOT / "docker" / "trainer" / "Dockerfile").read_text(encoding="utf-8")
    builder = text.split("FROM ${BUILDER} AS bin-builder")[1].split("FROM ")[0]
    assert "trainer/scripts/build-cuda.sh" in builder and '"$VARIANT" = cuda' in builder
    runtime = text.rsplit("FROM ${BASE}\n", 1)[1]
    for header in ("cuda_fp16.h", "cuda_bf16.h", "mma.h"):
        assert header in runtime, header
    assert "libnccl\\.so\\.2" in runtime and "libnccl2" in text
    assert "ENV CUDA_PATH=/usr/local/cuda" in runtime
    # The script the builder runs is the one that works on a fresh clone.
    script = (ROOT / "trainer" / "scripts" / "build-cuda.sh").read_text(encoding="utf-8")
    assert "cargo fetch --locked" in script and "CUDARC_CUDA_VERSION" in script


def test_the_cuda_runtime_check_fails_without_the_headers(tmp_path):
    """The check itself, run here against an empty CUDA folder: it must refuse."""
    text = (ROOT / "docker" / "trainer" / "Dockerfile").read_text(encoding="utf-8")
    check = text.split("for h in cuda_fp16.h")[1].split("done")[0]
    script = "for h in cuda_fp16.h" + check + "done"
    script = script.replace("\\\n", "\n").replace("/usr/local/cuda", str(tmp_path))
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert r.returncode != 0 and "cuda_fp16.h" in r.stderr, r.stderr
    (tmp_path / "include").mkdir()
    for h in ("cuda_fp16.h", "cuda_bf16.h", "mma.h"):
        (tmp_path / "include" / h).write_text("")
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
