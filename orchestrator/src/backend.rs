//! Where a stage's ranks run: one small trait, one module per backend, one function
//! from a name to a backend (object_store's shape). The local backend runs them as
//! processes here; Slurm and Kubernetes render the same [`Job`] into an sbatch
//! script or manifests.

use crate::error::{OrchError, Result};
use crate::plan::Job;
use crate::settings::Settings;

pub mod files;
pub mod k8s;
pub mod local;
pub mod slurm;

/// A submitted job, as its scheduler knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submission {
    /// Scheduler ids (local: one process id per rank).
    pub ids: Vec<String>,
}

/// How a job ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobEnd {
    /// Each rank's exit code (None: killed by a signal).
    pub exit_codes: Vec<Option<i32>>,
    /// The first rank that failed (not 0, not 75), if any.
    pub failed_rank: Option<usize>,
}

/// A scheduler.
pub trait Backend {
    /// `local`, `slurm`, `k8s`.
    fn name(&self) -> &'static str;
    /// Exactly what would be submitted (the dry run prints it).
    fn render(&self, job: &Job) -> String;
    /// Starts the job.
    fn submit(&self, job: &Job) -> Result<Submission>;
    /// Blocks until the job ended; on the first failing rank the others are stopped.
    fn wait(&self, job: &Job, submission: &Submission) -> Result<JobEnd>;
    /// Stops the job.
    fn cancel(&self, submission: &Submission) -> Result<()>;
    /// Whether the scheduler still runs (or holds) the job, for `status`. When it
    /// cannot tell, true: an attempt is never marked failed on a guess.
    fn is_running(&self, submission: &Submission) -> bool;
    /// Whether its jobs record their own attempts in the ledger (`s3-orch job ...`)
    /// and the scheduler holds the chain: launching then submits and returns, the
    /// next stage waiting on a scheduler dependency. Otherwise the launcher waits
    /// for each job and records it.
    fn records_in_job(&self) -> bool {
        false
    }
}

/// The backend `name`, set up with the launch settings (the Slurm and Kubernetes
/// backends take their partition, image, namespace, ... from them).
pub fn backend(name: &str, settings: &Settings) -> Result<Box<dyn Backend>> {
    match name {
        "local" => Ok(Box::new(local::Local::new(settings)?)),
        "slurm" => Ok(Box::new(slurm::Slurm::new(settings)?)),
        "k8s" => Ok(Box::new(k8s::K8s::new(settings)?)),
        other => Err(OrchError::Setting {
            name: "backend",
            value: other.to_string(),
            expected: "local, slurm or k8s".into(),
        }),
    }
}

/// The backend a ledger names, to poll or cancel an attempt it submitted.
pub fn by_name(name: &str) -> Result<Box<dyn Backend>> {
    backend(name, &Settings::default())
}

/// `s` as one word of a POSIX shell command line.
pub(crate) fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}
