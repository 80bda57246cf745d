"""Shards written by s3-shards are plain Parquet: pyarrow, numpy and xxhash read them
without any code of ours, and agree with the index and the per-sample checksums."""

import json
import os
import pathlib
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xxhash

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("S3_SHARDS_BIN", str(ROOT / "target" / "debug" / "s3-shards"))
SIDE = 128


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("store")
    subprocess.run(
        [BIN, "synth", str(out), "--datasets", "2", "--cases", "3", "--labels", "2", "--row-group-rows", "4"],
        check=True,
    )
    return out


def test_schema_is_the_contract(store):
    shard = next((store / "shards").rglob("*.parquet"))
    schema = pq.read_schema(shard)
    expected = {
        "sample_id": pa.string(), "dataset": pa.string(), "task": pa.string(), "case_id": pa.string(),
        "label_value": pa.int32(), "label_name": pa.string(), "category": pa.string(), "modality": pa.string(), "channel": pa.string(),
        "split": pa.string(), "image": pa.binary(), "image_scale": pa.float32(), "image_offset": pa.float32(),
        "mask": pa.binary(), "affine": pa.list_(pa.field("item", pa.float64(), nullable=False), 16),
        "source_shape": pa.list_(pa.field("item", pa.int32(), nullable=False), 3),
        "source_affine": pa.list_(pa.field("item", pa.float64(), nullable=False), 16),
        "fg_voxels": pa.int64(), "checksum": pa.uint64(),
    }
    assert schema.names == list(expected)
    for name, typ in expected.items():
        assert schema.field(name).type == typ, name
    assert schema.metadata[b"sam3d.format_version"] == b"2"
    meta = pq.ParquetFile(shard).metadata
    assert meta.row_group(0).column(schema.names.index("image")).compression == "ZSTD"
    assert all(meta.row_group(i).num_rows <= 4 for i in range(meta.num_row_groups))


def test_samples_decode_with_numpy_and_checksums_match(store):
    n = 0
    for shard in sorted((store / "shards").rglob("*.parquet")):
        table = pq.read_table(shard)
        for row in table.to_pylist():
            image_bytes, mask_bytes = row["image"], row["mask"]
            image = np.frombuffer(image_bytes, dtype="<i2").reshape(SIDE, SIDE, SIDE)
            mask = np.unpackbits(np.frombuffer(mask_bytes, dtype=np.uint8), bitorder="little").reshape(SIDE, SIDE, SIDE)
            assert image.dtype == np.int16 and image.shape == (SIDE, SIDE, SIDE)
            assert int(mask.sum()) == row["fg_voxels"] > 0
            assert xxhash.xxh3_64(image_bytes + mask_bytes).intdigest() == row["checksum"]
            # CT crops are integer HU stored exactly: air is about -1000 and the organ is inside the body.
            assert (row["image_scale"], row["image_offset"]) == (1.0, 0.0)
            assert -1010 <= int(image.min()) <= -990
            assert image[mask.astype(bool)].mean() > -200
            assert row["sample_id"] == f'{row["dataset"]}/{row["task"]}/{row["case_id"]}/{row["label_value"]}'
            assert row["split"] in ("train", "val")
            affine = np.array(row["affine"]).reshape(4, 4)
            assert affine[3].tolist() == [0, 0, 0, 1]
            n += 1
    assert n == 2 * 3 * 2


def test_index_hashes_and_sample_table(store):
    index = json.loads((store / "index.json").read_text())
    assert index["format_version"] == 1
    assert len(index["shards"]) == 2
    for shard in index["shards"]:
        data = (store / shard["path"]).read_bytes()
        assert len(data) == shard["bytes"]
        assert f"{xxhash.xxh3_64(data).intdigest():016x}" == shard["xxh3"]
        assert pq.ParquetFile(store / shard["path"]).metadata.num_rows == shard["rows"]
    samples = pq.read_table(store / "samples.parquet").to_pylist()
    assert len(samples) == index["samples"]["rows"] == 12
    for s in samples:
        row = pq.read_table(store / s["shard"]).slice(s["row"], 1).to_pylist()[0]
        assert row["sample_id"] == s["sample_id"] and row["fg_voxels"] == s["fg_voxels"]
    for ref in index["labels"]:
        manifest = json.loads((store / ref["path"]).read_text())
        assert sum(c["samples"] for c in manifest["classes"]) == 6
        assert all(f["fate"] == "ingested" for f in manifest["cases"]["default"].values())
