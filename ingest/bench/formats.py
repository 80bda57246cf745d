"""Ingest time per image format, side by side in one run: the same CT cases written by
SimpleITK as .nii.gz (the reference), .mha, .mhd + .zraw, .nrrd (gzip) and a DICOM
series (one file per slice), each ingested by the same s3-ingest binary pinned to
one core. Prints seconds per format and the ratio to .nii.gz; never asserts.

    cargo build --release -p s3-ingest
    .venv/bin/python ingest/bench/formats.py [--cases 3] [--slices 300] [--bin target/release/s3-ingest]

The issue's targets: MetaImage and NRRD within 1.2x of .nii.gz, a 300-slice DICOM
series within 2x.
"""

import argparse
import pathlib
import shutil
import subprocess
import tempfile
import time

import numpy as np
import SimpleITK as sitk

ROOT = pathlib.Path(__file__).resolve().parents[2]

ap = argparse.ArgumentParser()
ap.add_argument("--cases", type=int, default=3)
ap.add_argument("--slices", type=int, default=300)
ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "s3-ingest"))
ap.add_argument("--dir", default=str(pathlib.Path(tempfile.gettempdir()) / "s3-ingest-formats-bench"))
args = ap.parse_args()

root = pathlib.Path(args.dir)
spacing, origin = (0.7, 0.7, 1.0), (-180.0, -180.0, -150.0)
formats = {"nii": ".nii.gz", "mha": ".mha", "mhd_zraw": ".mhd", "nrrd_gzip": ".nrrd", "dicom": None}


def case_volume(c):
    rng = np.random.default_rng(c)
    z, y, x = np.ogrid[: args.slices, :512, :512]
    body = ((x - 256) / 230.0) ** 2 + ((y - 256) / 180.0) ** 2 < 1
    organ = ((x - 196) / 70.0) ** 2 + ((y - 256) / 50.0) ** 2 + ((z - args.slices / 2) / 60.0) ** 2 < 1
    image = np.where(organ, 60, np.where(body, -40, -1000)).astype(np.int16)
    image += rng.integers(-20, 21, image.shape, dtype=np.int16)
    return image, organ.astype(np.uint8)


def sitk_image(array_zyx):
    img = sitk.GetImageFromArray(array_zyx)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    return img


def write_dicom(img, folder):
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for i in range(img.GetDepth()):
        s = img[:, :, i]
        s.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.77")
        s.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        s.SetMetaData("0020|0032", "\\".join(map(str, img.TransformIndexToPhysicalPoint((0, 0, i)))))
        s.SetMetaData("0020|0013", str(i + 1))
        writer.SetFileName(str(folder / f"{i:04d}.dcm"))
        writer.Execute(s)


stamp = root / f".done-{args.cases}-{args.slices}"
if not stamp.exists():
    shutil.rmtree(root, ignore_errors=True)
    for c in range(args.cases):
        image, label = case_volume(c)
        img, lab = sitk_image(image), sitk_image(label)
        for name, ext in formats.items():
            d = root / name
            (d / "labels").mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(lab, str(d / "labels" / f"ct{c}.nii.gz"), True)
            if ext is None:
                write_dicom(img, d / "images" / f"ct{c}")
            else:
                (d / "images").mkdir(exist_ok=True)
                sitk.WriteImage(img, str(d / "images" / f"ct{c}{ext}"), True)
        print(f"wrote case {c + 1}/{args.cases}", flush=True)
    stamp.touch()

times = {}
for name, ext in formats.items():
    glob = "images/{case}/" if ext is None else f"images/*{ext}"
    catalogue = root / f"{name}.toml"
    catalogue.write_text(
        f'[[datasets]]\nname = "Bench_{name}"\nmodality = "CT"\npretrain = true\nfinetune = false\n'
        f'[[datasets.tasks]]\nname = "default"\nlayout = "pairs"\nsource = "{root / name}"\n'
        f'image_glob = "{glob}"\nlabel_template = "labels/{{case}}.nii.gz"\n'
    )
    out = root / f"out-{name}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run(
        ["taskset", "-c", "0", args.bin, "--manifest", str(catalogue), "--out", str(out), "--jobs", "1"],
        check=True,
        capture_output=True,
    )
    times[name] = time.perf_counter() - start

print(f"\n{args.cases} CT cases of 512x512x{args.slices} int16, one job on core 0, label .nii.gz for all")
for name, t in times.items():
    print(f"{name:10s} {t:7.2f} s   {t / times['nii']:.2f}x .nii.gz")
