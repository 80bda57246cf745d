//! The SAM-Med3D shard format on object storage.
//!
//! A published store holds:
//! - `shards/<dataset>/<task>/part-NNNNN.parquet` — zstd Parquet, one row per
//!   (case, label) [`Sample`]: a 128³ int16 crop, its bit-packed mask and metadata
//!   ([`schema::shard_schema`]), written by [`ShardWriter`], read by [`ShardReader`];
//! - `samples.parquet` — the sample table without blobs ([`samples_table`]);
//! - `labels/<dataset>.json` — label manifests with every case's fate ([`LabelManifest`]);
//! - `index.json` — the [`ShardIndex`], published last and atomically.
//!
//! Stores are opened from URLs by [`open_store`]: `file:///abs`, paths, `memory://`,
//! `s3://bucket/prefix`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> s3_shards::Result<()> {
//! use s3_shards::{open_store, ShardReader, StoreOptions, synthetic, write_samples};
//! let loc = open_store("memory://doc-example", &StoreOptions::default())?;
//! let sample = synthetic::ct_like("AMOS22", "default", "case1", 1, 42)?;
//! let shards = write_samples(loc.store().clone(), "AMOS22", "default", [sample.clone()], Default::default()).await?;
//! let reader = ShardReader::open(loc.store().clone(), &shards[0].path.as_str().into()).await?;
//! assert_eq!(reader.read_all().await?, vec![sample]);
//! # Ok(()) }
//! ```
//!
//! # Environment
//! Read only when opening `s3://` URLs: `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, `AWS_REGION`
//! (default `us-east-1`), `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN` and the other `AWS_*` variables `object_store` understands.
#![deny(missing_docs)]

#[cfg(feature = "cli")]
pub mod cli;
mod error;
pub mod eval_report;
pub mod exit;
pub mod hex_u64;
pub mod index;
pub mod io_runtime;
pub mod json;
pub mod labels;
pub mod lookup;
pub mod mask;
pub mod preview;
pub mod publish;
pub mod quantize;
pub mod reader;
pub mod run_folder;
pub mod sample;
pub mod samples_table;
pub mod schema;
pub mod store;
pub mod synthetic;
pub mod verify;
pub mod writer;

pub use error::{Result, ShardError};
pub use index::{INDEX_KEY, ShardIndex};
pub use labels::{CaseFate, LabelManifest};
pub use publish::publish;
pub use reader::ShardReader;
pub use sample::{SIDE, Sample, SampleMeta, Split, VOXELS};
pub use store::{Retry, StoreLocation, StoreOptions, open_store};
pub use writer::{ShardMeta, ShardWriter, WriterOptions, write_samples};
