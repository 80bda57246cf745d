"""Miniatures of the 58 Table-1 datasets' official downloads, as unpacked.

`write_all(raw)` writes, for every dataset of `manifests/datasets.toml`, a tiny tree
under `raw/<catalogue name>/` with the official folder and file names, formats and
quirks (spaces in folder names, macOS `._` files, uncompressed `.nii`, `_0000`
suffixes, odd label values, unlabelled test images, wrapper folders, a dataset
unpacked one folder up) as `../shared/notes/official-layouts.md` and the datasets'
own documentation describe them. Volumes are small (40 x 40 x 24 voxels at
1.5 x 1.5 x 3 mm) with cube-shaped structures large enough to pass the size filters.

Run as a script to write a tree for a manual look:
    python tests/python/official_layouts.py /tmp/raw
"""

import gzip
import pathlib
import sys

import nibabel as nib
import numpy as np
import SimpleITK as sitk

SHAPE = (40, 40, 24)
SPACING = (1.5, 1.5, 3.0)
# Four cube-shaped places for up to four structures (x, y ranges; z 8-15).
PLACES = [(4, 4), (22, 4), (4, 22), (22, 22)]


def volumes(values, seed=0, ct=True):
    """An int16 image (x, y, z) and its label map with one cube per stored value."""
    rng = np.random.default_rng(seed)
    image = (rng.normal(-700 if ct else 200, 30, SHAPE)).astype(np.int16)
    label = np.zeros(SHAPE, np.uint16)
    for i, v in enumerate(values):
        x, y = PLACES[i % 4]
        label[x : x + 14, y : y + 14, 8:15] = v
        image[x : x + 14, y : y + 14, 8:15] = (40 if ct else 600) + 60 * i
    return image, label


def mkparent(path):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def nii(path, arr, dtype=None):
    """NIfTI (.nii or .nii.gz), RAS affine from SPACING."""
    arr = np.asarray(arr) if dtype is None else np.asarray(arr).astype(dtype)
    if arr.dtype == np.uint16 and arr.max() < 256:
        arr = arr.astype(np.uint8)
    nib.save(nib.Nifti1Image(arr, np.diag([*SPACING, 1.0])), str(mkparent(path)))


def itk(path, arr, compress=False):
    """MetaImage (.mha, .mhd + .raw/.zraw) or NRRD through SimpleITK."""
    arr = np.asarray(arr)
    if arr.dtype == np.uint16 and arr.max() < 256:
        arr = arr.astype(np.uint8)
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))
    img.SetSpacing(SPACING)
    sitk.WriteImage(img, str(mkparent(path)), useCompression=compress)


def dicom(folder, arr, uid):
    """A DICOM series, one file per slice, positions and orientation set."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))
    img.SetSpacing(SPACING)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    n = img.GetDepth()
    for i in range(n):
        s = img[:, :, i]
        for tag, value in [("0008|0060", "MR"), ("0020|000e", uid), ("0020|0037", "1\\0\\0\\0\\1\\0")]:
            s.SetMetaData(tag, value)
        s.SetMetaData("0008|0018", f"{uid}.{i + 1}")
        s.SetMetaData("0020|0032", "\\".join(map(str, img.TransformIndexToPhysicalPoint((0, 0, i)))))
        s.SetMetaData("0020|0013", str(i + 1))
        writer.SetFileName(str(folder / f"i{n - 1 - i:04d},0000b.dcm"))
        writer.Execute(s)


def png_stack(folder, label, greys, name):
    """CHAOS ground truth: one PNG per slice, grey values, last slice first."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n = label.shape[2]
    for z in range(n):
        grey = np.zeros(label.shape[:2], np.uint8)
        for value, g in greys.items():
            grey[label[:, :, z] == value] = g
        img = sitk.GetImageFromArray(np.ascontiguousarray(grey.T))
        sitk.WriteImage(img, str(folder / name.format(n - 1 - z)))


def junk(path, text=b"\x00\x05\x16\x07 resource fork"):
    mkparent(path).write_bytes(text)


def channels(names, seed):
    return {c: volumes([], seed=seed + i, ct=False)[0] for i, c in enumerate(names)}


# ---------------------------------------------------------------------------
# One writer per dataset: `d` is raw/<catalogue name>.


def abdomenct1k(d):
    for part, case in [(1, "00001"), (2, "00362")]:
        img, lab = volumes([1, 2, 3, 4], seed=int(case))
        nii(d / f"AbdomenCT-1K-ImagePart{part}/Case_{case}_0000.nii.gz", img)
        nii(d / f"Mask/Case_{case}.nii.gz", lab)


def amos22(d):
    root = d / "amos22"
    for sub, case in [("Tr", "amos_0001"), ("Tr", "amos_0004"), ("Tr", "amos_0507"), ("Va", "amos_0008")]:
        img, lab = volumes([1, 6], seed=int(case[-4:]), ct=case < "amos_0501")
        nii(root / f"images{sub}/{case}.nii.gz", img)
        nii(root / f"labels{sub}/{case}.nii.gz", lab)
    nii(root / "imagesTs/amos_0002.nii.gz", volumes([])[0])
    (root / "dataset.json").write_text('{"name": "AMOS", "labels": {"0": "background", "1": "spleen"}}')


def asc18(d):
    for case in ["0RZDK210BSMWAA6467LU", "1D7CUD1955YZPGK8XHJX"]:
        img, lab = volumes([255], seed=len(case), ct=False)
        itk(d / f"Training Set/{case}/lgemri.nrrd", img)
        itk(d / f"Training Set/{case}/laendo.nrrd", lab)


def atm22(d):
    for batch, case in [(1, "ATM_001"), (1, "ATM_164"), (2, "ATM_301")]:
        img, lab = volumes([1], seed=int(case[-3:]))
        nii(d / f"TrainBatch{batch}/imagesTr/{case}_0000.nii.gz", img)
        nii(d / f"TrainBatch{batch}/labelsTr/{case}_0000.nii.gz", lab)


def brainptm(d):
    for case in ["1", "2"]:
        img, lab = volumes([1, 2, 3, 4], seed=int(case), ct=False)
        nii(d / f"sheba75_data_train/case_{case}/T1.nii.gz", img)
        nii(d / f"sheba75_data_train/case_{case}/Diffusion.nii.gz", np.stack([img, img], axis=-1))
        for v, s in enumerate(["OR_left", "OR_right", "CST_left", "CST_right"], start=1):
            nii(d / f"sheba75_tracts_train/case_{case}/{s}.nii.gz", (lab == v).astype(np.uint8))


def vsd(case_dir, mods, ext, label_folder, seed, values=(1, 2, 4), writer=itk, folder_ids=True):
    """SMIR's VSD naming: one folder per modality, `VSD.Brain.XX.O.MR_<mod>.<id>`
    (BraTS13: the folder without the id), the label in `...OT.<id>`."""
    img, lab = volumes(list(values), seed=seed, ct=False)
    for i, m in enumerate(mods):
        name = f"VSD.Brain.XX.O.MR_{m}"
        file = f"{name}.{700 + 10 * seed + i}"
        writer(case_dir / (file if folder_ids else name) / f"{file}{ext}", img + 5 * i)
    file = f"{label_folder}.{799 + seed}"
    writer(case_dir / (file if folder_ids else label_folder) / f"{file}{ext}", lab)


def brats13(d):
    for grade, case, seed in [("HG", "0001", 1), ("LG", "0001", 2)]:
        vsd(d / f"BRATS-2/Image_Data/{grade}/{case}", ["Flair", "T1", "T1c", "T2"], ".mha", "VSD.Brain_3more.XX.XX.OT", seed, folder_ids=False)


def brats15(d):
    for grade, case, seed in [("HGG", "brats_2013_pat0001_1", 1), ("LGG", "brats_tcia_pat101_0001", 2)]:
        vsd(d / f"BRATS2015_Training/{grade}/{case}", ["Flair", "T1", "T1c", "T2"], ".mha", "VSD.Brain_3more.XX.O.OT", seed)


def brats_nii(d, top, cases, grades=True, seg_name=None):
    for i, case in enumerate(cases):
        img, lab = volumes([1, 2, 4], seed=i, ct=False)
        folder = d / top / (("HGG" if i == 0 else "LGG") if grades else "") / case
        for j, m in enumerate(["t1", "t1ce", "t2", "flair"]):
            nii(folder / f"{case}_{m}.nii.gz", img + 7 * j)
        nii(folder / (seg_name(case) if seg_name else f"{case}_seg.nii.gz"), lab)


def brats18(d):
    brats_nii(d, "MICCAI_BraTS_2018_Data_Training", ["Brats18_2013_2_1", "Brats18_TCIA10_103_1"])


def brats19(d):
    brats_nii(d, "MICCAI_BraTS_2019_Data_Training", ["BraTS19_2013_2_1", "BraTS19_TCIA10_103_1"])


def brats20(d):
    brats_nii(
        d,
        "MICCAI_BraTS2020_TrainingData",
        ["BraTS20_Training_001", "BraTS20_Training_355"],
        grades=False,
        seg_name=lambda c: "W39_1998.09.19_Segm.nii" if c.endswith("355") else f"{c}_seg.nii.gz",
    )


def brats21(d):
    brats_nii(d, "", ["BraTS2021_00000", "BraTS2021_00002", "BraTS2021_01666"], grades=False)


def btcv_cervix(d):
    for case in ["0507001", "0522001"]:
        img, lab = volumes([1, 2, 3, 4], seed=int(case) % 97)
        nii(d / f"RawData/Training/img/{case}-Image.nii.gz", img)
        nii(d / f"RawData/Training/label/{case}-Mask.nii.gz", lab)
    nii(d / "RawData/Testing/img/0519001-Image.nii.gz", volumes([])[0])


def cause07(d):
    for case in ["UNC_train_Case01", "CHB_train_Case02"]:
        img, lab = volumes([1], seed=len(case), ct=False)
        itk(d / f"training/{case}.mhd", img, compress=True)
        itk(d / f"training/{case}_caudate.mhd", lab, compress=True)


def chaos(d):
    # The challenge pairs the sorted PNG names with the sorted DICOM names; the files
    # run from the last slice (by position) to the first.
    greys_ct = {1: 255}
    greys_mr = {1: 63, 2: 126, 3: 189, 4: 252}
    for case in ["1", "2"]:
        img, lab = volumes([1], seed=int(case))
        dicom(d / f"Train_Sets/CT/{case}/DICOM_anon", img, f"1.2.826.0.1.3680043.8.1.{case}")
        png_stack(d / f"Train_Sets/CT/{case}/Ground", lab, greys_ct, "liver_GT_{:03d}.png")
    for case in ["1", "3"]:
        img, lab = volumes([1, 2, 3, 4], seed=10 + int(case), ct=False)
        dicom(d / f"Train_Sets/MR/{case}/T2SPIR/DICOM_anon", img, f"1.2.826.0.1.3680043.8.2.{case}")
        png_stack(d / f"Train_Sets/MR/{case}/T2SPIR/Ground", lab, greys_mr, "IMG-0002-{:05d}.png")
        for phase, k in [("InPhase", 3), ("OutPhase", 4)]:
            dicom(d / f"Train_Sets/MR/{case}/T1DUAL/DICOM_anon/{phase}", img, f"1.2.826.0.1.3680043.8.{k}.{case}")
        png_stack(d / f"Train_Sets/MR/{case}/T1DUAL/Ground", lab, greys_mr, "IMG-0004-{:05d}.png")


def cosmos22(d):
    img, _ = volumes([], ct=False)
    dicom(d / "Training_dataset/001", img, "1.2.826.0.1.3680043.8.9.1")
    (d / "Training_dataset/001/001L.QVS").write_text("<QVAS_Series/>")


def covid19(d):
    for name, mask in [
        ("coronacases_org_001", "coronacases_001"),
        ("radiopaedia_org_covid-19-pneumonia-4_85506_1-dcm", "radiopaedia_4_85506_1"),
    ]:
        img, lab = volumes([1, 2, 3], seed=len(name))
        nii(d / f"ct_scans/{name}.nii", img)
        nii(d / f"lung_and_infection_mask/{mask}.nii", lab)
        nii(d / f"lung_mask/{mask}.nii", np.isin(lab, [1, 2]) * lab)
        nii(d / f"infection_mask/{mask}.nii", (lab == 3).astype(np.uint8))
    (d / "metadata.csv").write_text("ct_scan,lung_mask,infection_mask,lung_and_infection_mask\n")


def crossmoda21(d):
    for case in ["1", "2"]:
        img, lab = volumes([1, 2], seed=int(case), ct=False)
        nii(d / f"crossmoda_training/source_training/crossmoda_{case}_ceT1.nii.gz", img)
        nii(d / f"crossmoda_training/source_training/crossmoda_{case}_Label.nii.gz", lab)
    nii(d / "crossmoda_training/target_training/crossmoda_106_hrT2.nii.gz", volumes([], ct=False)[0])


def crossmoda22(d):
    for case in ["crossmoda2021_ldn_1", "crossmoda2022_etz_7"]:
        img, lab = volumes([1, 2], seed=len(case), ct=False)
        nii(d / f"training_source/{case}_ceT1.nii.gz", img)
        nii(d / f"training_source/{case}_Label.nii.gz", lab)
    nii(d / "training_target/crossmoda2021_ldn_106_hrT2.nii.gz", volumes([], ct=False)[0])


def ct_org(d):
    for case in ["0", "17"]:
        img, lab = volumes([1, 3, 4], seed=int(case))
        nii(d / f"OrganSegmentations/volume-{case}.nii.gz", img)
        nii(d / f"OrganSegmentations/labels-{case}.nii.gz", lab)


def ctpelvic1k(d):
    for s, case, masks in [(6, "CLINIC_0001", "ipcai2021_dataset6_Anonymized"), (7, "CLINIC_metal_0000", "CTPelvic1K_dataset7_mask")]:
        img, lab = volumes([1, 2, 3, 4], seed=s)
        nii(d / f"CTPelvic1K_dataset{s}_data/dataset{s}_{case}_data.nii.gz", img)
        nii(d / f"{masks}/dataset{s}_{case}_mask_4label.nii.gz", lab)
    nii(d / "CTPelvic1K_dataset1_mask/dataset1_1.3.6.1_mask_4label.nii.gz", volumes([1])[1])


def flare21(d):
    for case in ["000", "001"]:
        img, lab = volumes([1, 2, 3, 4], seed=int(case))
        nii(d / f"TrainingImg/train_{case}_0000.nii.gz", img)
        nii(d / f"TrainingMask/train_{case}.nii.gz", lab)


def flare22(d):
    # Unpacked one level up: FLARE22_LabeledCase50/ without the archive's Training/.
    for case in ["0001", "0002"]:
        img, lab = volumes([1, 3, 4, 13], seed=int(case))
        nii(d / f"FLARE22_LabeledCase50/images/FLARE22_Tr_{case}_0000.nii.gz", img)
        nii(d / f"FLARE22_LabeledCase50/labels/FLARE22_Tr_{case}.nii.gz", lab)


def msd(d, task, prefix, values, ct=True, n_channels=1, modality=None):
    root = d / task
    for i, case in enumerate([f"{prefix}_001", f"{prefix}_003"]):
        img, lab = volumes(values, seed=i, ct=ct)
        if n_channels > 1:
            img = np.stack([img + 9 * c for c in range(n_channels)], axis=-1)
        nii(root / f"imagesTr/{case}.nii.gz", img)
        nii(root / f"labelsTr/{case}.nii.gz", lab)
        junk(root / f"imagesTr/._{case}.nii.gz")
        junk(root / f"labelsTr/._{case}.nii.gz")
    nii(root / f"imagesTs/{prefix}_002.nii.gz", volumes([], ct=ct)[0])
    modality = modality or {"0": "CT" if ct else "MRI"}
    labels = {"0": "background", **{str(v): f"label{v}" for v in values}}
    import json

    (root / "dataset.json").write_text(json.dumps({"name": task, "modality": modality, "labels": labels}))


def heartsegmri(d):
    msd(d, "Task02_Heart", "la", [1], ct=False)


def hvsmr16(d):
    for case in ["0", "1"]:
        img, lab = volumes([1, 2], seed=int(case), ct=False)
        for kind in ["axial_full", "axial_crop", "sa_crop"]:
            nii(d / f"TrainingDataset/training_{kind}_pat{case}.nii.gz", img)
            nii(d / f"GroundTruth/training_{kind}_pat{case}-label.nii.gz", lab)


def isles(d, top, mods):
    for i, case in enumerate(["1", "2"]):
        vsd(d / top / case, mods, ".nii", "VSD.Brain.XX.O.OT", 3 + i, values=(1,), writer=lambda p, a: nii(p, a))


def islessiss(d):
    isles(d, "SISS2015_Training", ["Flair", "T1", "T2", "DWI"])


def islesspes(d):
    isles(d, "SPES2015_Training", ["CBF", "CBV", "DWI", "T1c", "T2", "Tmax", "TTP"])


def verse19(d):
    for s, case in [("training", "sub-verse004"), ("validation", "sub-verse012")]:
        img, lab = volumes([20, 21], seed=len(case) + len(s))
        nii(d / f"dataset-verse19{s}/rawdata/{case}/{case}_ct.nii.gz", img)
        nii(d / f"dataset-verse19{s}/derivatives/{case}/{case}_seg-vert_msk.nii.gz", lab)
        (d / f"dataset-verse19{s}/derivatives/{case}/{case}_seg-subreg_ctd.json").write_text("[]")


def verse20(d):
    for s, sub, scan in [("01training", "sub-gl003", "sub-gl003_dir-ax"), ("02validation", "sub-verse500", "sub-verse500")]:
        img, lab = volumes([19, 20], seed=len(scan))
        nii(d / f"dataset-{s}/rawdata/{sub}/{scan}_ct.nii.gz", img)
        nii(d / f"dataset-{s}/derivatives/{sub}/{scan}_seg-vert_msk.nii.gz", lab)


def vessel12(d):
    for folder, case in [("VESSEL12_01-05", "01"), ("VESSEL12_11_15", "12")]:
        img, lab = volumes([1], seed=int(case))
        itk(d / f"{folder}/VESSEL12_{case}.mhd", img)
        itk(d / f"VESSEL12_01-20_Lungmasks/VESSEL12_{case}.mhd", lab * 255)
    (d / "VESSEL12_ExampleScans/Annotations/VESSEL12_01_Annotations.csv").parent.mkdir(parents=True)
    (d / "VESSEL12_ExampleScans/Annotations/VESSEL12_01_Annotations.csv").write_text("x,y,z,v\n")


def kits(d, seg, cases, extra=False):
    for i, case in enumerate(cases):
        img, lab = volumes([1, 2], seed=i)
        nii(d / f"data/case_{case}/imaging.nii.gz", img)
        nii(d / f"data/case_{case}/{seg}", lab)
        if extra:
            nii(d / f"data/case_{case}/aggregated_OR_seg.nii.gz", lab)
            nii(d / f"data/case_{case}/segmentations/kidney_instance-1_annotation-1.nii.gz", (lab == 1).astype(np.uint8))


def kits21(d):
    # 00210: one of the held-out evaluation cases (KiTS19's hidden test set).
    kits(d / "kits21", "aggregated_MAJ_seg.nii.gz", ["00000", "00001", "00210"], extra=True)


def kits19(d):
    kits(d, "segmentation.nii.gz", ["00000", "00001"])


def lascarqs22(d):
    # An archive unpacked into a folder of its own: one wrapper more.
    root = d / "LAScarQS2022"
    for case in ["1", "2"]:
        img, lab = volumes([1, 2], seed=int(case), ct=False)
        nii(root / f"task1/train_data/train_{case}/enhanced.nii.gz", img)
        nii(root / f"task1/train_data/train_{case}/atriumSegImgMO.nii.gz", (lab > 0).astype(np.uint8))
        nii(root / f"task1/train_data/train_{case}/scarSegImgM.nii.gz", (lab == 2).astype(np.uint8))
        nii(root / f"task2/train_data/train_{case}/enhanced.nii.gz", img)
        nii(root / f"task2/train_data/train_{case}/atriumSegImgMO.nii.gz", (lab > 0).astype(np.uint8) * 255)


def lits(d):
    for batch, case in [(1, "0"), (2, "28")]:
        img, lab = volumes([1, 2], seed=int(case))
        nii(d / f"Training Batch {batch}/volume-{case}.nii", img)
        nii(d / f"Training Batch {batch}/segmentation-{case}.nii", lab)


def luna16(d):
    for sub, uid in [(0, "1.3.6.1.4.1.14519.5.2.1.6279.6001.105756658031515062000744821260"), (1, "1.3.6.1.4.1.14519.5.2.1.6279.6001.106164978370116976238911317774")]:
        img, lab = volumes([3, 4, 5], seed=sub)
        itk(d / f"subset{sub}/{uid}.mhd", img)
        itk(d / f"seg-lungs-LUNA16/{uid}.mhd", lab, compress=True)


def mmwhs(d):
    for mod, case in [("ct", "1001"), ("mr", "1001")]:
        img, lab = volumes([205, 420, 500, 850], seed=len(mod), ct=mod == "ct")
        nii(d / f"{mod}_train/{mod}_train_{case}_image.nii.gz", img)
        nii(d / f"{mod}_train/{mod}_train_{case}_label.nii.gz", lab)


def parse22(d):
    for case in ["PA000005", "PA000016"]:
        img, lab = volumes([1], seed=int(case[2:]))
        nii(d / f"train/{case}/image/{case}.nii.gz", img)
        nii(d / f"train/{case}/label/{case}.nii.gz", lab)


def picai(d):
    for fold, pid, sid, labelled in [(0, "10000", "1000000", True), (1, "10001", "1000001", True), (1, "10002", "1000002", False)]:
        img, lab = volumes([2, 4], seed=int(pid) % 7, ct=False)
        for m in ["t2w", "adc", "hbv", "cor", "sag"]:
            itk(d / f"picai_public_images_fold{fold}/{pid}/{pid}_{sid}_{m}.mha", img)
        if labelled:
            # Resampled to the T2 scan's grid: written by SimpleITK, as the MHA is.
            itk(d / f"picai_labels/csPCa_lesion_delineations/human_expert/resampled/{pid}_{sid}.nii.gz", lab)


def promise09(d):
    for case, uid in [("1", "1.2.3.11"), ("2", "1.2.3.12")]:
        img, lab = volumes([1], seed=int(case), ct=False)
        itk(d / f"T2_images/{case}/{uid}.nrrd", img)
        itk(d / f"T1_images/{case}/{uid}.nrrd", img)
        itk(d / f"T2_segmented_images/{case}/{uid}.nrrd", lab)


def promise12(d):
    for part, case in [(1, "00"), (2, "17")]:
        img, lab = volumes([1], seed=int(case), ct=False)
        itk(d / f"TrainingData_Part{part}/Case{case}.mhd", img)
        itk(d / f"TrainingData_Part{part}/Case{case}_segmentation.mhd", lab)


def prostatemriseg(d):
    for site, case, seg in [("BIDMC", "00", "segmentation"), ("I2CVB", "00", "Segmentation")]:
        img, lab = volumes([1], seed=len(site), ct=False)
        nii(d / f"{site}/Case{case}.nii.gz", img)
        nii(d / f"{site}/Case{case}_{seg}.nii.gz", lab)


def ribfrac(d):
    for images, labels, case in [("Part1", "Part1", "1"), ("ribfrac-val-images", "ribfrac-val-labels", "421")]:
        img, lab = volumes([1, 2, 3], seed=int(case))
        nii(d / f"{images}/RibFrac{case}-image.nii.gz", img)
        nii(d / f"{labels}/RibFrac{case}-label.nii.gz", lab)
    (d / "ribfrac-train-info-1.csv").write_text("public_id,label_id,label_code\n")
    nii(d / "ribfrac-test-images/RibFrac501-image.nii.gz", volumes([])[0])


def segthor(d):
    for case in ["01", "02"]:
        img, lab = volumes([1, 2, 3, 4], seed=int(case))
        nii(d / f"train/Patient_{case}/Patient_{case}.nii.gz", img)
        nii(d / f"train/Patient_{case}/GT.nii.gz", lab)


def sliver07(d):
    for case in ["001", "002"]:
        img, lab = volumes([1], seed=int(case))
        itk(d / f"training-scans/liver-orig{case}.mhd", img, compress=True)
        itk(d / f"training-labels/liver-seg{case}.mhd", lab, compress=True)


def structseg19(d):
    for task, values in [("HaN_OAR", [1, 20]), ("Thoracic_OAR", [1, 3]), ("Naso_GTV", [1]), ("Lung_GTV", [1])]:
        # Thoracic_OAR as some users have it: inside its archive's folder, uncompressed.
        folder, ext = (f"Task3_{task}/{task}", "nii") if task == "Thoracic_OAR" else (task, "nii.gz")
        for case in ["1", "2"]:
            img, lab = volumes(values, seed=int(case) + len(task))
            nii(d / f"{folder}/{case}/data.{ext}", img)
            nii(d / f"{folder}/{case}/label.{ext}", lab)


def totalsegmentator(d):
    root = d  # the zip has no top folder
    structures = ["aorta", "liver", "spleen"]
    rows = ["image_id;age;gender;institute;study_type;split"]
    for case, split in [("s0000", "train"), ("s0001", "val"), ("s0002", "test")]:
        img, lab = volumes([1, 2, 3], seed=int(case[1:]))
        nii(root / f"{case}/ct.nii.gz", img)
        for v, s in enumerate(structures, start=1):
            nii(root / f"{case}/segmentations/{s}.nii.gz", (lab == v).astype(np.uint8))
        rows.append(f"{case};50;m;A;ct;{split}")
    (root / "meta.csv").write_text("\n".join(rows) + "\n")


def kipa22(d):
    for case in ["1", "2"]:
        img, lab = volumes([1, 2, 3, 4], seed=int(case))
        nii(d / f"train/image/{case}.nii.gz", img)
        nii(d / f"train/label/{case}.nii.gz", lab)


def word(d):
    root = d / "WORD-V0.1.0"
    for sub, case in [("Tr", "word_0001"), ("Tr", "word_0002"), ("Val", "word_0101")]:
        img, lab = volumes([1, 2, 3, 4], seed=int(case[-4:]))
        nii(root / f"images{sub}/{case}.nii.gz", img)
        nii(root / f"labels{sub}/{case}.nii.gz", lab)


MSD = {
    "MSD_BrainTumour": ("Task01_BrainTumour", "BRATS", [1, 2, 3], False, 4, {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}),
    "MSD_Colon": ("Task10_Colon", "colon", [1], True, 1, None),
    "MSD_Heart": ("Task02_Heart", "la", [1], False, 1, None),
    "MSD_HepaticVessel": ("Task08_HepaticVessel", "hepaticvessel", [1, 2], True, 1, None),
    "MSD_Hippocampus": ("Task04_Hippocampus", "hippocampus", [1, 2], False, 1, None),
    "MSD_Liver": ("Task03_Liver", "liver", [1, 2], True, 1, None),
    "MSD_Lung": ("Task06_Lung", "lung", [1], True, 1, None),
    "MSD_Pancreas": ("Task07_Pancreas", "pancreas", [1, 2], True, 1, None),
    "MSD_Prostate": ("Task05_Prostate", "prostate", [1, 2], False, 2, {"0": "T2", "1": "ADC"}),
    "MSD_Spleen": ("Task09_Spleen", "spleen", [1], True, 1, None),
}

WRITERS = {
    "AbdomenCT-1K": abdomenct1k,
    "AMOS22": amos22,
    "ASC18": asc18,
    "ATM22": atm22,
    "BrainPTM": brainptm,
    "BraTS13": brats13,
    "BraTS15": brats15,
    "BraTS18": brats18,
    "BraTS19": brats19,
    "BraTS20": brats20,
    "BraTS21": brats21,
    "BTCV_Cervix": btcv_cervix,
    "CAUSE07": cause07,
    "CHAOS": chaos,
    "COSMOS22": cosmos22,
    "COVID19CTscans": covid19,
    "CrossMoDA21": crossmoda21,
    "CrossMoDA22": crossmoda22,
    "CT_ORG": ct_org,
    "CTPelvic1k": ctpelvic1k,
    "FLARE21": flare21,
    "FLARE22": flare22,
    "HeartSegMRI": heartsegmri,
    "hvsmr16": hvsmr16,
    "ISLESSISS": islessiss,
    "ISLESSPES": islesspes,
    "VerSe19": verse19,
    "VerSe20": verse20,
    "VESSEL12": vessel12,
    "KiTS21": kits21,
    "LAScarQS22": lascarqs22,
    "LITS": lits,
    "LUNA16": luna16,
    "MMWHS": mmwhs,
    "Parse22": parse22,
    "PICAI": picai,
    "Promise09": promise09,
    "Promise12": promise12,
    "ProstateMRISeg": prostatemriseg,
    "RibFrac2020": ribfrac,
    "SegThor": segthor,
    "SLIVER07": sliver07,
    "StructSeg19": structseg19,
    "Totalsegmentator": totalsegmentator,
    "KIPA22": kipa22,
    "KiTS19": kits19,
    "WORD": word,
}
for _name, (_task, _prefix, _values, _ct, _n, _mod) in MSD.items():
    WRITERS[_name] = lambda d, a=(_task, _prefix, _values, _ct, _n, _mod): msd(d, a[0], a[1], a[2], a[3], a[4], a[5])

# Not generated: no public layout to imitate (the catalogue says so).
NOT_GENERATED = {"STACOM_SLAWT"}


def write_all(raw, names=None):
    raw = pathlib.Path(raw)
    for name, writer in WRITERS.items():
        if names is None or name in names:
            writer(raw / name)
    return raw


if __name__ == "__main__":
    write_all(sys.argv[1], sys.argv[2:] or None)
    print(f"wrote {len(WRITERS)} miniatures under {sys.argv[1]}")
