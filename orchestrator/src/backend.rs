//! Where a stage's ranks run: one small trait, one module per backend, one function
//! from a name to a backend (object_store's shape). The local backend runs them as
//! processes here; Slurm and Kubernetes render the same [`Job`] into an sbatch
//! script or manifests.

use crate::error::{OrchError, Result};
use crate::plan::Job;

pub mod local;

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
    /// Whether the scheduler still runs the job (for `status`).
    fn is_running(&self, submission: &Submission) -> bool;
}

/// A backend by name.
pub fn backend(name: &str) -> Result<Box<dyn Backend>> {
    match name {
        "local" => Ok(Box::new(local::Local::default())),
        "slurm" | "k8s" => Err(OrchError::Config(format!(
            "the {name} backend is not built yet (local works today; Slurm and Kubernetes are the next issues)"
        ))),
        other => Err(OrchError::Config(format!("unknown backend {other:?} (local, slurm, k8s)"))),
    }
}
