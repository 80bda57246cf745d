"""Every image format the ingest reads, against SimpleITK (what torchio reads through):
files SimpleITK itself writes (MetaImage .mha/.mhd+.raw/.mhd+.zraw, NRRD raw/gzip/
detached, a DICOM series) and headers SimpleITK reads (NRRD in RAS, MetaImage
ElementDataFile = LIST) give the same shape, RAS affine and voxels through
`s3-ingest inspect`; ingested, each gives the samples its NIfTI twin gives (the NIfTI
path is the one verified torchio-exact against the fixtures); channels (a 4-D MSD
image, one file per modality) give one sample per channel and label, named."""

import json
import os
import pathlib
import random
import subprocess

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest
import SimpleITK as sitk

ROOT = pathlib.Path(__file__).resolve().parents[2]
INGEST = os.environ.get("S3_INGEST_BIN", str(ROOT / "target" / "debug" / "s3-ingest"))
SIDE = 128
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def rotation(ax, ay, az):
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def phantom(shape=(61, 52, 40), spacing=(1.07, 0.93, 1.27), seed=3):
    # Spacings whose ratio to 1.5 mm is no simple fraction: with 0.9 mm every third
    # output voxel lands exactly half-way between two inputs, and whether a float32
    # (NIfTI) or float64 (MetaImage) spacing is stored decides the nearest one, for
    # torchio as for us. Nor is any n·s/1.5 a whole number, for the same reason.
    """A CT-like int16 volume (x, y, z) with two organs, and its uint8 label map."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = shape
    x, y, z = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing)), indexing="ij")
    image = -800 + 3 * x + 2 * y - z + rng.normal(0, 20, shape)
    label = np.zeros(shape, np.uint8)
    centre = np.array([n * s / 2 for n, s in zip(shape, spacing)])
    for value, offset, radius, hu in [(1, (-12, -5, 0), 13, 60), (2, (14, 6, 3), 11, 150)]:
        c = centre + offset
        inside = ((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) < radius**2
        label[inside] = value
        image[inside] = hu + rng.normal(0, 10, inside.sum())
    return image.astype(np.int16), label


def to_sitk(array_xyz, spacing, origin, direction):
    img = sitk.GetImageFromArray(np.ascontiguousarray(array_xyz.transpose(2, 1, 0)))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(tuple(np.asarray(direction).flatten()))
    return img


def ras_affine(img):
    """The voxel → RAS affine of a SimpleITK image (LPS geometry)."""
    d = np.array(img.GetDirection()).reshape(3, 3)
    a = np.eye(4)
    a[:3, :3] = d @ np.diag(img.GetSpacing())
    a[:3, 3] = img.GetOrigin()
    return LPS_TO_RAS @ a


def values_xyz(img):
    """SimpleITK's voxels, x fastest (its array is [z][y][x]), channel after channel."""
    arr = sitk.GetArrayFromImage(img).astype(np.float64)
    if img.GetNumberOfComponentsPerPixel() > 1:
        return np.concatenate([arr[..., c].reshape(-1) for c in range(arr.shape[-1])])
    return arr.reshape(-1)


def inspect(path, tmp):
    dump = tmp / "values.f64"
    r = subprocess.run([INGEST, "inspect", str(path), "--dump-f64", str(dump)], capture_output=True, encoding="utf-8")
    assert r.returncode == 0, (path, r.stderr)
    return json.loads(r.stdout), np.fromfile(dump, dtype="<f8")


def assert_reads_like_simpleitk(path, reference, tmp):
    info, ours = inspect(path, tmp)
    assert info["shape"] == list(reference.GetSize()[:3]), path
    np.testing.assert_allclose(np.array(info["affine"]), ras_affine(reference), rtol=0, atol=1e-6, err_msg=str(path))
    theirs = values_xyz(reference)
    assert ours.shape == theirs.shape, path
    assert np.array_equal(ours, theirs), (path, np.abs(ours - theirs).max())
    return info


GEOMETRY = dict(spacing=(1.07, 0.93, 1.27), origin=(12.5, -30.25, 40.0), direction=rotation(0.3, -0.2, 0.45))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The phantom written by SimpleITK in every format, image and label."""
    d = tmp_path_factory.mktemp("sitk")
    image, label = phantom()
    img, lab = to_sitk(image, **GEOMETRY), to_sitk(label, **GEOMETRY)
    files = {}
    for name, ext, compress in [
        ("nii", ".nii.gz", True),
        ("mha", ".mha", False),
        ("mhd_raw", ".mhd", False),
        ("mhd_zraw", ".mhd", True),
        ("nrrd_raw", ".nrrd", False),
        ("nrrd_gzip", ".nrrd", True),
        ("nhdr", ".nhdr", False),
    ]:
        folder = d / name
        (folder / "images").mkdir(parents=True)
        (folder / "labels").mkdir()
        sitk.WriteImage(img, str(folder / "images" / f"case1{ext}"), compress)
        sitk.WriteImage(lab, str(folder / "labels" / f"case1{ext}"), compress)
        files[name] = folder
    if (d / "mhd_zraw" / "images").exists():
        assert any(p.suffix == ".zraw" for p in (d / "mhd_zraw" / "images").iterdir()), "SimpleITK wrote no .zraw"
    return d, files, image, label


def test_every_file_simpleitk_writes_reads_like_simpleitk(written, tmp_path):
    _, files, image, _ = written
    for name, folder in files.items():
        path = next(p for p in (folder / "images").iterdir() if p.suffix in (".gz", ".mha", ".mhd", ".nrrd", ".nhdr"))
        info = assert_reads_like_simpleitk(path, sitk.ReadImage(str(path)), tmp_path)
        assert info["channels"] == 1
        # And SimpleITK read back what it was given: the phantom itself.
        assert np.array_equal(inspect(path, tmp_path)[1], image.reshape(-1, order="F").astype(np.float64)), name


def test_nrrd_in_ras_or_las_space_and_metaimage_slice_lists_read_like_simpleitk(tmp_path):
    image, _ = phantom(shape=(20, 18, 12))
    data = image.reshape(-1, order="F").astype("<i2").tobytes()
    d = np.array(GEOMETRY["direction"]) @ np.diag(GEOMETRY["spacing"])
    for space, flip in [("right-anterior-superior", [-1, -1, 1]), ("left-anterior-superior", [1, -1, 1])]:
        # The same LPS geometry written in another space: SimpleITK converts it back to LPS.
        vec = lambda v: "(" + ",".join(f"{x:.17g}" for x in v) + ")"
        dirs = " ".join(vec(np.array(flip) * d[:, c]) for c in range(3))
        header = (
            f"NRRD0004\ntype: short\ndimension: 3\nspace: {space}\nsizes: 20 18 12\n"
            f"space directions: {dirs}\nkinds: domain domain domain\nendian: little\nencoding: raw\n"
            f"space origin: {vec(np.array(flip) * np.array(GEOMETRY['origin']))}\n\n"
        )
        path = tmp_path / f"{space}.nrrd"
        path.write_bytes(header.encode() + data)
        ref = sitk.ReadImage(str(path))
        assert_reads_like_simpleitk(path, ref, tmp_path)
        np.testing.assert_allclose(ref.GetOrigin(), GEOMETRY["origin"], atol=1e-9)

    # ElementDataFile = LIST: one raw file per slice, listed after the header.
    slices = tmp_path / "slices"
    slices.mkdir()
    names = []
    for z in range(12):
        names.append(f"s{z:02d}.raw")
        (slices / names[-1]).write_bytes(image[:, :, z].reshape(-1, order="F").astype("<i2").tobytes())
    header = (
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\nCompressedData = False\n"
        f"TransformMatrix = {' '.join(f'{x:.17g}' for x in np.array(GEOMETRY['direction']).T.flatten())}\n"
        f"Offset = {' '.join(map(str, GEOMETRY['origin']))}\nElementSpacing = {' '.join(map(str, GEOMETRY['spacing']))}\n"
        "DimSize = 20 18 12\nElementType = MET_SHORT\nElementDataFile = LIST\n" + "\n".join(names) + "\n"
    )
    path = slices / "listed.mhd"
    path.write_text(header)
    ref = sitk.ReadImage(str(path))
    np.testing.assert_allclose(np.array(ref.GetDirection()), np.array(GEOMETRY["direction"]).flatten(), atol=1e-12)
    assert_reads_like_simpleitk(path, ref, tmp_path)


def write_dicom_series(img, folder, uid, shuffle_seed=None, description="phantom", prefix="IM"):
    """SimpleITK's own recipe for a series from a volume: one file per slice with its
    position and orientation; file names shuffled and instance numbers reversed, so
    only the positions order the slices."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = img.GetDirection()
    tags = [
        ("0008|0060", "CT"),
        ("0008|103e", description),
        ("0020|000e", uid),
        ("0020|0037", "\\".join(map(str, (d[0], d[3], d[6], d[1], d[4], d[7])))),
    ]
    n = img.GetDepth()
    order = list(range(n))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    for i in range(n):
        s = img[:, :, i]
        for tag, value in tags:
            s.SetMetaData(tag, value)
        s.SetMetaData("0008|0018", f"{uid}.{i + 1}")
        s.SetMetaData("0020|0032", "\\".join(map(str, img.TransformIndexToPhysicalPoint((0, 0, i)))))
        s.SetMetaData("0020|0013", str(n - i))
        writer.SetFileName(str(folder / f"{prefix}{order[i]:04d}.dcm"))
        writer.Execute(s)


@pytest.fixture(scope="module")
def dicom(tmp_path_factory):
    d = tmp_path_factory.mktemp("dicom")
    image, label = phantom()
    img = to_sitk(image, **GEOMETRY)
    folder = d / "case1" / "DICOM_anon"
    write_dicom_series(img, folder, "1.2.826.0.1.3680043.2.1125.1001", shuffle_seed=5)
    # A smaller second series in the same folder: the larger one is read.
    write_dicom_series(to_sitk(image[:, :, :4], **GEOMETRY), folder, "1.2.826.0.1.3680043.2.1125.999", description="scout", prefix="SC")
    return d, folder, image, label


def test_a_dicom_series_reads_like_simpleitk_ordered_by_position(dicom, tmp_path):
    _, folder, image, _ = dicom
    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(folder), "1.2.826.0.1.3680043.2.1125.1001")
    assert len(files) == image.shape[2]
    reader.SetFileNames(files)
    ref = reader.Execute()
    info = assert_reads_like_simpleitk(folder, ref, tmp_path)
    assert info["format"] == "DicomSeries"
    np.testing.assert_allclose(np.array(info["affine"]), LPS_TO_RAS @ np.block(
        [[np.array(GEOMETRY["direction"]) @ np.diag(GEOMETRY["spacing"]), np.array(GEOMETRY["origin"])[:, None]],
         [np.zeros((1, 3)), np.ones((1, 1))]]), atol=1e-4)
    assert np.array_equal(inspect(folder, tmp_path)[1], image.reshape(-1, order="F").astype(np.float64))


def test_a_dicom_slice_of_another_size_is_a_clear_error(dicom, tmp_path):
    _, folder, image, _ = dicom
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in sorted(folder.iterdir())[:6]:
        (bad / f.name).write_bytes(f.read_bytes())
    odd = to_sitk(image[:30, :, :2], **GEOMETRY)
    write_dicom_series(odd, tmp_path / "odd", "1.2.826.0.1.3680043.2.1125.1001")
    (bad / "odd.dcm").write_bytes(next((tmp_path / "odd").iterdir()).read_bytes())
    r = subprocess.run([INGEST, "inspect", str(bad)], capture_output=True, encoding="utf-8")
    assert r.returncode != 0 and "one series must share one size" in r.stderr, r.stderr


def ingest(tmp, datasets):
    """Runs s3-ingest on `pairs`/`nnunet` datasets; returns {dataset: shard rows}."""
    catalogue = ""
    for name, task in datasets.items():
        catalogue += f'[[datasets]]\nname = "{name}"\nmodality = "CT"\npretrain = true\nfinetune = false\n'
        catalogue += "[[datasets.tasks]]\nname = \"default\"\n" + task + "\n"
    (tmp / "datasets.toml").write_text(catalogue)
    out = tmp / "out"
    r = subprocess.run(
        [INGEST, "--manifest", str(tmp / "datasets.toml"), "--out", str(out), "--jobs", "2"],
        capture_output=True,
        encoding="utf-8",
    )
    assert r.returncode == 0, r.stderr
    rows = {}
    for name in datasets:
        parts = sorted((out / "shards" / name).rglob("*.parquet"))
        rows[name] = pq.read_table(parts).to_pylist() if parts else []
    return out, rows


def by_key(rows):
    return {(r["case_id"], r["channel"], r["label_value"]): r for r in rows}


def image_of(row):
    return np.frombuffer(row["image"], "<i2").astype(np.float64) * row["image_scale"] + row["image_offset"]


def mask_of(row):
    return np.unpackbits(np.frombuffer(row["mask"], np.uint8), bitorder="little").astype(bool)


def assert_same_samples(ours, reference, what):
    """DESIGN §4's tolerance: masks differ in ≤ 1 % of foreground voxels; image voxels
    differ by more than 1e-3 of the range in ≤ 1 % and never by more than one source
    unit; affines within 1e-4 mm."""
    assert ours.keys() == reference.keys() and ours, (what, sorted(ours), sorted(reference))
    for key, r in reference.items():
        o = ours[key]
        m, mr = mask_of(o), mask_of(r)
        assert (m != mr).sum() <= 0.01 * mr.sum(), (what, key, (m != mr).sum())
        a, b = image_of(o), image_of(r)
        off = np.abs(a - b) > 1e-3 * (b.max() - b.min())
        assert off.sum() <= 0.01 * a.size and np.abs(a - b).max() <= 1.0 + 1e-6, (what, key, np.abs(a - b).max())
        np.testing.assert_allclose(o["affine"], r["affine"], atol=1e-4, err_msg=f"{what} {key}")


def test_every_format_ingests_like_its_nifti_twin(written, dicom, tmp_path):
    d, files, image, label = written
    datasets = {}
    for name, folder in files.items():
        ext = next(p for p in (folder / "images").iterdir() if p.suffix in (".gz", ".mha", ".mhd", ".nrrd", ".nhdr")).name
        ext = ext[len("case1"):]
        datasets[f"F_{name}"] = (
            f'layout = "pairs"\nsource = "{folder}"\nimage_glob = "images/*{ext}"\nlabel_template = "labels/{{case}}{ext}"\n'
        )
    # CHAOS's shape: a DICOM series per case and its label as PNG slices, grey 63/126
    # for classes 1/2, the files in the opposite order to the slices.
    dicom_root, _, _, _ = dicom
    ground = dicom_root / "case1" / "Ground"
    ground.mkdir(exist_ok=True)
    nz = label.shape[2]
    for z in range(nz):
        grey = (label[:, :, z] * 63).astype(np.uint8)
        sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(grey.T)), str(ground / f"liver_GT_{nz - 1 - z:03d}.png"))
    datasets["F_dicom_png"] = (
        f'layout = "pairs"\nsource = "{dicom_root}"\nimage_glob = "{{case}}/DICOM_anon/"\n'
        'label_template = "{case}/Ground"\nlabel_png = { values = { "63" = 1, "126" = 2 }, reversed = true }\n'
    )
    _, rows = ingest(tmp_path, datasets)
    reference = by_key(rows["F_nii"])
    assert len(reference) == 2, reference.keys()
    for name in datasets:
        if name != "F_nii":
            assert_same_samples(by_key(rows[name]), reference, name)


def nifti(array, affine, path):
    nib.save(nib.Nifti1Image(array, affine), str(path))


def test_channels_give_one_sample_per_channel_and_class(tmp_path):
    image, label = phantom(shape=(48, 44, 36), spacing=(1.0, 1.0, 1.0))
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    channels = {"FLAIR": image, "T1w": (image // 2 + 7).astype(np.int16), "t1gd": (image + 100).astype(np.int16)}

    # MSD: one 4-D image, channel names in dataset.json.
    msd = tmp_path / "Task01_BrainTumour"
    (msd / "imagesTr").mkdir(parents=True)
    (msd / "labelsTr").mkdir()
    nifti(np.stack(list(channels.values()), axis=-1), affine, msd / "imagesTr" / "BRATS_001.nii.gz")
    nifti(label, affine, msd / "labelsTr" / "BRATS_001.nii.gz")
    (msd / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"resource fork")
    modality = {str(i): n for i, n in enumerate(channels)}
    (msd / "dataset.json").write_text(json.dumps({"modality": modality, "labels": {"0": "background", "1": "edema", "2": "tumour"}}))

    # BraTS: one file per modality; the t1gd file on another grid (PICAI's adc beside t2w).
    brats = tmp_path / "BraTS"
    case = brats / "BraTS_001"
    case.mkdir(parents=True)
    for name, arr in channels.items():
        a = affine.copy()
        if name == "t1gd":
            a[:3, :3] *= 1.25
        nifti(arr, a, case / f"BraTS_001_{name.lower()}.nii.gz")
    nifti(label, affine, case / "BraTS_001_seg.nii.gz")
    brats_task = (
        f'layout = "pairs"\nsource = "{brats}"\nimage_glob = "{{case}}/{{case}}_seg.nii.gz"\n'
        'label_template = "{case}/{case}_seg.nii.gz"\n'
        'channel_files = { FLAIR = "{case}/{case}_flair.nii.gz", T1w = "{case}/{case}_t1w.nii.gz", t1gd = "{case}/{case}_t1gd.nii.gz" }\n'
    )

    # Each channel alone as a 3-D image: the reference for its samples.
    single = {}
    for name, arr in channels.items():
        folder = tmp_path / f"single_{name}"
        (folder / "imagesTr").mkdir(parents=True)
        (folder / "labelsTr").mkdir()
        nifti(arr, affine, folder / "imagesTr" / "BRATS_001_0000.nii.gz")
        nifti(label, affine, folder / "labelsTr" / "BRATS_001.nii.gz")
        single[name] = folder

    datasets = {
        "MSD": f'layout = "nnunet"\nsource = "{msd}"\n',
        "MSDsel": f'layout = "nnunet"\nsource = "{msd}"\nchannels = ["t1gd", "FLAIR"]\n',
        "BraTS": brats_task,
    }
    datasets.update({f"S_{n}": f'layout = "nnunet"\nsource = "{f}"\n' for n, f in single.items()})
    out, rows = ingest(tmp_path, datasets)

    msd_rows = by_key(rows["MSD"])
    assert sorted(msd_rows) == sorted(("BRATS_001", c, v) for c in channels for v in (1, 2))
    for (case_id, channel, value), row in msd_rows.items():
        assert row["sample_id"] == f"MSD/default/BRATS_001/{channel}/{value}"
        ref = by_key(rows[f"S_{channel}"])[("BRATS_001", "", value)]
        assert np.array_equal(image_of(row), image_of(ref)) and row["mask"] == ref["mask"], (channel, value)
    # The channels differ, so a mix-up of names and volumes would show.
    assert not np.array_equal(image_of(msd_rows[("BRATS_001", "FLAIR", 1)]), image_of(msd_rows[("BRATS_001", "T1w", 1)]))

    assert sorted({c for _, c, _ in by_key(rows["MSDsel"])}) == ["FLAIR", "t1gd"]

    manifest = json.loads((out / "labels" / "MSD.json").read_text())
    edema = next(c for c in manifest["classes"] if c["value"] == 1)
    assert edema["name"] == "edema" and edema["channels"] == {c: 1 for c in channels}

    brats_rows = by_key(rows["BraTS"])
    assert sorted({c for _, c, _ in brats_rows}) == ["FLAIR", "T1w"], "the channel on another grid is left out"
    for (_, channel, value), row in brats_rows.items():
        assert np.array_equal(image_of(row), image_of(by_key(rows[f"S_{channel}"])[("BRATS_001", "", value)]))
    fate = json.loads((out / "labels" / "BraTS.json").read_text())["cases"]["default"]["BraTS_001"]
    assert fate["fate"] == "ingested" and "t1gd" in fate["dropped_channels"], fate
    assert "affines differ" in fate["dropped_channels"]["t1gd"], fate


def test_a_dicom_series_simpleitk_writes_from_a_real_mr_volume(tmp_path):
    """nibabel's example4d (a real MR run, oblique) → its first volume as a DICOM series
    by SimpleITK → read back like SimpleITK reads it, on the NIfTI's own grid."""
    import zipfile

    wheels = pathlib.Path(os.environ.get("S3_TEST_WHEELS", ROOT / ".venv" / "wheels"))
    wheel = next(wheels.glob("nibabel-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        path = pathlib.Path(z.extract("nibabel/tests/data/example4d.nii.gz", tmp_path))
    four_d = sitk.ReadImage(str(path))
    size = list(four_d.GetSize())
    volume = sitk.Extract(four_d, size[:3] + [0], [0, 0, 0, 0])
    folder = tmp_path / "series"
    write_dicom_series(volume, folder, "1.2.826.0.1.3680043.2.1125.4242", shuffle_seed=11)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    ref = reader.Execute()
    info = assert_reads_like_simpleitk(folder, ref, tmp_path)
    # The series covers the NIfTI's first volume voxel for voxel. This NIfTI is
    # left-handed (qfac −1); a DICOM stack always runs along row × column, so the
    # series is the same grid with its slices in the opposite order.
    nifti_info, nifti_values = inspect(path, tmp_path)
    assert nifti_info["channels"] == size[3]
    nifti_affine = np.array(nifti_info["affine"])
    assert np.linalg.det(nifti_affine[:3, :3]) < 0
    flip = np.eye(4)
    flip[2, 2], flip[2, 3] = -1, size[2] - 1
    np.testing.assert_allclose(np.array(info["affine"]), nifti_affine @ flip, atol=1e-3)
    n = int(np.prod(size[:3]))
    first = nifti_values[:n].reshape(size[:3], order="F")[:, :, ::-1].reshape(-1, order="F")
    assert np.array_equal(inspect(folder, tmp_path)[1], first)


def test_analyze_hdr_img_reads_like_simpleitk(tmp_path):
    # iSeg's format: a 348-byte header without NIfTI's magic beside raw voxels. SimpleITK
    # ignores the `orient` byte and SPM's originator, so a reader honouring them would
    # differ here; both byte orders and the element types the iSeg files use.
    from benchmark_layouts import analyze

    image, label = phantom(shape=(20, 18, 12))
    cases = [
        ("le_int16", image, dict(endian="<", orient=1, originator=(10, 9, 6))),
        ("be_float32", image.astype(np.float32) / 7, dict(endian=">", orient=3)),
        ("label_uint8", (label * 100).astype(np.uint8), dict(spacing=(1.07, 0.93, 1.27))),
        # ITK reverses an axis whose pixdim is negative and reads a zero one as 1 mm.
        ("signed_spacing", image, dict(spacing=(0.0, -0.93, 1.27))),
    ]
    for name, arr, kw in cases:
        path = tmp_path / f"{name}.hdr"
        analyze(path, arr, **kw)
        ref = sitk.ReadImage(str(path))
        info = assert_reads_like_simpleitk(path, ref, tmp_path)
        assert info["shape"] == list(arr.shape)
