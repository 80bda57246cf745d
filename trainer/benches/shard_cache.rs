//! Bytes read from the object store per epoch, for 2 nodes × 2 ranks over 3 epochs
//! against a real S3 server on 127.0.0.1 (issue 28): without a cache, with a
//! node-local cache of a node's share (global and node-aware order), and with half
//! of it; then MosaicML Streaming's figures for the same configuration, from its own
//! MDS copy of the same samples, where it is installed
//! (`trainer/bench/streaming_reference.py`; `STREAMING_PYTHON` names its Python).
//! Prints; never asserts.
//!
//! `cargo bench -p s3-trainer --bench shard_cache --profile dev` (env `N` cases per
//! dataset, default 24).

use s3_shards::{ShardIndex, StoreOptions, WriterOptions, open_store, samples_table, synthetic};
use s3_trainer::bench::{LoaderEpochs, loader_epochs};
use s3_trainer::sampler::Sampler;
use s3_trainer::shard_cache::CacheSettings;

const NODES: usize = 2;
const RANKS_PER_NODE: usize = 2;
const EPOCHS: u64 = 3;

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / (1 << 20) as f64)
}

fn main() {
    let n: usize = std::env::var("N").ok().and_then(|v| v.parse().ok()).unwrap_or(24);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = s3_test_support::S3Server::start();
    let opts =
        StoreOptions::endpoint_with_keys(&server.endpoint(), s3_test_support::ACCESS_KEY, s3_test_support::SECRET_KEY);
    let url = server.url("cache-bench");
    let data = open_store(&url, &opts).unwrap();
    // Shards of ~4 samples: enough of them for each node to own a share.
    let writer = WriterOptions { row_group_rows: 2, target_file_bytes: 6 << 20, ..Default::default() };
    let index: ShardIndex = rt.block_on(synthetic::populate(data.store(), 2, n, 1, writer)).unwrap();
    let rows = rt.block_on(samples_table::read(data.store().as_ref())).unwrap();
    let train: Vec<_> = rows.into_iter().filter(|r| r.split == s3_shards::Split::Train).collect();
    let bytes_of = |k: &String| index.shards.iter().find(|s| &s.path == k).map_or(0, |s| s.bytes);
    let share = Sampler::from_rows(&train, 1, 4)
        .node_shards(NODES as u64)
        .iter()
        .map(|keys| keys.iter().map(bytes_of).sum::<u64>())
        .max()
        .unwrap();
    let total: u64 = index.shards.iter().map(|s| s.bytes).sum();
    println!(
        "{} train samples in {} shards ({} MiB); {NODES} nodes × {RANKS_PER_NODE} ranks, {EPOCHS} epochs; a node's share {} MiB",
        train.len(),
        index.shards.len(),
        mib(total),
        mib(share)
    );
    println!("store bytes per epoch, all ranks (MiB):");
    println!("| setting | epoch 1 | epoch 2 | epoch 3 |");
    println!("|---|---:|---:|---:|");
    let settings: [(&str, Option<u64>, Option<bool>); 4] = [
        ("s3-train, no cache", None, None),
        ("s3-train, cache = node's share, global order", Some(share), Some(false)),
        ("s3-train, cache = node's share, node-aware order", Some(share), None),
        ("s3-train, cache = half a node's share, node-aware order", Some(share / 2), None),
    ];
    for (name, limit, node_order) in settings {
        let dirs: Vec<tempfile::TempDir> = (0..NODES).map(|_| tempfile::tempdir().unwrap()).collect();
        let world = NODES * RANKS_PER_NODE;
        let per_rank: Vec<Vec<s3_trainer::bench::EpochRead>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..world)
                .map(|rank| {
                    let b = LoaderEpochs {
                        epochs: EPOCHS,
                        rank,
                        world,
                        nodes: NODES,
                        threads: 1,
                        cache: limit
                            .map(|limit| CacheSettings { dir: dirs[rank / RANKS_PER_NODE].path().into(), limit }),
                        node_order,
                    };
                    let data = &data;
                    s.spawn(move || loader_epochs(data, &b).unwrap())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let epoch_bytes: Vec<String> =
            (0..EPOCHS as usize).map(|e| mib(per_rank.iter().map(|r| r[e].store_bytes).sum())).collect();
        println!("| {name} | {} |", epoch_bytes.join(" | "));
    }
    reference(&server, &url);
}

/// MosaicML Streaming on its own MDS copy of the same samples, same server.
fn reference(server: &s3_test_support::S3Server, url: &str) {
    let python = std::env::var("STREAMING_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/streaming_reference.py");
    let ok =
        std::process::Command::new(&python).args(["-c", "import streaming"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        println!("| MosaicML Streaming | missing: `import streaming` fails with {python} (set STREAMING_PYTHON) | | |");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let bucket_and_prefix = url.trim_start_matches("s3://");
    let (bucket, prefix) = bucket_and_prefix.split_once('/').unwrap_or((bucket_and_prefix, ""));
    let out = std::process::Command::new(&python)
        .arg(script)
        .args(["--endpoint", &server.endpoint(), "--bucket", bucket])
        .args(["--access-key", s3_test_support::ACCESS_KEY, "--secret-key", s3_test_support::SECRET_KEY])
        .args(["--shards-prefix", &format!("{prefix}/shards/"), "--workdir"])
        .arg(work.path())
        .args(["--epochs", &EPOCHS.to_string(), "--nodes", &NODES.to_string()])
        .args(["--ranks-per-node", &RANKS_PER_NODE.to_string()])
        .output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            println!("| MosaicML Streaming | failed: {} | | |", err.lines().last().unwrap_or("no output"));
            return;
        }
        Err(e) => {
            println!("| MosaicML Streaming | failed to start: {e} | | |");
            return;
        }
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let setting = match v["setting"].as_str().unwrap_or("?") {
            "unlimited" => "no cache limit (≥ a node's share)",
            "half_share" => "cache = half a node's share",
            "min_cache" => "its smallest cache (4 shards; it has no cache-off mode)",
            other => other,
        };
        if let Some(e) = v.get("error") {
            println!("| MosaicML Streaming, {setting} | failed: {e} | | |");
            continue;
        }
        let cells: Vec<String> = v["epoch_bytes"]
            .as_array()
            .map(|a| a.iter().map(|b| mib(b.as_u64().unwrap_or(0))).collect())
            .unwrap_or_default();
        println!("| MosaicML Streaming, {setting} | {} |", cells.join(" | "));
    }
    println!(
        "(Streaming reads its own uncompressed MDS copy: {})",
        String::from_utf8_lossy(&out.stderr).lines().find(|l| l.contains("MDS copy")).unwrap_or("see its output")
    );
}
