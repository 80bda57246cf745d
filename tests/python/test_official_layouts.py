"""The shipped catalogue, unchanged, against miniatures of the 58 official downloads
(tests/python/official_layouts.py): `catalog --check` finds every dataset, and an
ingest with nothing but SAM3D_RAW and SAM3D_OUT set accounts for every case, with
samples from at least 54 datasets. Then one test per finding of the issue: four-digit
case ids, held-out evaluation cases, excluded cases, label-value maps, a folder that
matches nothing (loud, fails --strict) versus one that is absent (quiet), a layout
that matches far fewer cases than the folder has images, wrapper folders."""

import json
import os
import pathlib
import shutil
import subprocess

import pytest

import official_layouts

ROOT = pathlib.Path(__file__).resolve().parents[2]
INGEST = os.environ.get("S3_INGEST_BIN", str(ROOT / "target" / "debug" / "s3-ingest"))
CATALOGUE = ROOT / "manifests" / "datasets.toml"
UNREADABLE = {"COSMOS22", "STACOM_SLAWT"}


def run(args, raw, out=None, cwd=None):
    env = {**os.environ, "SAM3D_RAW": str(raw)}
    env.pop("SAM3D_OUT", None)
    if out is not None:
        env["SAM3D_OUT"] = str(out)
    return subprocess.run([INGEST, *args], capture_output=True, encoding="utf-8", env=env, cwd=cwd)


def check(raw, *extra):
    r = run(["catalog", "--manifest", str(CATALOGUE), "--check", str(raw), "--json", *extra], raw)
    return r, json.loads(r.stdout) if r.stdout.strip() else []


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return official_layouts.write_all(tmp_path_factory.mktemp("raw"))


@pytest.fixture(scope="module")
def ingested(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "shards"
    r = run(["--manifest", str(CATALOGUE), "--strict", "--jobs", "2"], raw, out=out)
    return r, out


def manifest(out, name):
    return json.loads((out / "labels" / f"{name}.json").read_text())


def fates(out, name):
    return {(task, case): f for task, cases in manifest(out, name)["cases"].items() for case, f in cases.items()}


def test_catalog_check_finds_every_miniature(raw):
    r, rows = check(raw)
    assert r.returncode == 0, r.stderr
    public = {row["dataset"] for row in rows if not row["dataset"].startswith("Private")}
    assert len(public) == 58
    for row in rows:
        if row["dataset"] in UNREADABLE:
            assert row["status"] == "unreadable" and row["problem"], row
        elif row["dataset"] in official_layouts.WRITERS:
            # PICAI ships a study without an expert delineation, RibFrac an unlabelled test image.
            unlabelled = 1 if row["dataset"] in ("PICAI", "RibFrac2020") else 0
            assert row["status"] == "ok" and row["cases"] > 0 and row["labelled"] == row["cases"] - unlabelled, row
    # The text form names each dataset with its count, and says what is unreadable.
    text = run(["catalog", "--manifest", str(CATALOGUE), "--check", str(raw)], raw)
    assert "KiTS19" in text.stdout and "2 unreadable as downloaded" in text.stdout, text.stdout


def test_the_shipped_catalogue_ingests_the_official_layouts(ingested):
    r, out = ingested
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"writing to {out}" in r.stderr, "no --out: the catalogue's [output] location, said aloud"
    index = json.loads((out / "index.json").read_text())
    with_samples = {s["dataset"] for s in index["shards"]}
    assert len(with_samples) >= 54, sorted(set(official_layouts.WRITERS) - with_samples)
    assert with_samples == set(official_layouts.WRITERS) - UNREADABLE
    for name in with_samples:
        for (task, case), fate in fates(out, name).items():
            assert fate["fate"] in ("ingested", "skipped"), (name, task, case, fate)
            if fate["fate"] == "skipped":
                assert fate["reason"], (name, case)
    assert "unreadable as downloaded" in r.stdout and "COSMOS22" in r.stdout


def test_findings(ingested):
    _, out = ingested
    amos = fates(out, "AMOS22")
    # Four-digit case ids are cases, not channel suffixes; MR cases are their own task.
    assert amos[("ct", "amos_0001")]["fate"] == "ingested"
    assert amos[("mr", "amos_0507")]["fate"] == "ingested"
    # The paper's evaluation sets are never trained on.
    assert amos[("ct", "amos_0008")] == {"fate": "skipped", "reason": amos[("ct", "amos_0008")]["reason"]}
    assert "AMOS-Val" in amos[("ct", "amos_0008")]["reason"]
    ts = fates(out, "Totalsegmentator")
    assert ts[("default", "s0002")]["fate"] == "skipped" and "Totalseg-Test" in ts[("default", "s0002")]["reason"]
    assert ts[("default", "s0000")]["fate"] == "ingested"
    # KiTS21's held-out cases are the ones KiTS19 never labelled: 0-209 are trained on there.
    kits = fates(out, "KiTS21")
    assert kits[("default", "00210")]["fate"] == "skipped" and "KiTS21-Val" in kits[("default", "00210")]["reason"]
    assert kits[("default", "00001")]["fate"] == "ingested"
    atm = fates(out, "ATM22")
    assert atm[("default", "ATM_164")]["fate"] == "skipped" and "exclude" in atm[("default", "ATM_164")]["reason"]
    assert fates(out, "BraTS20")[("default", "BraTS20_Training_355")]["fate"] == "ingested", "the misnamed label"
    assert fates(out, "PICAI")[("default", "10002_1000002")]["fate"] == "skipped"
    # Label-value maps: stored values → the catalogue's values.
    values = lambda name: sorted(c["value"] for c in manifest(out, name)["classes"] if c["samples"] > 0)
    assert values("ASC18") == [1]
    assert values("MMWHS") == [1, 2, 3, 7]
    assert values("LUNA16") == [1, 2, 3]
    assert values("RibFrac2020") == [1], "fracture instances are one class"
    assert values("CHAOS") == [1, 2, 3, 4]
    assert values("LAScarQS22") == [1, 2], "per-structure masks merged"
    assert values("BrainPTM") == [1, 2, 3, 4]
    classes = {c["value"]: c for c in manifest(out, "BraTS21")["classes"]}
    assert set(classes[1]["channels"]) == {"t1", "t1ce", "t2", "flair"}
    mr = [s for s in json.loads((out / "index.json").read_text())["shards"] if s["dataset"] == "MMWHS"]
    assert {s["task"] for s in mr} == {"ct", "mr"}


def copy(raw, tmp, name, dest=None):
    shutil.copytree(raw / name, tmp / (dest or name))


def ingest_one(tmp, name, *extra):
    return run(
        ["--manifest", str(CATALOGUE), "--datasets", name, "--out", str(tmp / "out"), *extra], tmp / "raw"
    )


def test_a_folder_that_matches_nothing_is_loud_and_an_absent_one_quiet(raw, tmp_path):
    # KiTS19 converted to nnU-Net layout by hand: its folder exists, the official layout is not there.
    (tmp_path / "raw" / "KiTS19" / "imagesTr").mkdir(parents=True)
    shutil.copy(raw / "KiTS19/data/case_00000/imaging.nii.gz", tmp_path / "raw/KiTS19/imagesTr/case_00000_0000.nii.gz")
    r = ingest_one(tmp_path, "KiTS19,KiTS21", "--strict")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "ERROR" in r.stdout and "data/case_{id}/imaging.nii.gz" in r.stdout, r.stdout
    assert "not present (1): KiTS21" in r.stdout, r.stdout
    assert "layout mismatch" in r.stderr
    r = ingest_one(tmp_path, "KiTS21", "--strict")
    assert r.returncode == 0, "an absent dataset is not an error"
    c, rows = check(tmp_path / "raw", "--datasets", "KiTS19,KiTS21", "--strict")
    assert c.returncode == 1 and {r["dataset"]: r["status"] for r in rows} == {"KiTS19": "mismatch", "KiTS21": "absent"}


def test_a_layout_matching_far_fewer_cases_than_images_is_an_error(raw, tmp_path):
    copy(raw, tmp_path / "raw", "LITS")
    batch = tmp_path / "raw/LITS/Training Batch 1"
    for n in range(3):  # renamed by hand: volume_N.nii matches no pattern
        shutil.copy(batch / "volume-0.nii", batch / f"volume_{n + 5}.nii")
    r = ingest_one(tmp_path, "LITS", "--strict")
    assert r.returncode == 1 and "3 image files under its folders are used by none" in r.stdout, r.stdout


@pytest.mark.parametrize("how", ["wrapper", "moved_up"])
def test_one_wrapper_folder_more_or_less(raw, tmp_path, how):
    if how == "wrapper":  # an archive unpacked into a folder of its own
        copy(raw, tmp_path / "raw" / "KiTS19", "KiTS19", dest="kits19")
    else:  # the archive's top folder left out
        shutil.copytree(raw / "MSD_Spleen" / "Task09_Spleen", tmp_path / "raw" / "MSD_Spleen")
        shutil.copytree(raw / "BraTS18" / "MICCAI_BraTS_2018_Data_Training", tmp_path / "raw" / "BraTS18")
    _, rows = check(tmp_path / "raw")
    found = {r["dataset"]: r for r in rows if r["status"] == "ok"}
    if how == "wrapper":
        assert found["KiTS19"]["cases"] == 2 and found["KiTS19"]["root"] == "kits19/"
    else:
        assert found["MSD_Spleen"]["cases"] == 2 and found["BraTS18"]["cases"] == 2, rows
