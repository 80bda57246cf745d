//! The SAM-Med3D trainer: the model in burn ([`model::Sam`], configured by
//! [`config::SamConfig`]), weights under the reference's key names ([`weights`]),
//! and parity checks against reference outputs ([`fixture`]).
//!
//! ```no_run
//! use burn::prelude::*;
//! use s3_trainer::{config::SamConfig, model::Sam};
//! let device = Device::flex();
//! let model = Sam::new(&SamConfig::vit_b_ori(), &device);
//! assert_eq!(model.trainable_params(), 100_509_232);
//! ```
#![deny(missing_docs)]

pub mod bench;
pub mod config;
pub mod data;
mod error;
pub mod evaluation;
pub mod fixture;
pub mod launch;
pub mod model;
pub mod training;
pub mod weights;

// The phases' modules by their old short paths (`s3_trainer::sampler`, ...), which
// the binaries, tests and docs use.
pub use data::{loader, row_cache, sampler, shard_cache};
pub use evaluation::{class_map, eval, leakage, predict, source_eval};
pub use launch::{collective, device, launch_env};
pub use training::{
    checkpoint, clicks, loss, metrics, plots, run_identity, run_inputs, run_settings, run_spec, schedule, stage, step,
    train, watchdog,
};

pub use error::{Result, TrainError};
