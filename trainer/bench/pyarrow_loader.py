"""pyarrow reading the same shards into numpy with the same per-sample work as the Rust
loader (decode int16 → float32 with scale/offset, unpack the mask bits, xxh3 check,
random flips, z-normalisation over voxels > 0). One thread:

    python trainer/bench/pyarrow_loader.py /tmp/s3-loader-bench
"""

import pathlib
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import xxhash

root = pathlib.Path(sys.argv[1])
rng = np.random.default_rng(0)
t = time.perf_counter()
n = 0
for shard in sorted((root / "shards").rglob("*.parquet")):
    f = pq.ParquetFile(shard)
    for g in range(f.num_row_groups):
        for row in f.read_row_group(g, use_threads=False).to_pylist():
            assert xxhash.xxh3_64(row["image"] + row["mask"]).intdigest() == row["checksum"]
            img = np.frombuffer(row["image"], "<i2").reshape(128, 128, 128).astype(np.float32) * row["image_scale"] + row["image_offset"]
            mask = np.unpackbits(np.frombuffer(row["mask"], np.uint8), bitorder="little").reshape(128, 128, 128).astype(np.float32)
            for axis in range(3):
                if rng.random() < 0.5:
                    img, mask = np.flip(img, axis), np.flip(mask, axis)
            fg = img[img > 0]
            img = (img - fg.mean()) / fg.std()
            n += 1
print(f"pyarrow+numpy  {n / (time.perf_counter() - t):7.1f} samples/s ({n} samples)")
