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
pub mod checkpoint;
pub mod class_map;
pub mod clicks;
pub mod collective;
pub mod config;
pub mod device;
mod error;
pub mod eval;
pub mod fixture;
pub mod io_runtime;
pub mod launch_env;
pub mod loader;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod plots;
pub mod predict;
pub mod row_cache;
pub mod run_identity;
pub mod sampler;
pub mod schedule;
pub mod source_eval;
pub mod stage;
pub mod step;
pub mod train;
pub mod watchdog;
pub mod weights;

pub use error::{Result, TrainError};
