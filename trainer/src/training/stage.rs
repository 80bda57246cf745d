//! Stage configuration (`manifests/stages/*.toml`): which data, how long, how fast.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{AttentionMode, Precision};
use crate::error::{Result, TrainError};
use crate::schedule::Schedule;

/// Which datasets a stage trains on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    /// `all`, `pretrain` or `finetune` (flags from `catalog`), or `none` (only `include`).
    #[serde(default = "default_select")]
    pub select: String,
    /// The dataset catalogue, for the flags (relative to the stage file).
    #[serde(default)]
    pub catalog: Option<String>,
    /// Added by name.
    #[serde(default)]
    pub include: Vec<String>,
    /// Removed by name.
    #[serde(default)]
    pub exclude: Vec<String>,
}

impl Default for Selection {
    fn default() -> Self {
        Selection { select: default_select(), catalog: None, include: Vec::new(), exclude: Vec::new() }
    }
}

fn default_select() -> String {
    "all".into()
}

/// Resolution of the training loss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossResolution {
    /// Upsampled logits against the full-resolution mask (the reference).
    #[default]
    Full,
    /// Low-res logits against the mask averaged over each low-res voxel.
    Low,
}

/// Which clicks each training pass shows the decoder (DESIGN §8).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClickMemory {
    /// The newest point only, with the previous low-res logits: how the reference
    /// trains (`--multi_click` off).
    #[default]
    New,
    /// Every point so far (how the reference infers, and how both eval protocols click).
    All,
}

/// A stage: the per-stage numbers of DESIGN §8.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// Stage name (`stage1`, `stage2`, `demo`, ...).
    pub name: String,
    /// Model preset (`vit_b_ori`, `small`).
    #[serde(default = "default_preset")]
    pub preset: String,
    /// Windowed attention variant.
    #[serde(default)]
    pub attention: AttentionMode,
    /// Encoder arithmetic: `f32`, or `bf16` mixed precision (for CUDA).
    #[serde(default)]
    pub precision: Precision,
    /// Data selection.
    #[serde(default)]
    pub datasets: Selection,
    /// Epochs to train.
    pub epochs: u64,
    /// Base learning rate of the image encoder.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Prompt encoder and decoder run at `lr × decoder_lr_factor`.
    #[serde(default = "default_decoder_lr_factor")]
    pub decoder_lr_factor: f64,
    /// AdamW weight decay.
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    /// Samples per micro-batch per rank.
    #[serde(default = "one")]
    pub batch: usize,
    /// Micro-batches per optimiser step.
    #[serde(default = "one")]
    pub accumulation: usize,
    /// Decoder passes per sample (11 in the paper).
    #[serde(default = "default_clicks")]
    pub clicks: usize,
    /// Seed of the sample order, flips and clicks.
    #[serde(default)]
    pub seed: u64,
    /// Learning-rate schedule.
    #[serde(default)]
    pub schedule: Schedule,
    /// Checkpoint every N optimiser steps (and at each epoch end).
    #[serde(default = "default_ckpt")]
    pub checkpoint_every: u64,
    /// Checkpoint folders kept (the newest); older `step-N/` folders are deleted
    /// once the new pointer is written. 0 keeps every checkpoint.
    #[serde(default = "default_keep_last")]
    pub keep_last: usize,
    /// Weights to start from (a checkpoint's safetensors or an official `.pth`).
    #[serde(default)]
    pub init: Option<String>,
    /// The paper-era reference's loss (squared-prediction Dice only) instead of
    /// squared-prediction Dice + BCE (MONAI's `DiceCELoss`).
    #[serde(default)]
    pub legacy_loss: bool,
    /// Which clicks each training pass sees: `new` (the reference) or `all`.
    #[serde(default)]
    pub click_memory: ClickMemory,
    /// Where the loss is computed: `full` (the reference: logits upsampled to the
    /// input size) or `low` (on the low-res logits against the mask's area fraction
    /// per low-res voxel; ~4× cheaper steps on CPU, not the paper's objective).
    #[serde(default)]
    pub loss_resolution: LossResolution,
    /// Shard window of the sampler.
    #[serde(default = "default_window")]
    pub shard_window: usize,
    /// Stop after this many optimiser steps (demos, smoke tests).
    #[serde(default)]
    pub max_steps: Option<u64>,
    /// Stop after this many minutes (demos).
    #[serde(default)]
    pub max_minutes: Option<f64>,
    /// How this machine reads the shards (`[data]`: the node-local cache and the
    /// node-aware order), under `s3-train train`'s flags and variables; no part of
    /// the run's identity (the samples are the same, verified against the index).
    #[serde(default, skip_serializing_if = "DataSettings::is_unset")]
    pub data: DataSettings,
    /// The stage's launch defaults (`ranks`, `nodes`, `time_limit`, ...): read by
    /// `s3-orch` under its flags, environment and cluster profile; the trainer
    /// ignores them and they are no part of the run's identity.
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub launch: toml::Table,
}

/// `[data]` of a stage file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSettings {
    /// The node-local shard cache folder (`--cache-dir`, `S3_CACHE_DIR`): an absolute
    /// path on each node's local disk.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Most the cache may hold, e.g. "500G" (`--cache-limit`, `S3_CACHE_LIMIT`).
    #[serde(default)]
    pub cache_limit: Option<String>,
    /// Node-aware sample order (`--node-order`, `S3_NODE_ORDER`); default: on with a cache.
    #[serde(default)]
    pub node_order: Option<bool>,
}

impl DataSettings {
    fn is_unset(&self) -> bool {
        *self == DataSettings::default()
    }

    /// The cache these settings name, if any (`stage` names the file's stage in errors).
    pub fn cache(&self, stage: &str) -> Result<Option<crate::shard_cache::CacheSettings>> {
        let Some(dir) = &self.cache_dir else { return Ok(None) };
        let limit = match &self.cache_limit {
            None => u64::MAX,
            Some(text) => crate::shard_cache::parse_size(text).ok_or_else(|| TrainError::Stage {
                stage: stage.into(),
                reason: format!("[data] cache_limit = {text:?} is not a size (bytes, or e.g. 500G, 2T)"),
            })?,
        };
        Ok(Some(crate::shard_cache::CacheSettings { dir: dir.clone(), limit }))
    }
}

fn default_preset() -> String {
    "vit_b_ori".into()
}
fn default_lr() -> f64 {
    8e-4
}
fn default_decoder_lr_factor() -> f64 {
    0.1
}
fn default_weight_decay() -> f64 {
    0.1
}
fn one() -> usize {
    1
}
fn default_clicks() -> usize {
    11
}
fn default_ckpt() -> u64 {
    500
}
fn default_keep_last() -> usize {
    3
}
fn default_window() -> usize {
    4
}

impl StageConfig {
    /// The stage with `s3-train train`'s flags over the file: `--init`, `--catalog`.
    pub fn with_flags(mut self, init: Option<String>, catalog: Option<&Path>) -> StageConfig {
        if init.is_some() {
            self.init = init;
        }
        if let Some(c) = catalog {
            self.datasets.catalog = Some(c.display().to_string());
        }
        self
    }

    /// Reads a stage file.
    pub fn load(path: &Path) -> Result<StageConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| TrainError::Io { file: path.display().to_string(), error: source })?;
        let mut cfg: StageConfig = toml::from_str(&text)
            .map_err(|e| TrainError::Parse { file: path.display().to_string(), source: Box::new(e) })?;
        if let Some(c) = &cfg.datasets.catalog {
            let p = path.parent().unwrap_or(Path::new(".")).join(c);
            cfg.datasets.catalog = Some(p.display().to_string());
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks numbers that would otherwise fail late.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(TrainError::Stage { stage: self.name.clone(), reason: m.into() });
        if self.clicks < 2 {
            return bad("clicks must be at least 2");
        }
        if self.batch == 0 || self.accumulation == 0 {
            return bad("batch and accumulation must be at least 1");
        }
        if self.lr.is_nan() || self.lr <= 0.0 {
            return bad("lr must be positive");
        }
        if !["all", "pretrain", "finetune"].contains(&self.datasets.select.as_str()) {
            return bad("datasets.select must be all, pretrain or finetune");
        }
        Ok(())
    }

    /// The dataset names this stage uses among `available` (those in the store).
    pub fn select_datasets(&self, available: &BTreeSet<String>) -> Result<BTreeSet<String>> {
        let mut chosen: BTreeSet<String> = match self.datasets.select.as_str() {
            "all" => available.clone(),
            "none" => BTreeSet::new(),
            flag => {
                let path = self.datasets.catalog.as_ref().ok_or_else(|| TrainError::Stage {
                    stage: self.name.clone(),
                    reason: format!("datasets.select = {flag:?} needs datasets.catalog"),
                })?;
                catalog_flags(Path::new(path), flag)?.into_iter().filter(|d| available.contains(d)).collect()
            }
        };
        chosen.extend(self.datasets.include.iter().filter(|d| available.contains(*d)).cloned());
        for d in &self.datasets.exclude {
            chosen.remove(d);
        }
        Ok(chosen)
    }
}

/// Names of the datasets with `flag` (`pretrain`/`finetune`) set in a catalogue
/// (only the fields this needs are read; the ingest validates the rest).
pub fn catalog_flags(path: &Path, flag: &str) -> Result<Vec<String>> {
    #[derive(Deserialize)]
    struct Task {
        #[serde(default)]
        finetune: Option<bool>,
    }
    #[derive(Deserialize)]
    struct Entry {
        name: String,
        #[serde(default)]
        pretrain: bool,
        #[serde(default)]
        finetune: bool,
        #[serde(default)]
        tasks: Vec<Task>,
    }
    #[derive(Deserialize)]
    struct Catalog {
        datasets: Vec<Entry>,
    }
    let text = std::fs::read_to_string(path)
        .map_err(|source| TrainError::Io { file: path.display().to_string(), error: source })?;
    let c: Catalog = toml::from_str(&text)
        .map_err(|e| TrainError::Parse { file: path.display().to_string(), source: Box::new(e) })?;
    Ok(c.datasets
        .into_iter()
        .filter(|d| match flag {
            "pretrain" => d.pretrain,
            _ => d.finetune || d.tasks.iter().any(|t| t.finetune == Some(true)),
        })
        .map(|d| d.name)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "name = \"t\"\nepochs = 1\n";

    #[test]
    fn loss_resolution_parses_and_defaults_to_full() {
        let s: StageConfig = toml::from_str(BASE).expect("base");
        assert_eq!(s.loss_resolution, LossResolution::Full);
        // No [datasets] table means every dataset.
        assert_eq!(s.datasets.select, "all");
        s.validate().expect("defaults are valid");
        let s: StageConfig = toml::from_str(&format!("{BASE}loss_resolution = \"low\"\n")).expect("low");
        assert_eq!(s.loss_resolution, LossResolution::Low);
        assert!(toml::from_str::<StageConfig>(&format!("{BASE}loss_resolution = \"half\"\n")).is_err());
    }

    #[test]
    fn a_key_misplaced_under_schedule_is_refused() {
        // A top-level key written after [schedule] lands in that table: it must not be ignored.
        for table in [
            "kind = \"constant\"",
            "kind = \"multistep\"\nmilestones = [1]\ngamma = 0.1",
            "kind = \"cyclic\"\ncycle = 2\nmilestones = [1]\ngamma = 0.1",
        ] {
            let ok = format!("{BASE}[schedule]\n{table}\n");
            assert!(toml::from_str::<StageConfig>(&ok).is_ok(), "{ok}");
            let bad = format!("{ok}loss_resolution = \"low\"\n");
            let e = toml::from_str::<StageConfig>(&bad).expect_err("unknown key accepted");
            assert!(e.to_string().contains("loss_resolution"), "{e}");
        }
    }
}
