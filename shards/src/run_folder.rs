//! The run folder of a training stage (DESIGN §10), defined once: the trainer
//! writes it, the launcher and its job hooks read it, both through these names.
//!
//! ```text
//! <run>/<stage>/checkpoints/latest.json        → Latest { step, dir }
//! <run>/<stage>/checkpoints/step-N/state.json   (StateView is the launcher's view of it)
//! <run>/<stage>/checkpoints/step-N/weights.safetensors
//! <run>/<stage>/metrics/step-N.csv              metric segments, one per checkpoint
//! <run>/<stage>/eval/<split>.json, .csv, -groups.csv  evaluation reports (crate::eval_report)
//! ```

use serde::{Deserialize, Serialize};

/// The pointer to the newest complete checkpoint.
pub const LATEST: &str = "checkpoints/latest.json";
/// Where the metric segments are.
pub const METRICS_DIR: &str = "metrics";
/// A checkpoint folder's training state.
pub const STATE_FILE: &str = "state.json";
/// A checkpoint folder's weights.
pub const WEIGHTS_FILE: &str = "weights.safetensors";

/// `checkpoints/latest.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latest {
    /// Step of the checkpoint.
    pub step: u64,
    /// Its folder.
    pub dir: String,
}

/// `state.json` of checkpoint folder `dir`.
pub fn state_key(dir: &str) -> String {
    format!("{dir}/{STATE_FILE}")
}

/// The weights of checkpoint folder `dir`.
pub fn weights_key(dir: &str) -> String {
    format!("{dir}/{WEIGHTS_FILE}")
}

/// The evaluation report of split `name` (`eval/val.json`).
pub fn eval_report_key(name: &str) -> String {
    format!("eval/{name}.json")
}

/// Its per-sample table (`eval/val.csv`).
pub fn eval_table_key(name: &str) -> String {
    format!("eval/{name}.csv")
}

/// Its per-group table (`eval/val-groups.csv`).
pub fn eval_groups_key(name: &str) -> String {
    format!("eval/{name}-groups.csv")
}

/// The groups as Markdown tables (by benchmark group, category, dataset).
pub fn eval_markdown_key(name: &str) -> String {
    format!("eval/{name}.md")
}

/// What the launcher reads of a `state.json`: the run's config digest and the epoch
/// reached (the trainer's `CheckpointState` holds more; its test parses it as this).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct StateView {
    /// The run's identity.
    pub identity: IdentityView,
    /// The sampler's position.
    pub sampler: SamplerView,
}

/// Part of [`StateView`].
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct IdentityView {
    /// Digest of the run's settings.
    pub config_digest: String,
}

/// Part of [`StateView`].
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct SamplerView {
    /// Epoch reached.
    pub epoch: u64,
}
