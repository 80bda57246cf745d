//! The orchestrator library's error type.

/// What can go wrong launching, tracking or cancelling a stage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OrchError {
    /// Store access failed (the ledger, a checkpoint, logs).
    #[error(transparent)]
    Shards(#[from] s3_shards::ShardError),
    /// A stage cannot start: what is missing or wrong, and what to do.
    #[error("{0}")]
    Refused(String),
    /// A setting is invalid.
    #[error("config: {0}")]
    Config(String),
    /// Starting, signalling or waiting for a process failed.
    #[error("{what}")]
    Process {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be read or written.
    #[error("{file}")]
    Io {
        /// The file.
        file: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias.
pub type Result<T, E = OrchError> = std::result::Result<T, E>;
