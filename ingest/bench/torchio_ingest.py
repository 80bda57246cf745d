"""The same preprocessing with torchio, on the files `cargo bench -p s3-ingest --bench ingest`
writes (default $TMPDIR/s3-ingest-bench/BenchCT): Resample(1.5) → ToCanonical() →
CropOrPad(128, mask) per label value, CT clamp. Run by hand:

    pip install torchio nibabel
    python ingest/bench/torchio_ingest.py [/tmp/s3-ingest-bench/BenchCT]

Prints volumes/s and input MB/s for one process, to set beside the Rust figures.
"""

import pathlib
import sys
import tempfile
import time

import numpy as np
import torchio as tio

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(tempfile.gettempdir()) / "s3-ingest-bench" / "BenchCT")
images = sorted((root / "imagesTr").glob("*_0000.nii.gz"))
start = time.perf_counter()
mb = samples = 0
for img_path in images:
    case = img_path.name[: -len("_0000.nii.gz")]
    lab_path = root / "labelsTr" / f"{case}.nii.gz"
    mb += (img_path.stat().st_size + lab_path.stat().st_size) / 1e6
    subject = tio.Subject(image=tio.ScalarImage(img_path), label=tio.LabelMap(lab_path))
    subject = tio.ToCanonical()(tio.Resample(1.5)(subject))
    label = subject["label"].data
    for value in [int(v) for v in np.unique(label.numpy()) if v > 0]:
        s = tio.Subject(image=subject["image"], mask=tio.LabelMap(tensor=(label == value).to(label.dtype), affine=subject["label"].affine))
        out = tio.CropOrPad(128, mask_name="mask")(s)
        out["image"].set_data(out["image"].data.clamp(-1000, 1000))
        samples += 1
elapsed = time.perf_counter() - start
print(f"torchio: {len(images) / elapsed:.2f} volumes/s  {mb / elapsed:.1f} MB/s input  ({samples} samples)")
