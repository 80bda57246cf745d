//! Data: which samples an epoch visits and in what order ([`sampler`]), reading them
//! from the shards on object storage ([`loader`]) through an in-memory row-group
//! cache ([`row_cache`]), and a node-local copy of the shards on disk
//! ([`shard_cache`]).
//!
//! May import: `s3_shards`, [`crate::error`], `s3_shards::io_runtime`. Nothing
//! of training or evaluation.

pub mod loader;
pub mod row_cache;
pub mod sampler;
pub mod shard_cache;
