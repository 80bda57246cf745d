"""One command line across the four programs (README "Command line"): the same store
and output flags everywhere, read from the same variables and handed by `s3-orch` to
the jobs it renders; an endpoint that does not answer said in one line; `--json` that
parses; `-q` that is quiet; previews that draw what was asked."""

import json
import os
import re
import socket
import struct
import subprocess

import pytest

from programs import BINS
SHARED = ["--endpoint-url", "--region", "--allow-http", "--store-retries", "--store-timeout", "--quiet", "--verbose"]
STAGE = 'name = "stage1"\npreset = "small"\nepochs = 1\n[schedule]\nkind = "constant"\n'


def run(argv, cwd, env=None, timeout=120):
    full = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_STORE"))}
    full.update(env or {})
    return subprocess.run([BINS[argv[0]]] + argv[1:], cwd=cwd, env=full, capture_output=True, encoding="utf-8",
                          errors="replace", timeout=timeout)


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("program", sorted(BINS))
def test_every_program_takes_the_shared_flags(program, tmp_path):
    r = run([program, "--help"], tmp_path)
    assert r.returncode == 0, r.stderr
    missing = [f for f in SHARED if f not in r.stdout]
    assert not missing, f"{program} --help lacks {missing}:\n{r.stdout}"
    assert "S3_STORE_RETRIES" in r.stdout and "AWS_ENDPOINT_URL" in r.stdout, r.stdout
    some = {"s3-shards": ["ls", "x"], "s3-ingest": ["catalog"], "s3-train": ["info"],
            "s3-orch": ["status", "--runs", "x", "--run", "y"]}[program]
    r = run([program, *some, "-q", "-v"], tmp_path)
    assert r.returncode == 2 and "cannot be used with" in r.stderr, f"{program}: -q with -v is a usage error"


def unreachable_cases(tmp):
    stage = tmp / "stage1.toml"
    stage.write_text(STAGE)
    return {
        "s3-shards": ["s3-shards", "ls", "s3://bucket/x"],
        "s3-ingest": ["s3-ingest", "merge", "--out", "s3://bucket/x"],
        "s3-train": ["s3-train", "eval", "--stage", str(stage), "--data", "s3://bucket/x", "--run", "s3://bucket/run"],
        "s3-orch": ["s3-orch", "status", "--runs", "s3://bucket/runs", "--run", "r"],
    }


@pytest.mark.parametrize("program", sorted(BINS))
@pytest.mark.parametrize("by", ["flags", "variables"])
def test_an_unreachable_endpoint_is_one_line_naming_url_operation_attempts_and_os_error(program, by, tmp_path):
    port = closed_port()
    argv = unreachable_cases(tmp_path)[program]
    env = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"}
    if by == "flags":
        argv = argv[:1] + ["--endpoint-url", f"http://127.0.0.1:{port}", "--store-retries", "1",
                           "--store-timeout", "5"] + argv[1:]
    else:
        env.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", S3_STORE_RETRIES="1", S3_STORE_TIMEOUT="5")
    r = run(argv, tmp_path, env)
    assert r.returncode == 2, f"{argv}: {r.returncode}\n{r.stdout}{r.stderr}"
    errors = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: "), f"{program}: not one line:\n{r.stderr}"
    line = errors[0]
    assert f"http://127.0.0.1:{port}/bucket" in line, f"{program}: no URL: {line}"
    assert re.search(r"\b(GET|HEAD|PUT|POST|DELETE) http", line), f"{program}: no operation: {line}"
    assert "after 1 retries" in line, f"{program}: the retries asked for were not used: {line}"
    assert "os error 111" in line, f"{program}: no OS error: {line}"
    for repeat in ("error sending request", "Connection refused"):
        assert line.count(repeat) <= 1, f"{program}: a cause said twice: {line}"


def dry_run(tmp, backend, *extra):
    stages = tmp / "stages"
    stages.mkdir(exist_ok=True)
    (stages / "stage1.toml").write_text(STAGE)
    argv = ["s3-orch", *extra, "launch", "stage1", "--backend", backend, "--runs", "s3://bucket/runs", "--run", "r",
            "--data", "s3://bucket/data", "--stages", str(stages), "--dry-run"]
    if backend == "k8s":
        argv += ["--image", "img"]
    return run(argv, tmp, {"AWS_ACCESS_KEY_ID": "KEYNOTPRINTED", "AWS_SECRET_ACCESS_KEY": "SECRETNOTPRINTED"})


@pytest.mark.parametrize("backend", ["slurm", "k8s"])
def test_the_jobs_get_the_launchers_store_settings_and_never_its_keys(backend, tmp_path):
    r = dry_run(tmp_path, backend, "--endpoint-url", "http://10.9.8.7:9000", "--store-retries", "4",
                "--region", "eu-west-1")
    assert r.returncode == 0, r.stderr
    text = r.stdout
    if backend == "slurm":
        for line in ["export AWS_ENDPOINT_URL=http://10.9.8.7:9000", "export S3_STORE_RETRIES=4",
                     "export AWS_REGION=eu-west-1", "export AWS_ALLOW_HTTP=true"]:
            assert line in text, f"{line} not in the script:\n{text}"
        # The hooks read the store too: the settings are exported before the first one.
        assert text.index("export AWS_ENDPOINT_URL") < text.index("job start"), text
    else:
        for name, value in [("AWS_ENDPOINT_URL", "http://10.9.8.7:9000"), ("S3_STORE_RETRIES", "4"),
                            ("AWS_REGION", "eu-west-1")]:
            at = text.find(f'name: "{name}"')
            assert at >= 0 and f'value: "{value}"' in text[at:at + 200], f"{name} not in:\n{text}"
    assert "KEYNOTPRINTED" not in text + r.stderr and "SECRETNOTPRINTED" not in text + r.stderr
    # Defaults need no variable: a plain launch renders none of them.
    plain = dry_run(tmp_path, backend).stdout
    assert "S3_STORE_RETRIES" not in plain and "AWS_ENDPOINT_URL" not in plain, plain


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    r = run(["s3-ingest", "synth", "--out", str(tmp / "raw"), "--cases", "3"], tmp)
    assert r.returncode == 0, r.stderr
    manifest = next((tmp / "raw").glob("*.toml"))
    r = run(["s3-ingest", "-q", "--manifest", str(manifest), "--out", str(tmp / "store"), "--json"], tmp)
    assert r.returncode == 0, r.stderr
    return tmp, r


def test_ingest_json_and_quiet(store):
    tmp, r = store
    assert r.stderr.strip() == "", f"-q printed:\n{r.stderr}"
    summary = json.loads(r.stdout)
    assert summary["published"]["samples"] > 0 and summary["quarantined"] == 0, summary
    assert sum(d["samples"] for d in summary["datasets"]) == summary["published"]["samples"]
    assert {"out", "dry_run", "worker", "workers", "layout_problems"} <= summary.keys()


def test_ls_verify_and_catalog_json(store):
    tmp, ingested = store
    published = json.loads(ingested.stdout)["published"]
    ls = json.loads(run(["s3-shards", "ls", "--json", str(tmp / "store")], tmp).stdout)
    assert sum(d["samples"] for d in ls.values()) == published["samples"]
    r = run(["s3-shards", "-q", "verify", "--json", str(tmp / "store")], tmp)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr
    v = json.loads(r.stdout)
    assert v["ok"] is True and v["samples_ok"] == published["samples"] and v["problems"] == []
    # A damaged shard: exit 1 (a finding), and the JSON names it.
    shard = next((tmp / "store").rglob("*.parquet"))
    if shard.name == "samples.parquet":
        shard = [p for p in (tmp / "store").rglob("*.parquet") if p.name != "samples.parquet"][0]
    data = bytearray(shard.read_bytes())
    backup = bytes(data)
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    try:
        r = run(["s3-shards", "verify", "--json", str(tmp / "store")], tmp)
        assert r.returncode == 1, r.stderr
        v = json.loads(r.stdout)
        assert v["ok"] is False and any(shard.name in p["path"] for p in v["problems"]), v
    finally:
        shard.write_bytes(backup)
    manifest = next((tmp / "raw").glob("*.toml"))
    counts = json.loads(run(["s3-ingest", "catalog", "--manifest", str(manifest), "--json"], tmp).stdout)
    assert counts["public"] >= 1, counts
    rows = json.loads(run(["s3-ingest", "catalog", "--manifest", str(manifest), "--check", "--json"], tmp).stdout)
    assert isinstance(rows, list) and all(r["status"] == "ok" for r in rows), rows


def png_size(path):
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", head[16:24])


def test_preview_draws_a_grid_of_the_dataset_or_one_sample(store):
    tmp, _ = store
    ls = json.loads(run(["s3-shards", "ls", "--json", str(tmp / "store")], tmp).stdout)
    dataset = sorted(ls)[0]
    r = run(["s3-shards", "preview", str(tmp / "store"), "--dataset", dataset, "--n", "4", "-o", "grid.png"], tmp)
    assert r.returncode == 0, r.stderr
    assert "4 sample(s)" in r.stdout, r.stdout
    grid_w, grid_h = png_size(tmp / "grid.png")
    four = (grid_w, grid_h)
    r = run(["s3-shards", "preview", str(tmp / "store"), "--dataset", dataset, "--n", "2", "-o", "two.png"], tmp)
    assert r.returncode == 0, r.stderr
    two = png_size(tmp / "two.png")
    assert two[0] == four[0] and two[1] < four[1], f"2 columns: 4 samples are two rows, 2 one ({two} vs {four})"
    r = run(["s3-shards", "preview", str(tmp / "store"), "--dataset", "NoSuchDataset", "-o", "none.png"], tmp)
    assert r.returncode == 2 and "NoSuchDataset" in r.stderr and not (tmp / "none.png").exists(), r.stderr
    ids = run(["s3-shards", "preview", str(tmp / "store"), "--n", "1", "-o", "one.png"], tmp)
    assert ids.returncode == 0, ids.stderr
