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
    /// A settings file (stage file, cluster profile) is not the TOML it should be.
    #[error("{file}: {source}")]
    Parse {
        /// The file, and the table within it where that is the problem.
        file: String,
        /// What the parser said.
        #[source]
        source: toml::de::Error,
    },
    /// The command needs a flag it was not given.
    #[error("{flag} is needed to {what}")]
    NeedsFlag {
        /// The flag (`--manifest`).
        flag: &'static str,
        /// What it is needed for.
        what: &'static str,
    },
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
