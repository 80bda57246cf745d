//! Orchestration of the SAM-Med3D pipeline: a stage becomes a [`plan::Job`] (one
//! `s3-train` process per rank with the launch-contract environment), a
//! [`backend::Backend`] runs it (local processes, Slurm, Kubernetes), [`launch`] gates and
//! records every attempt in the run [`ledger`]. [`demo`] is the README's
//! end-to-end CPU run on a phantom corpus.
//!
//! The launch path: `launch::launch_stage` → ledger check (succeeded? gate) →
//! `plan::train_job` → `Backend::render` (dry run stops here) → `submit` → ledger
//! (running) → `wait` → ledger (succeeded / preempted / failed, final checkpoint).
#![deny(missing_docs)]

pub mod backend;
pub mod demo;
mod error;
pub mod job_hooks;
pub mod launch;
pub mod ledger;
pub mod outcome;
pub mod plan;
pub mod run_store;
pub mod settings;
pub mod stage;
pub mod stage_metrics;

pub use error::{GateError, OrchError, Result};
