"""Reference numbers for "bytes read from the object store per epoch": MosaicML Streaming
(PyPI `mosaicml-streaming`) over the same samples as the Rust shard cache bench.

    python streaming_reference.py --endpoint http://127.0.0.1:PORT --access-key K \
        --secret-key S --bucket B --shards-prefix shards/ --workdir DIR \
        [--epochs 3] [--nodes 2] [--ranks-per-node 2] [--batch-size 2]

1. Copies every row of every `*.parquet` under s3://B/<shards-prefix> into an MDS dataset at
   s3://B/<mds-prefix> (default mds/), one MDS shard per Parquet file, so both sides have the
   same shard count and the same samples grouped the same way. Every column is carried:
   binary as MDS `bytes`, strings as `str`, the rest (numbers, fixed lists) as `json`.
   MDS shards are written uncompressed by default (our Parquet shards are zstd inside), so
   compare bytes relative to each side's dataset size (`mds_bytes` vs `parquet_bytes`).
2. For each cache setting, simulates nodes x ranks as spawned processes on this host (each
   node its own cache dir) iterating a shuffled StreamingDataset (py1e, num_canonical_nodes =
   nodes) for --epochs, counting the bytes streaming's S3 downloader fetched.
3. Prints one JSON line per setting to stdout; progress goes to stderr.
"""

import argparse
import json
import multiprocessing as mp
import os
import queue
import shutil
import socket
import sys
import threading
import time

SETTINGS = ("unlimited", "half_share", "min_cache")


def log(msg):
    print(f"[streaming-ref] {msg}", file=sys.stderr, flush=True)


def s3_env(args):
    # Explicit keys and no metadata service: boto3 must never look beyond the given endpoint.
    return {
        "S3_ENDPOINT_URL": args.endpoint,  # the variable streaming's S3 up/downloaders read
        "AWS_ACCESS_KEY_ID": args.access_key,
        "AWS_SECRET_ACCESS_KEY": args.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def s3_client(args):
    import boto3
    return boto3.client("s3", endpoint_url=args.endpoint, region_name="us-east-1",
                        aws_access_key_id=args.access_key, aws_secret_access_key=args.secret_key)


def list_keys(s3, bucket, prefix):
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            yield obj["Key"]


def build_mds(args):
    """Copy the Parquet samples into an MDS dataset on the same server; returns its shape."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from streaming import MDSWriter

    s3 = s3_client(args)
    keys = sorted(k for k in list_keys(s3, args.bucket, args.shards_prefix) if k.endswith(".parquet"))
    if not keys:
        raise SystemExit(f"no .parquet under s3://{args.bucket}/{args.shards_prefix}")
    stale = list(list_keys(s3, args.bucket, args.mds_prefix))  # a rerun must not mix datasets
    for i in range(0, len(stale), 1000):
        s3.delete_objects(Bucket=args.bucket, Delete={"Objects": [{"Key": k} for k in stale[i:i + 1000]]})

    def body(key):
        return s3.get_object(Bucket=args.bucket, Key=key)["Body"].read()

    schema = pq.read_schema(pa.BufferReader(body(keys[0])))
    columns, empty = {}, {}
    for f in schema:
        if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type) or pa.types.is_fixed_size_binary(f.type):
            columns[f.name], empty[f.name] = "bytes", b""
        elif pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
            columns[f.name], empty[f.name] = "str", ""
        else:
            columns[f.name], empty[f.name] = "json", None
    local = os.path.join(args.workdir, "mds-staging")
    remote = f"s3://{args.bucket}/{args.mds_prefix.rstrip('/')}"
    parquet_bytes = samples = 0
    # size_limit only guards MDS's 4 GiB offset limit; shards are cut at Parquet file boundaries.
    with MDSWriter(out=(local, remote), columns=columns, compression=args.compression,
                   size_limit=(1 << 32) - 1, exist_ok=True, progress_bar=False) as writer:
        for key in keys:
            data = body(key)
            parquet_bytes += len(data)
            for batch in pq.ParquetFile(pa.BufferReader(data)).iter_batches(batch_size=32):
                for row in batch.to_pylist():
                    writer.write({c: row.get(c, empty[c]) for c in columns})
                    samples += 1
            if writer.new_samples:  # flush_shard() is MDSWriter's own cut; _reset_cache() follows it there too
                writer.flush_shard()
                writer._reset_cache()
        shards = list(writer.shards)
    raw = [s["raw_data"]["bytes"] for s in shards]
    fetched = [(s["zip_data"] or s["raw_data"])["bytes"] for s in shards]
    return {"parquet_shards": len(keys), "parquet_bytes": parquet_bytes, "dataset_samples": samples,
            "mds_shards": len(shards), "mds_bytes": sum(fetched), "mds_raw_bytes": sum(raw),
            "max_shard_bytes": max(max(raw), max(fetched)), "columns": columns, "remote": remote}


def rank_main(rank, cfg, out):
    """One simulated rank: its env is what streaming's World/distributed code reads."""
    node, local_rank = divmod(rank, cfg["ranks_per_node"])
    node_tmp = os.path.join(cfg["run_dir"], f"tmp-node{node}")
    os.makedirs(node_tmp, exist_ok=True)
    os.environ.update(cfg["env"])
    os.environ.update({
        # streaming.base.distributed reads only these four; node = RANK // LOCAL_WORLD_SIZE.
        "RANK": str(rank), "WORLD_SIZE": str(cfg["world"]),
        "LOCAL_RANK": str(local_rank), "LOCAL_WORLD_SIZE": str(cfg["ranks_per_node"]),
        "NODE_RANK": str(node), "GROUP_RANK": str(node),  # what launchers set; streaming ignores them
        # With WORLD_SIZE > 1 streaming itself inits torch.distributed (gloo, env://) for the
        # barriers around its shared-memory setup, then tears it down again.
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(cfg["master_port"]), "GLOO_SOCKET_IFNAME": "lo",
        "TMPDIR": node_tmp,  # streaming's file locks live in gettempdir(): one "/tmp" per node
    })
    try:
        out.put(run_rank(rank, node, cfg))
    except BaseException as e:  # report instead of leaving the other ranks at a barrier
        out.put({"rank": rank, "error": f"{type(e).__name__}: {e}"})


def run_rank(rank, node, cfg):
    import tempfile
    tempfile.tempdir = None  # re-read TMPDIR
    import streaming.base.dataset as sdataset
    import streaming.base.shared.prefix as sprefix
    from streaming import StreamingDataset
    from streaming.base.storage.download import S3Downloader

    # Streaming names its shared memory (/dev/shm) "<prefix>_<what>" and keys the prefix on
    # the local dirs, assuming one node per host: two simulated nodes' local leaders would
    # race for prefix 0 and share one shard-state table. A per-node tag makes them disjoint,
    # as separate hosts are.
    plain = sprefix._get_path
    tag = f"{cfg['tag']}n{node}_"
    sprefix._get_path = sdataset._get_path = lambda prefix_int, name: tag + plain(prefix_int, name)

    # Count what streaming fetches: download() returns early when the file is already cached,
    # so only fresh files (index.json and shards) are counted, once each, whole.
    counted = {"bytes": 0, "files": 0}
    lock = threading.Lock()
    fetch = S3Downloader.download

    def download(self, remote, local, *a, **kw):
        fresh = not os.path.exists(local)
        fetch(self, remote, local, *a, **kw)
        if fresh and remote:
            with lock:
                counted["bytes"] += os.path.getsize(local)
                counted["files"] += 1
    S3Downloader.download = download

    ds = StreamingDataset(remote=cfg["remote"], local=os.path.join(cfg["run_dir"], f"node{node}"),
                          shuffle=True, shuffle_algo="py1e", shuffle_seed=cfg["seed"],
                          num_canonical_nodes=cfg["nodes"], batch_size=cfg["batch_size"],
                          cache_limit=cfg["cache_limit"])
    epochs, seen = [], {"bytes": 0, "files": 0}
    for _ in range(cfg["epochs"]):
        n = sum(1 for _ in ds)  # no DataLoader workers: one streaming worker per rank
        with lock:
            now = dict(counted)
        # epoch 1 includes the index.json the local leader fetched while constructing
        epochs.append({"samples": n, "bytes": now["bytes"] - seen["bytes"], "files": now["files"] - seen["files"]})
        seen = now
    return {"rank": rank, "node": node, "epochs": epochs}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_setting(args, info, name, cache_limit):
    run_dir = os.path.join(args.workdir, name)
    shutil.rmtree(run_dir, ignore_errors=True)
    world = args.nodes * args.ranks_per_node
    cfg = {"env": s3_env(args), "world": world, "nodes": args.nodes, "ranks_per_node": args.ranks_per_node,
           "master_port": free_port(), "run_dir": run_dir, "remote": info["remote"], "seed": args.seed,
           "batch_size": args.batch_size, "cache_limit": cache_limit, "epochs": args.epochs,
           "tag": f"sr{os.getpid()}{name[0]}"}
    ctx = mp.get_context("spawn")  # fresh interpreters: no fork-inherited torch/boto3 state
    out = ctx.Queue()
    procs = [ctx.Process(target=rank_main, args=(r, cfg, out)) for r in range(world)]
    for p in procs:
        p.start()
    results, deadline = [], time.monotonic() + args.timeout
    while len(results) < world:
        try:
            r = out.get(timeout=5)
        except queue.Empty:
            r = None
            if time.monotonic() > deadline or not any(p.is_alive() for p in procs):
                r = {"error": "timed out" if time.monotonic() > deadline else "a rank died without a report"}
        if r is not None and "error" in r:
            for p in procs:
                p.terminate()
            for p in procs:
                p.join()
            return {"setting": name, "cache_limit": cache_limit, "error": r["error"]}
        if r is not None:
            results.append(r)
    for p in procs:
        p.join()
    per_node = [[sum(r["epochs"][e]["bytes"] for r in results if r["node"] == n) for e in range(args.epochs)]
                for n in range(args.nodes)]
    return {"setting": name, "cache_limit": cache_limit,
            "epoch_bytes": [sum(col) for col in zip(*per_node)],
            "epoch_bytes_per_node": per_node,
            "epoch_files": [sum(r["epochs"][e]["files"] for r in results) for e in range(args.epochs)],
            "samples_per_epoch": sum(r["epochs"][0]["samples"] for r in results),
            "samples_per_epoch_each": [sum(r["epochs"][e]["samples"] for r in results) for e in range(args.epochs)]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoint", required=True)
    p.add_argument("--access-key", required=True)
    p.add_argument("--secret-key", required=True)
    p.add_argument("--bucket", required=True)
    p.add_argument("--shards-prefix", default="shards/")
    p.add_argument("--mds-prefix", default="mds/")
    p.add_argument("--workdir", required=True)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--ranks-per-node", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--seed", type=int, default=9176)  # streaming's default shuffle_seed
    p.add_argument("--compression", default=None, help="MDS shard compression, e.g. zstd (default none)")
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--timeout", type=float, default=3600, help="seconds per setting")
    args = p.parse_args()
    args.workdir = os.path.abspath(args.workdir)
    os.makedirs(args.workdir, exist_ok=True)
    os.environ.update(s3_env(args))  # for MDSWriter's uploader in this process

    t = time.monotonic()
    info = build_mds(args)
    log(f"MDS copy: {info['mds_shards']} MDS shards ({info['mds_bytes']} B) from {info['parquet_shards']} "
        f"Parquet shards ({info['parquet_bytes']} B), {info['dataset_samples']} samples, "
        f"columns {info['columns']}, {time.monotonic() - t:.1f}s")
    # A node's share: the cache a node needs to hold its half of the samples (raw MDS bytes,
    # which is what streaming's cache accounting counts once shards are decompressed).
    share = -(-info["mds_raw_bytes"] // args.nodes)
    limits = {"unlimited": None, "half_share": share // 2,
              # streaming has no cache-off mode: 4 x the largest shard is the least it accepts
              "min_cache": 4 * info["max_shard_bytes"]}
    shape = {k: info[k] for k in ("mds_shards", "parquet_shards", "mds_bytes", "parquet_bytes", "dataset_samples")}
    for name in args.settings.split(","):
        t = time.monotonic()
        row = run_setting(args, info, name, limits[name])
        row.update(shape, node_share_bytes=share, seconds=round(time.monotonic() - t, 1))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
