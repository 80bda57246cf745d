//! A rank in its job: where it stands ([`launch_env`], DESIGN §10), the collective
//! over its peers ([`collective`]), its compute device ([`device`]) and the one I/O
//! runtime its store access runs on ([`io_runtime`]).
//!
//! May import: [`crate::error`], `s3_shards`. Everything else builds on it.

pub mod collective;
pub mod device;
pub mod io_runtime;
pub mod launch_env;
