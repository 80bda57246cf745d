//! Loader throughput: decoded, verified, flipped, normalised samples per second on one
//! loader thread, from a local store and from S3 on loopback. Prints; never asserts.
//! The pyarrow reference for the same shards: `trainer/bench/pyarrow_loader.py`
//! (run with the path this bench prints).
//!
//! `cargo bench -p s3-trainer --bench loader --profile dev` (env `N`, default 64).

use std::time::Instant;

use s3_shards::samples_table;
use s3_shards::{StoreOptions, WriterOptions, open_store, synthetic};
use s3_trainer::loader::{Loaded, Loader, LoaderConfig};
use s3_trainer::sampler::{Sampler, SamplerState};

fn main() {
    let n: usize = std::env::var("N").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = std::env::temp_dir().join("s3-loader-bench");
    let _ = std::fs::remove_dir_all(&dir);
    let local = open_store(dir.to_str().unwrap(), &StoreOptions::default()).unwrap();
    rt.block_on(synthetic::populate(local.store(), 2, n / 2, 1, WriterOptions::default())).unwrap();
    let server = s3_test_support::S3Server::start();
    let s3_opts =
        StoreOptions::endpoint_with_keys(&server.endpoint(), s3_test_support::ACCESS_KEY, s3_test_support::SECRET_KEY);
    let s3 = open_store(&server.url("bench"), &s3_opts).unwrap();
    rt.block_on(synthetic::populate(s3.store(), 2, n / 2, 1, WriterOptions::default())).unwrap();
    println!("{n} synthetic 128³ samples in 16-row groups; one loader thread (decode + checksum + flip + z-norm)");
    for (name, loc) in [("local", &local), ("s3 (loopback)", &s3)] {
        let rows = rt.block_on(samples_table::read(loc.store().as_ref())).unwrap();
        let sampler = Sampler::from_rows(&rows, 1, 4);
        let positions = sampler.rank_positions(SamplerState::default(), 0, 1);
        let t = Instant::now();
        let got = Loader::start(loc.store().clone(), positions, LoaderConfig::default())
            .filter(|l| matches!(l, Loaded::Item(_)))
            .count();
        let rate = got as f64 / t.elapsed().as_secs_f64();
        println!("{name:<14} {rate:7.1} samples/s");
    }
    println!("pyarrow reference: python trainer/bench/pyarrow_loader.py {}", dir.display());
}
