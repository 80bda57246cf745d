//! Small JSON documents on a store: written with one PUT (atomic on every backend), read whole.

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Result, ShardError};

/// Serialises `value` (pretty) and stores it under `path` in one PUT.
///
/// One PUT is atomic everywhere we write: S3 makes an object visible only once its
/// upload is complete, `LocalFileSystem` writes a temporary file and renames it over
/// the key, `InMemory` swaps the entry. A concurrent reader sees the old document or
/// the new one, never a mix.
pub async fn put_json<T: Serialize>(store: &dyn ObjectStore, path: &Path, value: &T) -> Result<()> {
    let mut bytes =
        serde_json::to_vec_pretty(value).map_err(|source| ShardError::Json { path: path.clone(), source })?;
    bytes.push(b'\n');
    store.put(path, PutPayload::from(bytes)).await.map_err(|e| ShardError::store("put", path, e))?;
    Ok(())
}

/// Reads and parses the document at `path`.
pub async fn get_json<T: DeserializeOwned>(store: &dyn ObjectStore, path: &Path) -> Result<T> {
    let bytes = get_bytes(store, path).await?;
    serde_json::from_slice(&bytes).map_err(|source| ShardError::Json { path: path.clone(), source })
}

/// Reads a whole object; a missing key is [`ShardError::NotFound`].
pub async fn get_bytes(store: &dyn ObjectStore, path: &Path) -> Result<bytes::Bytes> {
    match store.get(path).await {
        Ok(r) => r.bytes().await.map_err(|e| ShardError::store("get", path, e)),
        Err(object_store::Error::NotFound { .. }) => Err(ShardError::NotFound(path.to_string())),
        Err(e) => Err(ShardError::store("get", path, e)),
    }
}
