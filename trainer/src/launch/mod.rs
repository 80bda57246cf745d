//! A rank in its job: where it stands ([`launch_env`], DESIGN §10), the collective
//! over its peers ([`collective`]) and its compute device ([`device`]). (The one I/O
//! runtime its store access runs on is `s3_shards::io_runtime`, shared by every program.)
//!
//! May import: [`crate::error`], `s3_shards`. Everything else builds on it.

pub mod collective;
pub mod device;
pub mod launch_env;
