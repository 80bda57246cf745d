//! The ingest library's error type.

/// Why a case, a task or a run failed.
///
/// Case-level variants are *quarantine reasons*: the case is recorded with
/// [`IngestError::to_string`] and the run goes on. [`IngestError::Output`],
/// [`IngestError::SourceUnavailable`], [`IngestError::WorkerCount`], [`IngestError::Conflict`]
/// and [`IngestError::Incomplete`] end the run (nothing new is published).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// The file is not NIfTI (wrong header size or magic).
    #[error("{file}: not a NIfTI file: {reason}")]
    NotNifti {
        /// File name.
        file: String,
        /// What was found.
        reason: String,
    },
    /// Not an image of any supported format (no MetaImage/NRRD header, no DICOM file).
    #[error("{file}: not a readable image: {reason}")]
    NotImage {
        /// File name.
        file: String,
        /// What was found.
        reason: String,
    },
    /// Valid-but-unsupported inputs (Analyze pairs, compressed DICOM, ...).
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
    /// Processing the case panicked (a bug, caught so the run goes on).
    #[error("processing panicked: {0}")]
    Panicked(String),
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
    /// Writing to the output store failed: the run stops, publishes nothing new, and
    /// what was committed before stays (re-run the same command to resume).
    #[error("writing {dataset}/{task} to the output store failed; committed work is kept, re-run to resume")]
    Output {
        /// Dataset.
        dataset: String,
        /// Task.
        task: String,
        /// The store error (boxed: it is large, and this is the rare path).
        #[source]
        source: Box<s3_shards::ShardError>,
    },
    /// The task's journal was written by workers counted differently: resuming with
    /// another N would renumber (and so overwrite or delete) committed shards.
    #[error(
        "{dataset}/{task} was started with --worker I/{journal}; resume it with the same N (not {requested}), \
         or write to a new --out"
    )]
    WorkerCount {
        /// Dataset.
        dataset: String,
        /// Task.
        task: String,
        /// N of the committed records.
        journal: u32,
        /// N of this run.
        requested: u32,
    },
    /// A journal record that should be new already exists: another process is
    /// running the same worker, or it wrote this record before failing.
    #[error("journal record {path} already exists (is the same --worker running twice?); not overwriting it")]
    Conflict {
        /// The record's key.
        path: String,
        /// The store's answer.
        #[source]
        source: object_store::Error,
    },
    /// A remote source object could not be fetched even after the store client's
    /// retries (an outage, not a bad file): the run ends, nothing new is published,
    /// and a re-run fetches the case again. Quarantining it would record a good case
    /// as bad, and a resume would never retry it.
    #[error("reading {key} from the source failed; committed work is kept, re-run to resume")]
    SourceUnavailable {
        /// The source object or prefix.
        key: String,
        /// The store's error (boxed: large, and the rare path).
        #[source]
        source: Box<object_store::Error>,
    },
    /// `merge` found listed cases without a fate; nothing was published.
    #[error("{} listed case(s) have no fate, not publishing: {}", .missing.len(), list_missing(.missing))]
    Incomplete {
        /// The cases, with who listed them.
        missing: Vec<MissingCase>,
    },
    /// Shard or store errors.
    #[error(transparent)]
    Shards(#[from] s3_shards::ShardError),
}

/// A case a worker listed that no journal record accounts for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MissingCase {
    /// Dataset.
    pub dataset: String,
    /// Task.
    pub task: String,
    /// The case (None: the worker never listed the task at all).
    pub case_id: Option<String>,
    /// The worker that listed it (or should have).
    pub worker: u32,
    /// Its worker count.
    pub workers: u32,
}

impl std::fmt::Display for MissingCase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (d, t, w, n) = (&self.dataset, &self.task, self.worker, self.workers);
        match &self.case_id {
            Some(c) => write!(f, "{d}/{t}/{c} (listed by worker {w}/{n})"),
            None => write!(f, "{d}/{t}: worker {w}/{n} never ran"),
        }
    }
}

/// The first few, so a run with thousands missing still prints one readable line.
fn list_missing(missing: &[MissingCase]) -> String {
    const SHOWN: usize = 20;
    let mut s = missing.iter().take(SHOWN).map(ToString::to_string).collect::<Vec<_>>().join(", ");
    if missing.len() > SHOWN {
        s.push_str(&format!(", and {} more", missing.len() - SHOWN));
    }
    s
}

/// Result alias.
pub type Result<T, E = IngestError> = std::result::Result<T, E>;
