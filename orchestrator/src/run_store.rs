//! Reading the run folder's store: paths under a root, the I/O runtime of the
//! launcher and the job hooks, whole-object hashes.

use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};
use xxhash_rust::xxh3::Xxh3;

use crate::error::Result;

/// `<root>/<name>` for a path or URL.
pub fn join(root: &str, name: &str) -> String {
    format!("{}/{}", root.trim_end_matches('/'), name)
}

/// The folder of an attempt's logs in its run folder: `logs/<stage>/attempt-<N>`.
pub fn logs_key(stage: &str, attempt: u32) -> String {
    format!("logs/{stage}/attempt-{attempt}")
}

/// The process's store I/O runtime (one for every program: see `s3_shards::io_runtime`).
pub(crate) fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    Ok(s3_shards::io_runtime::io_runtime()?)
}

/// xxh3 of a whole object, streamed.
pub async fn object_xxh3(store: &dyn ObjectStore, key: &str) -> Result<u64> {
    let path = ObjPath::from(key);
    let got = store.get(&path).await.map_err(|e| match e {
        object_store::Error::NotFound { .. } => s3_shards::ShardError::NotFound(key.to_string()),
        e => s3_shards::ShardError::Store { op: "get", path: path.clone(), source: e },
    })?;
    let mut h = Xxh3::new();
    let mut stream = got.into_stream();
    while let Some(chunk) = stream.try_next().await.map_err(|e| s3_shards::ShardError::Store {
        op: "get",
        path: path.clone(),
        source: e,
    })? {
        h.update(&chunk);
    }
    Ok(h.digest())
}
