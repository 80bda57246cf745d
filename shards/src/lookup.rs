//! Finding a sample by id in a published store.

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::path::Path;

use crate::error::{Result, ShardError};
use crate::index::ShardIndex;
use crate::reader::ShardReader;
use crate::samples_table;

/// Where a sample is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// Shard key.
    pub shard: Path,
    /// Row in the shard.
    pub row: u64,
}

/// Finds `sample_id` (`dataset/task/case/label`) through `samples.parquet`, or, for an
/// index without one, by scanning the non-blob columns of that task's shards.
pub async fn find_sample(store: &Arc<dyn ObjectStore>, index: &ShardIndex, sample_id: &str) -> Result<Location> {
    if index.samples.is_some() {
        let rows = samples_table::read(store.as_ref()).await?;
        return rows
            .into_iter()
            .find(|r| r.sample_id == sample_id)
            .map(|r| Location { shard: Path::from(r.shard.as_str()), row: r.row as u64 })
            .ok_or_else(|| ShardError::NotFound(format!("sample {sample_id}")));
    }
    let mut parts = sample_id.splitn(3, '/');
    let (dataset, task) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    for shard in index.shards.iter().filter(|s| s.dataset == dataset && s.task == task) {
        let path = Path::from(shard.path.as_str());
        let reader = ShardReader::open(store.clone(), &path).await?;
        if let Some(row) = reader.headers().await?.iter().position(|h| h.sample_id == sample_id) {
            return Ok(Location { shard: path, row: row as u64 });
        }
    }
    Err(ShardError::NotFound(format!("sample {sample_id}")))
}
