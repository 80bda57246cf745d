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
    /// A stage's settings cannot be trained or evaluated as given.
    #[error("stage {stage}: {reason}")]
    Stage {
        /// The stage's name.
        stage: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// A file (stage file, catalogue, run config, fixture, metrics segment) is not
    /// what it should be.
    #[error("{file}")]
    Parse {
        /// The file, or the object's key.
        file: String,
        /// What the parser said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A flag's value cannot be used.
    #[error("{flag} {value:?}: expected {expected}")]
    Flag {
        /// The flag (`--init-xxh3`).
        flag: &'static str,
        /// Its value.
        value: String,
        /// What it should be.
        expected: &'static str,
    },
    /// The launch environment (DESIGN §10) or the flags that stand in for it do not
    /// describe a rank of a job.
    #[error("launch: {0}")]
    Launch(String),
    /// The compute device cannot be used.
    #[error("device {device}: {reason}")]
    Device {
        /// The device as named (`cuda:1`).
        device: String,
        /// Why not.
        reason: String,
    },
    /// The data store does not hold what the run needs.
    #[error("{store}: {reason}")]
    Data {
        /// The store (redacted URL) or the object in it.
        store: String,
        /// What is missing or changed.
        reason: String,
    },
    /// A resume would not continue the run in its folder.
    #[error("not resuming: {0}")]
    Resume(String),
    /// The run folder has no checkpoint to load.
    #[error("{run}: no checkpoint yet (checkpoints/latest.json)")]
    NoCheckpoint {
        /// The run folder.
        run: String,
    },
    /// A prediction request (classes, clicks, image) cannot be answered.
    #[error("predict: {0}")]
    Predict(String),
    /// An input image cannot be used.
    #[error("{what}")]
    Input {
        /// Which input.
        what: String,
        /// Why not.
        #[source]
        source: Box<s3_ingest::IngestError>,
    },
    /// A source case could not be reached while evaluating on the source images.
    #[error("source evaluation: {what}")]
    SourceEval {
        /// The dataset, task or case.
        what: String,
        /// The catalogue, store or listing error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A benchmark evaluation would score cases the run trained on.
    #[error(
        "refusing to evaluate: {count} benchmark case(s) are in the run's training data:\n  {}",
        cases.join("\n  ")
    )]
    Leakage {
        /// How many.
        count: usize,
        /// `dataset/task/case: why`, each.
        cases: Vec<String>,
    },
    /// The metrics of a run could not be written.
    #[error("metrics: {what}")]
    Metrics {
        /// The row or segment.
        what: String,
        /// The CSV writer's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Rendering the metrics plot failed (plotters' errors are text).
    #[error("plotting metrics: {0}")]
    Plot(String),
    /// A URL does not name what it should.
    #[error("{url}: {reason}")]
    Url {
        /// The URL, redacted.
        url: String,
        /// What it should name.
        reason: &'static str,
    },
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
    /// A stop was asked for (SIGTERM) before training began: nothing was trained or
    /// written by this attempt past that point, and a relaunch starts where it was.
    #[error("stopped while {0}")]
    Stopped(&'static str),
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
