"""The benchmarks catalogue (manifests/benchmarks.toml), unchanged, against miniatures
of the 16 evaluation sets' official downloads (tests/python/benchmark_layouts.py):
`catalog --check` finds 15 (cSeg22's layout is unpublished: unreadable, said so), an
ingest with only SAM3D_RAW set writes every case as split `test`, and the four sets
cut from a training download take exactly the cases the training catalogue holds out."""

import json
import os
import pathlib

import pyarrow.parquet as pq
import pytest
import xxhash

import benchmark_layouts

ROOT = pathlib.Path(__file__).resolve().parents[2]
INGEST = os.environ.get("S3_INGEST_BIN", str(ROOT / "target" / "debug" / "s3-ingest"))
BENCHMARKS = ROOT / "manifests" / "benchmarks.toml"
TRAINING = ROOT / "manifests" / "datasets.toml"


def run(args, raw):
    import subprocess

    env = {**os.environ, "SAM3D_RAW": str(raw)}
    env.pop("SAM3D_OUT", None)
    return subprocess.run([INGEST, *args], capture_output=True, encoding="utf-8", env=env)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return benchmark_layouts.write_all(tmp_path_factory.mktemp("raw"))


@pytest.fixture(scope="module")
def ingested(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "shards"
    r = run(["--manifest", str(BENCHMARKS), "--out", str(out), "--strict", "--jobs", "2"], raw)
    assert r.returncode == 0, r.stdout + r.stderr
    return out


def fates(out, name):
    m = json.loads((out / "labels" / f"{name}.json").read_text(encoding="utf-8"))
    return {(task, case): f for task, cases in m["cases"].items() for case, f in cases.items()}


def test_catalog_check_finds_every_published_layout(raw):
    r = run(["catalog", "--manifest", str(BENCHMARKS), "--check", str(raw), "--json"], raw)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert len({row["dataset"] for row in rows}) == 16
    ok = {row["dataset"] for row in rows if row["status"] == "ok"}
    assert ok == set(benchmark_layouts.WRITERS), rows
    for row in rows:
        if row["dataset"] in ok:
            assert row["status"] == "ok" and row["cases"] > 0 and row["labelled"] == row["cases"], row
    (cseg,) = [row for row in rows if row["dataset"] == "cSeg22"]
    assert cseg["status"] == "unreadable" and "not published" in cseg["problem"], cseg


def test_every_case_is_a_test_case_from_fifteen_downloads(ingested):
    index = json.loads((ingested / "index.json").read_text(encoding="utf-8"))
    assert {s["dataset"] for s in index["shards"]} == set(benchmark_layouts.WRITERS)
    table = pq.read_table(ingested / "samples.parquet").to_pydict()
    assert set(table["split"]) == {"test"}, "an evaluation catalogue's cases are never train or val"
    # Each ingested case records its image's voxel digest, the leakage check's fingerprint.
    for name in benchmark_layouts.WRITERS:
        for key, fate in fates(ingested, name).items():
            if fate["fate"] == "ingested":
                assert fate["image_xxh3"] and all(len(d) == 16 for d in fate["image_xxh3"]), (name, key, fate)


def test_sets_cut_from_training_downloads_take_the_training_catalogues_held_out_cases(ingested):
    kits = fates(ingested, "KiTS21-Val")
    assert kits[("default", "00210")]["fate"] == "ingested"
    assert kits[("default", "00001")]["fate"] == "skipped"
    assert "not in the evaluation set" in kits[("default", "00001")]["reason"]
    ts = fates(ingested, "Totalseg-Test")
    assert ts[("default", "s0002")]["fate"] == "ingested"
    assert {f["fate"] for k, f in ts.items() if k != ("default", "s0002")} == {"skipped"}
    amos = fates(ingested, "AMOS-Val")
    assert {k for k, f in amos.items() if f["fate"] == "ingested"} == {("ct", "amos_0008"), ("mr", "amos_0540")}
    # BraTS21-Val: the case with the smallest xxh3 of "BraTS21/<case>", as the training
    # catalogue's held_out (hashed under the training name, not "BraTS21-Val").
    brats = fates(ingested, "BraTS21-Val")
    cases = [c for (_, c) in brats]
    assert len(cases) == benchmark_layouts.BRATS21_CASES
    chosen = min(cases, key=lambda c: xxhash.xxh3_64_intdigest(f"BraTS21/{c}".encode()))
    assert {c for (_, c), f in brats.items() if f["fate"] == "ingested"} == {chosen}


def test_format_and_label_quirks(ingested):
    values = lambda name: sorted(
        c["value"]
        for c in json.loads((ingested / "labels" / f"{name}.json").read_text(encoding="utf-8"))["classes"]
        if c["samples"] > 0
    )
    assert values("iSeg17") == [1, 2, 3], "Analyze labels stored as 10/150/250"
    assert values("iSeg19") == [1, 2, 3]
    hanseg = fates(ingested, "HaN-Seg")
    # case_02 has no thyroid mask: the organ is absent there, the case still counts.
    assert hanseg[("default", "case_02")] == {**hanseg[("default", "case_02")], "fate": "ingested", "samples": 3 * 1}
    assert hanseg[("default", "case_01")]["samples"] == 4
    # A `.seg.nrrd` is a label, not a case; a Rider folder named "R1 (AD)" holds R1.
    assert set(fates(ingested, "SEG.A.2023")) == {("default", c) for c in ("D1", "K1", "R1")}
    assert set(fates(ingested, "FeTA21")) == {("default", "sub-001"), ("default", "sub-002")}
    assert set(fates(ingested, "FeTA22")) == {("default", "sub-001"), ("default", "sub-101")}, "Vienna's folder"
    tdsc = {("default", c) for c in ("Train_000", "Train_050", "Validation_100")}
    assert set(fates(ingested, "TDSC-ABUS")) == tdsc, "Train's images in two sub-folders"
    assert len(fates(ingested, "MRBrains18")) == 2 and len(fates(ingested, "iSeg17")) == 2
