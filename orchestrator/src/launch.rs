//! Launching a stage (DESIGN §10): idempotent (a succeeded stage is skipped, a
//! failed or preempted one continues from its checkpoint as the next attempt),
//! stage 2 gated on a stage-1 final checkpoint that the ledger records and whose
//! hash verifies, every attempt recorded in the ledger before and after it runs.
//!
//! One file per launch ([`train`], [`eval`], [`ingest`]), what they share around a
//! job ([`attempt`]), and what follows a run once launched ([`follow`]). How an
//! attempt ended is read by [`crate::outcome`], which the job hooks use too.

mod attempt;
mod eval;
pub mod follow;
mod ingest;
pub mod pipeline;
mod train;

pub use eval::launch_eval;
pub use follow::{cancel, log_path, status, wait_stage};
pub use ingest::{IngestLaunch, launch_ingest};
pub use train::{StageLaunch, launch_stage};

pub use crate::run_store::{join, object_xxh3};

/// What a launch did.
#[derive(Debug)]
pub enum Launched {
    /// The stage had succeeded already; nothing was started.
    AlreadySucceeded,
    /// `--dry-run`: what would be submitted.
    DryRun(String),
    /// The attempt ran; its stage record after it.
    Ran(crate::ledger::StageRecord),
    /// Submitted to a scheduler that holds the chain; its record as submitted
    /// ([`wait_stage`] follows it).
    Submitted(crate::ledger::StageRecord),
}
