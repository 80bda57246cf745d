"""Reference numbers for "bytes read from the object store per epoch": MosaicML Streaming
(PyPI `mosaicml-streaming`) over the same samples as the Rust shard-cache bench.

    python streaming_reference.py --endpoint http://127.0.0.1:PORT --access-key K \
        --secret-key S --bucket B --shards-prefix shards/ --workdir DIR \
        [--epochs 3] [--nodes 2] [--ranks-per-node 2] [--batch-size 2]

1. Copies every row of every `*.parquet` under s3://B/<shards-prefix> into an MDS dataset at
   s3://B/<mds-prefix>, one MDS shard per Parquet file: same shard count, same samples per
   shard. Every column is carried: binary as MDS `bytes`, strings as `str`, anything else as
   its JSON text. MDS shards are uncompressed by default while ours are zstd inside Parquet,
   so compare bytes relative to each side's dataset size (`mds_bytes` vs `parquet_bytes`).
2. Per cache setting, simulates nodes x ranks as spawned processes on this host, each node
   with its own cache dir, iterating a shuffled StreamingDataset (py1e, num_canonical_nodes =
   nodes) for --epochs, and counts the bytes streaming's S3 downloader fetched.
3. Prints one JSON line per setting on stdout; progress goes to stderr.
"""

import argparse
import glob
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


def note(msg):
    print(f"[streaming-ref] {msg}", file=sys.stderr, flush=True)


def s3_env(args):
    # Explicit keys and no metadata service: boto3 must never look beyond the given endpoint.
    return {"S3_ENDPOINT_URL": args.endpoint,  # what streaming's S3 up/downloaders read
            "AWS_ACCESS_KEY_ID": args.access_key, "AWS_SECRET_ACCESS_KEY": args.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def build_mds(args):
    """Copy the Parquet samples into an MDS dataset on the same server; returns its shape."""
    import boto3
    import pyarrow as pa
    import pyarrow.parquet as pq
    from streaming import MDSWriter

    s3 = boto3.client("s3", endpoint_url=args.endpoint, region_name="us-east-1",
                      aws_access_key_id=args.access_key, aws_secret_access_key=args.secret_key)

    def keys(prefix):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=args.bucket, Prefix=prefix):
            yield from (o["Key"] for o in page.get("Contents", []))

    parquet = sorted(k for k in keys(args.shards_prefix) if k.endswith(".parquet"))
    if not parquet:
        raise SystemExit(f"no .parquet under s3://{args.bucket}/{args.shards_prefix}")
    stale = list(keys(args.mds_prefix))  # a rerun must not mix two copies
    for i in range(0, len(stale), 1000):
        s3.delete_objects(Bucket=args.bucket, Delete={"Objects": [{"Key": k} for k in stale[i:i + 1000]]})

    def body(key):
        return s3.get_object(Bucket=args.bucket, Key=key)["Body"].read()

    columns = {}
    for f in pq.read_schema(pa.BufferReader(body(parquet[0]))):
        t = f.type
        columns[f.name] = ("bytes" if pa.types.is_binary(t) or pa.types.is_large_binary(t)
                           or pa.types.is_fixed_size_binary(t) else
                           "str" if pa.types.is_string(t) or pa.types.is_large_string(t) else "json-as-str")
    mds_columns = {c: "bytes" if e == "bytes" else "str" for c, e in columns.items()}

    def value(column, v):
        if columns[column] == "json-as-str":
            return json.dumps(v, default=str)
        return v if v is not None else (b"" if columns[column] == "bytes" else "")

    remote = f"s3://{args.bucket}/{args.mds_prefix.rstrip('/')}"
    parquet_bytes = samples = 0
    # size_limit only guards MDS's 4 GiB offset limit: shards are cut at Parquet file boundaries.
    with MDSWriter(out=(os.path.join(args.workdir, "mds-staging"), remote), columns=mds_columns,
                   compression=args.compression, size_limit=(1 << 32) - 1, exist_ok=True,
                   progress_bar=False) as writer:
        for key in parquet:
            data = body(key)
            parquet_bytes += len(data)
            for batch in pq.ParquetFile(pa.BufferReader(data)).iter_batches(batch_size=32):
                for row in batch.to_pylist():
                    writer.write({c: value(c, row.get(c)) for c in columns})
                    samples += 1
            if writer.new_samples:  # what MDSWriter.write() does when size_limit is reached
                writer.flush_shard()
                writer._reset_cache()
        shards = list(writer.shards)
    raw = [s["raw_data"]["bytes"] for s in shards]
    zips = [s["zip_data"]["bytes"] if s["zip_data"] else 0 for s in shards]
    return {"parquet_shards": len(parquet), "parquet_bytes": parquet_bytes, "dataset_samples": samples,
            "mds_shards": len(shards), "mds_bytes": sum(z or r for r, z in zip(raw, zips)),
            "mds_raw_bytes": sum(raw), "columns": columns, "remote": remote,
            # streaming's own yardstick for a shard in cache: raw + zip while decompressing
            "max_shard_bytes": max(r + z for r, z in zip(raw, zips))}


def rank_main(rank, cfg, out):
    """One simulated rank, its environment being all that streaming's World derives from."""
    node, local_rank = divmod(rank, cfg["ranks_per_node"])
    node_tmp = os.path.join(cfg["run_dir"], f"tmp-node{node}")
    os.makedirs(node_tmp, exist_ok=True)
    os.environ.update(cfg["env"])
    os.environ.update({
        # streaming.base.distributed reads only these four; World: node = RANK // LOCAL_WORLD_SIZE
        "RANK": str(rank), "WORLD_SIZE": str(cfg["world"]),
        "LOCAL_RANK": str(local_rank), "LOCAL_WORLD_SIZE": str(cfg["ranks_per_node"]),
        "NODE_RANK": str(node), "GROUP_RANK": str(node),  # what launchers set; streaming ignores them
        # With WORLD_SIZE > 1 streaming inits torch.distributed itself (gloo, env://) for the
        # barriers around its shared-memory setup, and tears it down after construction.
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(cfg["master_port"]), "GLOO_SOCKET_IFNAME": "lo",
        "TMPDIR": node_tmp,  # streaming's file locks live in gettempdir(): one /tmp per node
    })
    try:
        out.put(run_rank(rank, node, cfg, out))
    except BaseException as e:  # report, rather than leave the other ranks at a barrier
        out.put({"error": f"rank {rank}: {type(e).__name__}: {e}"})


def run_rank(rank, node, cfg, out):
    import tempfile
    tempfile.tempdir = None  # re-read TMPDIR
    import streaming.base.dataset as sdataset
    import streaming.base.shared.prefix as sprefix
    from streaming import StreamingDataset
    from streaming.base.storage.download import S3Downloader

    # Streaming names its /dev/shm blocks "<prefix>_<what>", the prefix keyed on the local
    # dirs, assuming one node per host: two simulated nodes' local leaders would race for
    # prefix 0 and share one shard-state table. A per-node tag keeps them apart, as hosts are.
    plain = sprefix._get_path
    tag = f"{cfg['tag']}n{node}_"
    sprefix._get_path = sdataset._get_path = lambda prefix_int, name: tag + plain(prefix_int, name)

    # download() returns early when the file is already in the cache dir, so counting fresh
    # files counts each GET of index.json or a shard once, whole.
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
                          cache_limit=cfg["cache_limit"], predownload=cfg["predownload"])
    epochs, seen, last, done = [], {"bytes": 0, "files": 0}, [time.monotonic()], threading.Event()

    def watchdog():
        # With a tight cache_limit a rank can wait forever for a shard its node-mate evicted
        # (streaming's ready thread never re-requests it): report that instead of hanging.
        while not done.wait(5):
            if time.monotonic() - last[0] > cfg["stall"]:
                out.put({"stalled": True, "error": f"rank {rank} (node {node}) stalled: "
                         f"no sample for {cfg['stall']:.0f}s in epoch {len(epochs) + 1}"})
                out.close()
                out.join_thread()
                os._exit(3)
    threading.Thread(target=watchdog, daemon=True).start()
    for _ in range(cfg["epochs"]):
        n = 0
        for _ in ds:  # no DataLoader workers: one streaming worker per rank
            n += 1
            last[0] = time.monotonic()
        with lock:
            now = dict(counted)
        # epoch 1 includes the index.json each node's local leader fetched while constructing
        epochs.append({"samples": n, "bytes": now["bytes"] - seen["bytes"], "files": now["files"] - seen["files"]})
        seen = now
    done.set()
    return {"rank": rank, "node": node, "epochs": epochs}


def run_once(args, info, name, cache_limit, tag):
    run_dir = os.path.join(args.workdir, name)
    shutil.rmtree(run_dir, ignore_errors=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    world = args.nodes * args.ranks_per_node
    cfg = {"env": s3_env(args), "world": world, "nodes": args.nodes, "ranks_per_node": args.ranks_per_node,
           "master_port": port, "run_dir": run_dir, "remote": info["remote"], "seed": args.seed,
           "batch_size": args.batch_size, "cache_limit": cache_limit, "epochs": args.epochs,
           "predownload": args.predownload, "stall": args.stall, "tag": tag}
    ctx = mp.get_context("spawn")  # fresh interpreters: nothing of this one's boto3/torch state
    out = ctx.Queue()
    procs = [ctx.Process(target=rank_main, args=(r, cfg, out)) for r in range(world)]
    for p in procs:
        p.start()
    results, deadline, failure = [], time.monotonic() + args.timeout, None
    while len(results) < world and not failure:
        try:
            r = out.get(timeout=5)
            failure, results = (r, results) if "error" in r else (None, results + [r])
        except queue.Empty:
            if time.monotonic() > deadline:
                failure = {"error": f"timed out after {args.timeout:.0f}s"}
            elif any(p.exitcode not in (None, 0) for p in procs):
                failure = {"error": "a rank died without a report"}
    for p in procs:
        if failure:
            p.terminate()
        p.join()
    if failure:
        # terminated ranks skip streaming's atexit unlinking of their shared memory
        from multiprocessing import shared_memory
        for path in glob.glob(f"/dev/shm/{tag}*"):
            shm = shared_memory.SharedMemory(os.path.basename(path))
            shm.close()
            shm.unlink()
        return failure
    per_node = [[sum(r["epochs"][e]["bytes"] for r in results if r["node"] == n) for e in range(args.epochs)]
                for n in range(args.nodes)]
    return {"epoch_bytes": [sum(col) for col in zip(*per_node)], "epoch_bytes_per_node": per_node,
            "epoch_files": [sum(r["epochs"][e]["files"] for r in results) for e in range(args.epochs)],
            "samples_per_epoch": sum(r["epochs"][0]["samples"] for r in results)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag in ("--endpoint", "--access-key", "--secret-key", "--bucket", "--workdir"):
        p.add_argument(flag, required=True)
    p.add_argument("--shards-prefix", default="shards/")
    p.add_argument("--mds-prefix", default="mds/")
    for flag, default in (("--epochs", 3), ("--nodes", 2), ("--ranks-per-node", 2), ("--batch-size", 2)):
        p.add_argument(flag, type=int, default=default)
    p.add_argument("--predownload", type=int, default=None, help="samples ahead (streaming: 8 x batch)")
    p.add_argument("--seed", type=int, default=9176)  # streaming's default shuffle_seed
    p.add_argument("--compression", default=None, help="MDS shard compression, e.g. zstd (default none)")
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--stall", type=float, default=60, help="seconds without a sample before a rank gives up")
    p.add_argument("--retries", type=int, default=1, help="reruns of a setting that stalled")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per run of a setting")
    args = p.parse_args()
    args.workdir = os.path.abspath(args.workdir)
    os.makedirs(args.workdir, exist_ok=True)
    for stray in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE"):  # would mix with our keys
        os.environ.pop(stray, None)
    os.environ.update(s3_env(args))  # for MDSWriter's uploader here; the ranks inherit it

    t = time.monotonic()
    info = build_mds(args)
    note(f"MDS copy: {info['mds_shards']} MDS shards ({info['mds_bytes']} B) from {info['parquet_shards']} "
         f"Parquet shards ({info['parquet_bytes']} B), {info['dataset_samples']} samples, "
         f"columns {info['columns']}, {time.monotonic() - t:.1f}s")
    # A node's share: what its cache holds when it keeps all of its half of the shards, in
    # raw MDS bytes (streaming's cache accounting once shards are decompressed).
    share = -(-info["mds_raw_bytes"] // args.nodes)
    limits = {"unlimited": None, "half_share": share // 2,
              # streaming has no cache-off mode: 4 x the largest shard is the least it accepts
              "min_cache": 4 * info["max_shard_bytes"]}
    shape = {k: info[k] for k in ("mds_shards", "parquet_shards", "mds_bytes", "parquet_bytes", "dataset_samples")}
    for i, name in enumerate(args.settings.split(",")):
        t, stalls = time.monotonic(), []
        for attempt in range(1 + args.retries):
            row = run_once(args, info, name, limits[name], f"sr{os.getpid()}s{i}a{attempt}")
            if not row.pop("stalled", False) or attempt == args.retries:
                break
            stalls.append(row["error"])
            note(f"{name}: {stalls[-1]}; running it again")
        print(json.dumps({"setting": name, "cache_limit": limits[name], **row, **shape,
                          "node_share_bytes": share, "stalled_runs": stalls,
                          "seconds": round(time.monotonic() - t, 1)}), flush=True)


if __name__ == "__main__":
    main()
