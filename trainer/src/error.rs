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
    /// A sample could not be read from the store, even after retries: the run stops
    /// (a resume continues exactly) rather than train without it.
    #[error("reading {sample_id}")]
    Read {
        /// The sample.
        sample_id: String,
        /// The store error.
        #[source]
        source: s3_shards::ShardError,
    },
    /// Shards could not be read.
    #[error(transparent)]
    Shards(#[from] s3_shards::ShardError),
}

/// Result alias.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
