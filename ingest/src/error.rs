//! The ingest library's error type.

/// Why a case could not be read or processed. Every variant is a *quarantine
/// reason*: the case is recorded with [`IngestError::to_string`] and the run goes on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// The file is not NIfTI-1 (wrong header size or magic).
    #[error("{file}: not a NIfTI-1 file: {reason}")]
    NotNifti {
        /// File name.
        file: String,
        /// What was found.
        reason: String,
    },
    /// NIfTI-2 and other valid-but-unsupported inputs.
    #[error("{file}: unsupported: {reason}")]
    Unsupported {
        /// File name.
        file: String,
        /// What is unsupported.
        reason: String,
    },
    /// A header that contradicts itself or the limits.
    #[error("{file}: invalid header: {reason}")]
    BadHeader {
        /// File name.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// The voxel data is shorter than the header promises, or the gzip stream is corrupt.
    #[error("{file}: truncated or corrupt data: {reason}")]
    Truncated {
        /// File name.
        file: String,
        /// What happened.
        reason: String,
    },
    /// Voxel values that cannot be used (NaN/Inf, non-integer labels, ...).
    #[error("{file}: bad voxel values: {reason}")]
    BadValues {
        /// File name.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// Image and label do not describe the same grid.
    #[error("image/label mismatch: {0}")]
    Mismatch(String),
    /// The label map has no foreground at all.
    #[error("label map {0} is empty (no voxel > 0)")]
    EmptyLabel(String),
    /// Reading a file failed.
    #[error("{file}: {error}")]
    Io {
        /// File name.
        file: String,
        /// The I/O error.
        /// (Not a `#[source]`: the message already says it, and error-chain
        /// printing would repeat it.)
        error: std::io::Error,
    },
    /// The catalogue is invalid.
    #[error("catalogue {path}: {reason}")]
    Catalog {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A dataset source could not be listed or understood.
    #[error("dataset {dataset}/{task}: {reason}")]
    Source {
        /// Dataset.
        dataset: String,
        /// Task.
        task: String,
        /// What is wrong.
        reason: String,
    },
    /// Shard or store errors.
    #[error(transparent)]
    Shards(#[from] s3_shards::ShardError),
}

/// Result alias.
pub type Result<T, E = IngestError> = std::result::Result<T, E>;
