//! Publishing a store: sample table, then `index.json` last (see [`crate::index`]).

use std::sync::Arc;

use object_store::ObjectStore;

use crate::error::Result;
use crate::index::{FileRef, ShardIndex};
use crate::labels::labels_path;
use crate::reader::hash_object;
use crate::samples_table;
use crate::writer::ShardMeta;

/// Writes `samples.parquet` for `shards`, records the label manifests of `datasets`
/// already on the store, and publishes `index.json` — in that order, so the index
/// only ever names complete files.
pub async fn publish(
    store: &Arc<dyn ObjectStore>,
    tool: &str,
    shards: Vec<ShardMeta>,
    datasets: &[String],
) -> Result<ShardIndex> {
    let mut index = ShardIndex::new(tool, shards);
    let rows = samples_table::rows_from_shards(store, &index.shards).await?;
    index.samples = Some(samples_table::write(store.as_ref(), &rows).await?);
    for d in datasets {
        let path = labels_path(d);
        let (bytes, xxh3) = hash_object(store.as_ref(), &path).await?;
        index.labels.push(FileRef { path: path.to_string(), rows: 0, bytes, xxh3 });
    }
    index.publish(store.as_ref()).await?;
    Ok(index)
}
