//! Ingest: raw NIfTI datasets → torchio-exact 1.5 mm, RAS+, per-class 128³ samples →
//! shards, label manifests and an index on object storage (DESIGN §3–§5).
//!
//! - [`catalog`]: the dataset catalogue (`manifests/datasets.toml`).
//! - [`layout`], [`source`]: finding cases (nnU-Net/MSD, TotalSegmentator, pairs) in any store.
//! - [`nifti_io`]: NIfTI-1/2 reading with header checks before allocation; [`formats`]:
//!   MetaImage, NRRD, DICOM series and PNG label stacks into the same [`nifti_io::Volume`].
//! - [`geometry`], [`preprocess`]: the preprocessing of DESIGN §4; [`paste_back`] its inverse for a prediction.
//! - [`case_io`]: one case's image and label from its source.
//! - [`run`], [`journal`]: resumable, partitionable runs and `merge`.
//! - [`synth`]: the phantom corpus.
//!
//! ```no_run
//! use s3_ingest::{catalog::Catalog, run::{run, IngestConfig}};
//! let catalog = Catalog::load("manifests/datasets.toml".as_ref())?;
//! let summary = run(&catalog, &IngestConfig::new("file:///data/shards"), &|_event| {})?;
//! println!("{} quarantined", summary.quarantined());
//! # Ok::<(), s3_ingest::IngestError>(())
//! ```
//!
//! # Environment
//! `${VAR}` in catalogue sources; the `AWS_*` variables for `s3://` sources and outputs.
#![deny(missing_docs)]

pub mod case_io;
pub mod catalog;
pub mod check;
mod error;
pub mod formats;
pub mod geometry;
pub mod image_digest;
pub mod journal;
pub mod layout;
mod nifti2;
mod nifti_header;
pub mod nifti_io;
mod ordered;
pub mod paste_back;
pub mod pattern;
pub mod preprocess;
pub mod run;
pub mod source;
pub mod synth;
pub mod volume;

pub use error::{IngestError, MissingCase, Result};
