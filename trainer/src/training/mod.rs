//! Training: the stage file ([`stage`]), the loop ([`train`]) over steps ([`step`])
//! with click simulation ([`clicks`]), the loss ([`loss`]) and learning-rate
//! schedule ([`schedule`]); checkpoints and the run identity a resume checks
//! ([`checkpoint`], [`run_identity`]); what a run starts from ([`run_inputs`]); metrics and their plots ([`metrics`],
//! [`plots`]); the step watchdog ([`watchdog`]).
//!
//! May import: [`crate::model`], [`crate::data`], [`crate::launch`], `s3_shards`
//! (whose `run_folder` is the run folder's contract). Evaluation imports from here,
//! never the reverse.

pub mod checkpoint;
pub mod clicks;
pub mod loss;
pub mod metrics;
pub mod plots;
pub mod run_identity;
pub mod run_inputs;
pub mod run_settings;
pub mod run_spec;
pub mod schedule;
pub mod stage;
pub mod step;
pub mod train;
pub mod watchdog;
