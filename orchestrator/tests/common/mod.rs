//! Helpers the orchestrator's test binaries share (`mod common;` in each).
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::Output;

use s3_shards::{StoreOptions, open_store};

/// A workspace binary next to `s3-orch` (`cargo test --workspace` builds them all).
pub fn bin(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_s3-orch")).with_file_name(name);
    assert!(p.exists(), "{} missing: `cargo test --workspace` builds it", p.display());
    p
}

/// A process's stdout and stderr, for failure messages.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// (sample id, split, foreground voxels) of every published sample, sorted: what two
/// ingests of the same catalogue must agree on.
pub fn samples(store: &Path) -> Vec<(String, String, i64)> {
    let loc = open_store(store.to_str().unwrap(), &StoreOptions::default()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut v: Vec<_> = rt
        .block_on(s3_shards::samples_table::read(loc.store().as_ref()))
        .unwrap()
        .into_iter()
        .map(|r| (r.sample_id, format!("{:?}", r.split), r.fg_voxels))
        .collect();
    v.sort();
    v
}

/// Every rank's printed weights digest, from `rank-R.log` in `log_dir`.
pub fn digests(log_dir: &Path) -> Vec<String> {
    (0..)
        .map_while(|r| std::fs::read_to_string(log_dir.join(format!("rank-{r}.log"))).ok())
        .map(|t| t.split("weights xxh3 ").nth(1).map(|s| s.trim().to_string()).unwrap_or_default())
        .collect()
}

/// A small published store at `dir`: one synthetic dataset of 6 samples in row
/// groups of 2, enough for a few steps of two ranks.
pub fn small_store(dir: &Path) {
    small_store_at(dir.to_str().unwrap(), &StoreOptions::default());
}

/// [`small_store`] at any store URL.
#[allow(dead_code)] // not every test binary uses it
pub fn small_store_at(url: &str, options: &StoreOptions) {
    let loc = open_store(url, options).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let opts = s3_shards::WriterOptions { row_group_rows: 2, ..Default::default() };
    rt.block_on(s3_shards::synthetic::populate(loc.store(), 1, 6, 1, opts)).unwrap();
}
