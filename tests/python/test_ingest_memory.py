"""Peak memory of one ingest job on a 512×512×1000 int16 CT stays under 2 GiB."""

import os
import pathlib
import resource
import shutil
import subprocess

import nibabel as nib
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("S3_INGEST_BIN", str(ROOT / "target" / "debug" / "s3-ingest"))


def test_large_ct_peak_rss_under_2_gib(tmp_path):
    ds = tmp_path / "BigCT"
    (ds / "imagesTr").mkdir(parents=True)
    (ds / "labelsTr").mkdir()
    shape = (512, 512, 1000)
    affine = np.diag([-0.7, -0.7, 1.0, 1.0])
    image = np.full(shape, -1000, dtype=np.int16)
    image[96:416, 96:416, :] = 40
    label = np.zeros(shape, dtype=np.uint8)
    label[200:300, 220:320, 400:520] = 1
    label[300:340, 150:200, 600:640] = 2
    # Uncompressed .nii so the test spends its time in the ingest, not in gzip.
    nib.save(nib.Nifti1Image(image, affine), ds / "imagesTr" / "big_0000.nii")
    nib.save(nib.Nifti1Image(label, affine), ds / "labelsTr" / "big.nii")
    del image, label
    (ds / "dataset.json").write_text('{"labels": {"0": "background", "1": "liver", "2": "spleen"}}')
    manifest = tmp_path / "datasets.toml"
    manifest.write_text(
        f'[[datasets]]\nname = "BigCT"\nmodality = "CT"\npretrain = true\nfinetune = true\n'
        f'[[datasets.tasks]]\nname = "default"\nlayout = "nnunet"\nsource = "{ds}"\n'
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    try:
        r = subprocess.run([BIN, "--manifest", str(manifest), "--out", str(tmp_path / "out"), "-j", "1", "--strict"],
                           capture_output=True, text=True)
    finally:
        # 750 MB of source that pytest would keep for three runs.
        shutil.rmtree(ds)
    assert r.returncode == 0, r.stdout + r.stderr
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert peak_kib > before, "the child's peak is measured"
    print(f"peak RSS of s3-ingest -j 1 on a 512x512x1000 int16 CT: {peak_kib / 1024:.0f} MiB")
    assert peak_kib < 2 * 1024 * 1024, f"{peak_kib / 1024:.0f} MiB"
    total = next(line for line in r.stdout.splitlines() if line.startswith("TOTAL"))
    assert "published" in r.stdout and " 2 " in total
