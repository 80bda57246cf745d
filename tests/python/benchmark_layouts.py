"""Miniatures of the official downloads of the paper's 16 evaluation sets
(`manifests/benchmarks.toml`), as unpacked, in the spirit of official_layouts.py:
the official folder and file names and formats (NRRD with `.seg.nrrd` masks,
Analyze `.hdr`/`.img`, BIDS-style `sub-XXX/anat`), each dataset's quirks (HaN-Seg
cases without some organs' masks, iSeg's 10/150/250 label values, MRBrainS13's
second label file, MRBrainS18's `orig/` scans) and, for the four sets cut out of a
training download, that download's miniature from official_layouts.py. cSeg22 is
not generated: its layout is not published.

Run as a script to write a tree for a manual look:
    python tests/python/benchmark_layouts.py /tmp/raw
"""

import pathlib
import struct
import sys

import numpy as np

import official_layouts as ol
from official_layouts import itk, mkparent, nii, volumes

# Enough BraTS21 cases that 0.072 of them (the paper's 90 of 1251) is one case.
BRATS21_CASES = 14


def analyze(path, arr, spacing=(1.5, 1.5, 3.0), endian="<", orient=0, originator=(0, 0, 0)):
    """Analyze 7.5: `path` (.hdr) and its .img, voxels x fastest, no NIfTI magic."""
    arr = np.asarray(arr)
    code = {np.dtype(np.uint8): 2, np.dtype(np.int16): 4, np.dtype(np.int32): 8, np.dtype(np.float32): 16}[arr.dtype]
    h = bytearray(348)
    struct.pack_into(endian + "i", h, 0, 348)
    h[38] = ord("r")
    struct.pack_into(endian + "8h", h, 40, 3, *arr.shape, 1, 0, 0, 0)
    struct.pack_into(endian + "2h", h, 70, code, arr.dtype.itemsize * 8)
    struct.pack_into(endian + "8f", h, 76, 0, *spacing, 0, 0, 0, 0)
    h[252] = orient
    struct.pack_into(endian + "3h", h, 253, *originator)
    path = mkparent(path)
    path.write_bytes(bytes(h))
    data = arr.astype(arr.dtype.newbyteorder(endian)).reshape(-1, order="F").tobytes()
    path.with_suffix(".img").write_bytes(data)


def btcv(d):
    for n, case in enumerate(["0001", "0002"]):
        img, lab = volumes([1, 6, 11], seed=300 + n)
        nii(d / f"RawData/Training/img/img{case}.nii.gz", img)
        nii(d / f"RawData/Training/label/label{case}.nii.gz", lab)
    nii(d / "RawData/Testing/img/img0061.nii.gz", volumes([1], seed=309)[0])


HANSEG_ORGANS = ["Bone_Mandible", "Brainstem", "Parotid_L", "Glnd_Thyroid"]


def hanseg(d):
    # The zip's own top folder, HaN-Seg/, one level more than the catalogue's root.
    (d / "HaN-Seg").mkdir(parents=True, exist_ok=True)
    (d / "HaN-Seg/README.md").write_text("HaN-Seg\n")
    for n, case in enumerate(["case_01", "case_02"]):
        img, _ = volumes([], seed=310 + n)
        folder = d / "HaN-Seg" / "set_1" / case
        itk(folder / f"{case}_IMG_CT.nrrd", img, compress=True)
        itk(folder / f"{case}_IMG_MR_T1.nrrd", volumes([], seed=312, ct=False)[0], compress=True)
        # case_02 has no thyroid delineated: that organ is absent there, not a missing label.
        for i, organ in enumerate(HANSEG_ORGANS[: 4 - n]):
            mask = np.zeros(ol.SHAPE, np.uint8)
            x, y = ol.PLACES[i]
            mask[x : x + 14, y : y + 14, 8:15] = 1
            itk(folder / f"{case}_OAR_{organ}.seg.nrrd", mask, compress=True)


def feta(d, top, recs):
    for n, rec in enumerate(recs):
        # FeTA 2022's Vienna cases (rec-nmic, sub-101 on) come in a folder of their own.
        folder, sub = (d / "feta22_Vienna", f"sub-{100 + n}") if rec == "nmic" else (d / top, f"sub-{n + 1:03d}")
        img, lab = volumes([1, 2, 3, 4], seed=320 + n, ct=False)
        nii(folder / sub / "anat" / f"{sub}_rec-{rec}_T2w.nii.gz", img.astype(np.float32))
        nii(folder / sub / "anat" / f"{sub}_rec-{rec}_dseg.nii.gz", lab)
    (d / top / "participants.tsv").write_text("participant_id\tPathology\tGestational age\nsub-001\tNeurotypical\t27.9\n")


def iseg(d, top, testing):
    for n in (1, 2):
        t1, lab = volumes([10, 150, 250], seed=330 + n, ct=False)
        t2 = (t1 * 0.7).astype(np.int16)
        analyze(d / top / f"subject-{n}-T1.hdr", t1)
        analyze(d / top / f"subject-{n}-T2.hdr", t2)
        analyze(d / top / f"subject-{n}-label.hdr", lab.astype(np.uint8))
    # Unlabelled test subjects beside the training ones.
    analyze(d / testing / "subject-11-T1.hdr", volumes([], seed=339, ct=False)[0])


def mrbrains13(d):
    d = d / "MRBrainS13DataNii"  # the archive's top folder
    nii(d / "TestData/1/T1.nii", volumes([], seed=349, ct=False)[0])
    for n in (1, 2):
        img, lab = volumes([1, 3, 5, 6], seed=340 + n, ct=False)
        folder = d / "TrainingData" / str(n)
        for name in ("T1", "T1_IR", "T2_FLAIR"):
            nii(folder / f"{name}.nii", img)
        nii(folder / "T1_1mm.nii", img)
        nii(folder / "LabelsForTraining.nii", lab)
        nii(folder / "LabelsForTesting.nii", np.minimum(lab, 3))


def mrbrains18(d):
    for n in (1, 4):
        img, lab = volumes([1, 3, 6, 9], seed=350 + n, ct=False)
        folder = d / "training" / str(n)
        for name in ("reg_T1", "reg_IR", "FLAIR", "IR"):
            nii(folder / "pre" / f"{name}.nii.gz", img.astype(np.float32))
        nii(folder / "orig" / "reg_T1.nii.gz", img)
        nii(folder / "segm.nii.gz", lab)


def sega(d):
    # Six Rider folders carry the diagnosis after the case name.
    for collection, folder in [("Dongyang", "D1"), ("KiTS", "K1"), ("Rider", "R1 (AD)")]:
        case = folder.split(" ")[0]
        img, lab = volumes([1], seed=360 + len(case + collection))
        itk(d / collection / folder / f"{case}.nrrd", img)
        itk(d / collection / folder / f"{case}.seg.nrrd", lab)


def atlas23(d):
    for n in (0, 1):
        img, lab = volumes([1, 2], seed=370 + n, ct=False)
        nii(d / "atlas-train-dataset-1.0.1/train/imagesTr" / f"im{n}.nii.gz", img)
        nii(d / "atlas-train-dataset-1.0.1/train/labelsTr" / f"lb{n}.nii.gz", lab)


def tdsc_abus(d):
    # Train's images in two sub-folders, Validation's flat; masks flat in both.
    for split, n, sub in [("Train", 0, "DATA00_49/"), ("Train", 50, "DATA50_99/"), ("Validation", 100, "")]:
        img, lab = volumes([1], seed=380 + n, ct=False)
        itk(d / split / "DATA" / f"{sub}DATA_{n:03d}.nrrd", img)
        itk(d / split / "MASK" / f"MASK_{n:03d}.nrrd", lab)
        (d / split / "labels.csv").write_text(f"case_id,label,data_path,mask_path\n{n},M,DATA/DATA_{n:03d}.nrrd,MASK_{n:03d}.nrrd\n")


def amos22(d):
    ol.amos22(d)
    # The validation set has MR cases too (amos_0501 and above).
    img, lab = volumes([1, 6], seed=390, ct=False)
    nii(d / "amos22/imagesVa/amos_0540.nii.gz", img)
    nii(d / "amos22/labelsVa/amos_0540.nii.gz", lab)


def brats21(d):
    ol.brats_nii(d, "", [f"BraTS2021_{i:05d}" for i in range(BRATS21_CASES)], grades=False)


# Benchmark name → (folder under raw, writer). Four share a training download's folder.
WRITERS = {
    "Totalseg-Test": ("Totalsegmentator", ol.totalsegmentator),
    "AMOS-Val": ("AMOS22", amos22),
    "BTCV": ("BTCV", btcv),
    "HaN-Seg": ("HaN-Seg", hanseg),
    "FeTA21": ("FeTA21", lambda d: feta(d, "feta_2.1", ["mial", "irtk"])),
    "FeTA22": ("FeTA22", lambda d: feta(d, "feta_2.2", ["mial", "nmic"])),
    "iSeg17": ("iSeg17", lambda d: iseg(d, "iSeg-2017-Training", "iSeg-2017-Testing")),
    "iSeg19": ("iSeg19", lambda d: iseg(d, "iSeg-2019-Training", "iSeg-2019-Testing")),
    "MRBrains13": ("MRBrains13", mrbrains13),
    "MRBrains18": ("MRBrains18", mrbrains18),
    "SEG.A.2023": ("SEG.A.2023", sega),
    "KiTS21-Val": ("KiTS21", ol.kits21),
    "BraTS21-Val": ("BraTS21", brats21),
    "ATLAS23": ("ATLAS23", atlas23),
    "TDSC-ABUS": ("TDSC-ABUS", tdsc_abus),
}
NOT_GENERATED = {"cSeg22"}


def write_all(raw, names=None):
    raw = pathlib.Path(raw)
    for name, (folder, writer) in WRITERS.items():
        if names is None or name in names:
            writer(raw / folder)
    return raw


if __name__ == "__main__":
    write_all(sys.argv[1], sys.argv[2:] or None)
    print(f"wrote {len(WRITERS)} benchmark miniatures under {sys.argv[1]}")
