//! `index.json`: the published list of shards of a store, written last.
//!
//! # Publication protocol
//! 1. Shards are written (each complete before it is visible, see [`crate::writer`]).
//! 2. Label manifests (`labels/<dataset>.json`) and `samples.parquet` are written.
//! 3. `index.json` is written with a single PUT, which every backend makes atomic.
//!
//! A reader starts from `index.json`: everything it names already exists in full,
//! and its shard hashes let the reader detect anything changed since. Until the
//! first index is published, a store has no readable dataset; a re-publication
//! replaces the old index in one step.

use std::collections::BTreeMap;

use object_store::ObjectStore;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::error::{Result, ShardError};
use crate::json;
use crate::writer::ShardMeta;

/// Key of the index at the store root.
pub const INDEX_KEY: &str = "index.json";
/// Version of the index document this build writes and reads.
pub const INDEX_VERSION: u32 = 1;

pub use crate::hex_u64;

/// Who made the index and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Creation {
    /// RFC 3339 UTC time.
    pub at: String,
    /// Program and version.
    pub tool: String,
    /// Host name, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

impl Creation {
    /// Now, by `tool`.
    pub fn now(tool: &str) -> Creation {
        Creation {
            at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            tool: tool.to_string(),
            host: std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_string()).filter(|h| !h.is_empty()),
        }
    }
}

/// A file other than a shard that the index vouches for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    /// Key relative to the store root.
    pub path: String,
    /// Rows, for tables.
    pub rows: u64,
    /// Size.
    pub bytes: u64,
    /// xxh3-64 of the file.
    #[serde(with = "hex_u64")]
    pub xxh3: u64,
}

/// Totals of one task.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Shard files.
    pub shards: u64,
    /// Samples.
    pub samples: u64,
    /// Bytes of shard files.
    pub bytes: u64,
}

/// Totals of one dataset, overall and per task.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetTotals {
    /// All tasks together.
    #[serde(flatten)]
    pub total: Totals,
    /// Per task.
    pub tasks: BTreeMap<String, Totals>,
}

/// The `index.json` document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardIndex {
    /// [`INDEX_VERSION`].
    pub format_version: u32,
    /// Who and when.
    pub created: Creation,
    /// Every shard, sorted by path.
    pub shards: Vec<ShardMeta>,
    /// Per-dataset totals derived from `shards`.
    pub datasets: BTreeMap<String, DatasetTotals>,
    /// The sample table (`samples.parquet`), when written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<FileRef>,
    /// Label manifests, one per dataset.
    #[serde(default)]
    pub labels: Vec<FileRef>,
}

impl ShardIndex {
    /// An index over `shards` (sorted by path, totals computed).
    pub fn new(tool: &str, mut shards: Vec<ShardMeta>) -> ShardIndex {
        shards.sort_by(|a, b| a.path.cmp(&b.path));
        let mut datasets: BTreeMap<String, DatasetTotals> = BTreeMap::new();
        for s in &shards {
            let d = datasets.entry(s.dataset.clone()).or_default();
            for t in [&mut d.total, d.tasks.entry(s.task.clone()).or_default()] {
                t.shards += 1;
                t.samples += s.rows;
                t.bytes += s.bytes;
            }
        }
        ShardIndex {
            format_version: INDEX_VERSION,
            created: Creation::now(tool),
            shards,
            datasets,
            samples: None,
            labels: Vec::new(),
        }
    }

    /// Total samples over all shards.
    pub fn total_samples(&self) -> u64 {
        self.shards.iter().map(|s| s.rows).sum()
    }

    /// Publishes this index as `index.json` (one atomic PUT; see the module docs).
    pub async fn publish(&self, store: &dyn ObjectStore) -> Result<()> {
        json::put_json(store, &Path::from(INDEX_KEY), self).await
    }

    /// Loads `index.json`, refusing versions this build does not know.
    pub async fn load(store: &dyn ObjectStore) -> Result<ShardIndex> {
        let path = Path::from(INDEX_KEY);
        let bytes = json::get_bytes(store, &path).await?;
        #[derive(Deserialize)]
        struct Probe {
            format_version: u32,
        }
        let probe: Probe =
            serde_json::from_slice(&bytes).map_err(|source| ShardError::Json { path: path.clone(), source })?;
        if probe.format_version != INDEX_VERSION {
            return Err(ShardError::UnsupportedVersion { path, found: probe.format_version, supported: INDEX_VERSION });
        }
        serde_json::from_slice(&bytes).map_err(|source| ShardError::Json { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(path: &str, ds: &str, task: &str, rows: u64) -> ShardMeta {
        ShardMeta {
            path: path.into(),
            dataset: ds.into(),
            task: task.into(),
            rows,
            bytes: rows * 10,
            xxh3: u64::MAX - rows,
        }
    }

    #[test]
    fn totals_and_order() {
        let idx = ShardIndex::new("t", vec![meta("b", "B", "x", 3), meta("a", "A", "t1", 2), meta("c", "A", "t2", 5)]);
        assert_eq!(idx.shards.iter().map(|s| s.path.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        let a = &idx.datasets["A"];
        assert_eq!(a.total, Totals { shards: 2, samples: 7, bytes: 70 });
        assert_eq!(a.tasks["t2"].samples, 5);
        assert_eq!(idx.total_samples(), 10);
    }

    #[test]
    fn hashes_survive_json_exactly() {
        let idx = ShardIndex::new("t", vec![meta("a", "A", "t", 1)]);
        let text = serde_json::to_string(&idx).unwrap();
        assert!(text.contains("\"fffffffffffffffe\""), "{text}");
        assert_eq!(serde_json::from_str::<ShardIndex>(&text).unwrap(), idx);
    }
}
