//! Evaluation and inference: Dice at each click count on the shards' val samples
//! ([`eval`]) or on the source cases in their own geometry ([`source_eval`]),
//! prediction for one image ([`predict`]), and how per-class predictions become one
//! label map ([`class_map`]).
//!
//! May import: [`crate::model`], [`crate::training`] (clicks, stage, checkpoints),
//! [`crate::data`], `s3_ingest` (to read source cases), `s3_shards`.

pub mod class_map;
pub mod eval;
pub mod leakage;
pub mod predict;
pub mod source_eval;
