//! The trainer library's error type.

/// What can go wrong in the trainer library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// A weights file could not be read, written or matched to the model.
    #[error("weights {file}: {reason}")]
    Weights {
        /// The file.
        file: String,
        /// What went wrong.
        reason: String,
    },
    /// A configuration is invalid.
    #[error("config: {0}")]
    Config(String),
    /// Reading a file failed.
    #[error("{file}: {error}")]
    Io {
        /// The file.
        file: String,
        /// The I/O error.
        /// (Not a `#[source]`: the message already says it, and error-chain
        /// printing would repeat it.)
        error: std::io::Error,
    },
    /// The gradient all-reduce between ranks failed.
    #[error("collective: {0}")]
    Collective(String),
    /// The device collective (NCCL, the CUDA driver under it) failed.
    #[error("collective: {what}")]
    CollectiveDevice {
        /// What this rank was doing.
        what: String,
        /// The NCCL or driver error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A sample could not be read from the store, even after retries: the run stops
    /// (a resume continues exactly) rather than train without it.
    #[error("reading {sample_id}")]
    Read {
        /// The sample.
        sample_id: String,
        /// The store error.
        #[source]
        source: Box<s3_shards::ShardError>,
    },
    /// Shards could not be read (boxed: the store error is large, and this is the
    /// rare path).
    #[error(transparent)]
    Shards(Box<s3_shards::ShardError>),
}

impl From<s3_shards::ShardError> for TrainError {
    fn from(e: s3_shards::ShardError) -> Self {
        TrainError::Shards(Box::new(e))
    }
}

/// Result alias.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
