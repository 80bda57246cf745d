"""pyarrow reading the same shards into numpy with the same per-sample work as the Rust
loader (decode int16 → float32 with scale/offset, unpack the mask bits, xxh3 check,
random flips, z-normalisation over voxels > 0). One thread:

    python trainer/bench/pyarrow_loader.py /tmp/s3-loader-bench [--order FILE]

--order FILE (from `s3-train bench loader --order-out FILE`) reads the samples in the
Rust loader's order (the sampler's), decoding each row group once and keeping it until
its last use, as the Rust loader's cache does; without it, every row in file order.
"""

import pathlib
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import xxhash

root = pathlib.Path(sys.argv[1])
order_file = sys.argv[3] if len(sys.argv) > 3 and sys.argv[2] == "--order" else None
rng = np.random.default_rng(0)


def work(row):
    assert xxhash.xxh3_64(row["image"] + row["mask"]).intdigest() == row["checksum"]
    img = np.frombuffer(row["image"], "<i2").reshape(128, 128, 128).astype(np.float32) * row["image_scale"] + row["image_offset"]
    mask = np.unpackbits(np.frombuffer(row["mask"], np.uint8), bitorder="little").reshape(128, 128, 128).astype(np.float32)
    for axis in range(3):
        if rng.random() < 0.5:
            img, mask = np.flip(img, axis), np.flip(mask, axis)
    fg = img[img > 0]
    return (img - fg.mean()) / fg.std(), mask


t = time.perf_counter()
n = 0
if order_file:
    order = [(s, int(r)) for s, r in (line.strip().split(",") for line in open(order_file) if line.strip())]
    files, groups, last_use = {}, {}, {}
    def group_of(shard, row):
        f = files.setdefault(shard, pq.ParquetFile(root / shard))
        start = 0
        for g in range(f.num_row_groups):
            rows = f.metadata.row_group(g).num_rows
            if row < start + rows:
                return g, row - start
            start += rows
        raise IndexError(f"{shard} row {row}")
    located = [(shard,) + group_of(shard, row) for shard, row in order]
    for i, (shard, g, _) in enumerate(located):
        last_use[(shard, g)] = i
    for i, (shard, g, k) in enumerate(located):
        if (shard, g) not in groups:
            groups[(shard, g)] = files[shard].read_row_group(g, use_threads=False).to_pylist()
        work(groups[(shard, g)][k])
        if last_use[(shard, g)] == i:
            del groups[(shard, g)]
        n += 1
else:
    for shard in sorted((root / "shards").rglob("*.parquet")):
        f = pq.ParquetFile(shard)
        for g in range(f.num_row_groups):
            for row in f.read_row_group(g, use_threads=False).to_pylist():
                work(row)
                n += 1
print(f"pyarrow+numpy  {n / (time.perf_counter() - t):7.1f} samples/s ({n} samples)")
