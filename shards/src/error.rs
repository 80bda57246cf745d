//! The one error type of the crate.

use object_store::path::Path;

/// Everything that can go wrong reading or writing shards, indexes and manifests.
///
/// Each variant names what failed (the URL, the shard, the sample) and keeps the
/// underlying cause as its `source`, so a binary can print the whole chain once.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShardError {
    /// A store URL could not be understood or the store could not be built.
    #[error("cannot open store {url}: {reason}")]
    StoreUrl {
        /// The URL as given (credentials redacted).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An object-store operation failed.
    #[error("object store: {op} {path}")]
    Store {
        /// What we were doing (`put`, `get`, `list`, ...).
        op: &'static str,
        /// The object involved.
        path: Path,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// Parquet encoding/decoding failed for a shard.
    #[error("parquet error in {path}")]
    Parquet {
        /// The shard.
        path: Path,
        /// The Parquet error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// Arrow array construction or conversion failed.
    #[error("arrow error: {context}")]
    Arrow {
        /// What was being built.
        context: String,
        /// The Arrow error.
        #[source]
        source: arrow::error::ArrowError,
    },
    /// A shard or table does not have the expected columns or types.
    #[error("{path}: schema mismatch: {reason}")]
    Schema {
        /// The file.
        path: Path,
        /// Which column is missing or of the wrong type.
        reason: String,
    },
    /// A sample's stored checksum does not match its image and mask bytes.
    #[error(
        "sample {sample_id} in {shard} (row {row}): checksum mismatch: stored {stored:016x}, computed {computed:016x}"
    )]
    ChecksumMismatch {
        /// The sample.
        sample_id: String,
        /// The shard it came from.
        shard: Path,
        /// Its row in the shard.
        row: usize,
        /// The `checksum` column.
        stored: u64,
        /// xxh3-64 of the bytes read.
        computed: u64,
    },
    /// A whole file's hash differs from the one recorded in the index.
    #[error(
        "{path}: file hash mismatch: index says {expected:016x} ({expected_bytes} bytes), found {found:016x} ({found_bytes} bytes)"
    )]
    FileHashMismatch {
        /// The file.
        path: Path,
        /// xxh3-64 recorded in the index.
        expected: u64,
        /// Size recorded in the index.
        expected_bytes: u64,
        /// xxh3-64 of the stored object.
        found: u64,
        /// Size of the stored object.
        found_bytes: u64,
    },
    /// A sample is malformed (wrong blob length, bad values, ...).
    #[error("invalid sample {sample_id}: {reason}")]
    InvalidSample {
        /// The sample.
        sample_id: String,
        /// What is wrong.
        reason: String,
    },
    /// Data cannot be quantised to int16 (NaN/Inf or wrong length).
    #[error("cannot quantise image: {0}")]
    Quantise(String),
    /// A JSON document (index, label manifest) could not be encoded or decoded.
    #[error("{path}: invalid JSON")]
    Json {
        /// The document.
        path: Path,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// The index has a format version this build does not read.
    #[error("{path}: format version {found} is not supported (this build reads {supported})")]
    UnsupportedVersion {
        /// The document.
        path: Path,
        /// Its version.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// A requested item does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The I/O runtime could not be started (no threads left, or no event loop).
    #[error("starting the store I/O runtime: {0}")]
    Runtime(String),
}

/// Result alias for this crate.
pub type Result<T, E = ShardError> = std::result::Result<T, E>;

impl ShardError {
    /// A failed store request: the operation and the object, the store's error as the cause.
    pub fn store(op: &'static str, path: &Path, source: object_store::Error) -> Self {
        ShardError::Store { op, path: path.clone(), source }
    }
    pub(crate) fn parquet(path: &Path, source: parquet::errors::ParquetError) -> Self {
        ShardError::Parquet { path: path.clone(), source }
    }
    pub(crate) fn arrow(context: impl Into<String>, source: arrow::error::ArrowError) -> Self {
        ShardError::Arrow { context: context.into(), source }
    }
}
