"""s3-ingest reads the NIfTI-1 and NIfTI-2 files shipped inside the nibabel, nilearn
and dipy wheels with the same shapes, affines and voxel values as nibabel, a 4-D file
as one volume per channel; the ones it cannot use (CIFTI, 5-D) are refused with a
clear reason."""

import json
import os
import pathlib
import subprocess
import zipfile

import nibabel as nib
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("S3_INGEST_BIN", str(ROOT / "target" / "debug" / "s3-ingest"))
WHEELS = pathlib.Path(os.environ.get("S3_TEST_WHEELS", ROOT / ".venv" / "wheels"))


def nifti_files():
    wheels = sorted(WHEELS.glob("*.whl"))
    names = {w.name.split("-")[0] for w in wheels}
    assert {"nibabel", "nilearn", "dipy"} <= names, f"tests/run downloads the wheels into {WHEELS}: {names}"
    out = []
    for w in wheels:
        with zipfile.ZipFile(w) as z:
            for n in z.namelist():
                if n.endswith((".nii", ".nii.gz")):
                    out.append((w, n))
    return out


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    d = tmp_path_factory.mktemp("wheels")
    files = []
    for wheel, name in nifti_files():
        with zipfile.ZipFile(wheel) as z:
            files.append(pathlib.Path(z.extract(name, d)))
    return files


def inspect(path, dump):
    return subprocess.run([BIN, "inspect", str(path), "--dump-f64", str(dump)], capture_output=True, text=True)


def test_every_wheel_file_reads_like_nibabel(extracted, tmp_path):
    compared = refused = nifti2 = four_d = 0
    for path in extracted:
        img = nib.load(path)
        dump = tmp_path / "values.f64"
        r = inspect(path, dump)
        shape = img.shape
        if isinstance(img, nib.Cifti2Image) or (len(shape) > 4 and any(s > 1 for s in shape[4:])):
            assert r.returncode == 2, (path, r.stderr)
            refused += 1
            continue
        assert r.returncode == 0, (path, r.stderr)
        info = json.loads(r.stdout)
        assert info["shape"] == list(shape[:3]), path
        channels = shape[3] if len(shape) > 3 else 1
        assert info["channels"] == channels, path
        np.testing.assert_allclose(np.array(info["affine"]), img.affine, rtol=0, atol=1e-6, err_msg=str(path))
        ours = np.fromfile(dump, dtype="<f8")
        theirs = np.asarray(img.get_fdata(), dtype=np.float64).reshape(-1, order="F")
        assert ours.shape == theirs.shape, path
        assert np.array_equal(ours, theirs, equal_nan=True), (path, np.abs(ours - theirs).max())
        compared += 1
        nifti2 += isinstance(img, nib.Nifti2Image)
        four_d += channels > 1
    assert compared >= 15 and nifti2 >= 1 and four_d >= 2, (compared, nifti2, four_d, refused)
