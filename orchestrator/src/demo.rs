//! The demo: phantom corpus → ingest into a local store → evaluate the untrained
//! model → train the small preset on CPU for a few minutes → evaluate again.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use s3_ingest::catalog::Catalog;
use s3_ingest::preprocess::PreprocessOptions;
use s3_ingest::run::IngestConfig;
use s3_shards::{Split, StoreOptions, open_store};
use s3_trainer::eval::{EvalReport, evaluate};
use s3_trainer::stage::StageConfig;
use s3_trainer::train::{RunSpec, TrainEvent, TrainOutcome, model_config, select_rows, train};

/// The demo stage shipped in `manifests/stages/demo.toml`, embedded so the demo runs anywhere.
pub const DEMO_STAGE: &str = include_str!("../../manifests/stages/demo.toml");

/// Errors of the demo (each step's own error, kept as the source: print the chain,
/// e.g. `{:#}` with anyhow, to see it).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// Writing or ingesting the phantom corpus failed.
    #[error("ingest")]
    Ingest(#[from] s3_ingest::IngestError),
    /// Training or evaluation failed.
    #[error("training")]
    Train(#[from] s3_trainer::TrainError),
    /// Store access failed.
    #[error("store")]
    Shards(#[from] s3_shards::ShardError),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// Demo settings.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    /// Working directory (raw/, store/, runs/).
    pub dir: PathBuf,
    /// Phantom cases per dataset.
    pub cases: usize,
    /// Minutes of training.
    pub minutes: f64,
    /// Stop after this many optimiser steps instead (tests: a fixed amount of work,
    /// whatever the machine's speed).
    pub max_steps: Option<u64>,
    /// Percent of cases held out for evaluation.
    pub val_percent: u32,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig { dir: PathBuf::from("demo"), cases: 12, minutes: 6.0, max_steps: None, val_percent: 25 }
    }
}

/// What the demo measured.
#[derive(Debug)]
pub struct DemoReport {
    /// Dice before training.
    pub before: EvalReport,
    /// Dice after training.
    pub after: EvalReport,
    /// The training run.
    pub training: TrainOutcome,
    /// Run folder (metrics/, metrics.png, checkpoints, eval/).
    pub run_dir: PathBuf,
    /// The store with the shards.
    pub store: PathBuf,
}

/// Progress messages for the caller to print.
pub type Say<'a> = &'a (dyn Fn(&str) + Sync);

/// Runs the whole demo.
pub fn run_demo(cfg: &DemoConfig, say: Say, on_train: &dyn Fn(&TrainEvent)) -> Result<DemoReport, DemoError> {
    let raw = cfg.dir.join("raw");
    let store = cfg.dir.join("store");
    let run_dir = cfg.dir.join("runs").join("demo");
    say(&format!("1/4 writing the phantom corpus to {}", raw.display()));
    let manifest = s3_ingest::synth::write_corpus(&raw, cfg.cases, 7)
        .map_err(|e| DemoError::Other(format!("writing {}: {e}", raw.display())))?;
    let catalog = Catalog::load(&manifest)?;
    say(&format!("2/4 ingesting into {}", store.display()));
    let icfg = IngestConfig {
        preprocess: PreprocessOptions { val_percent: cfg.val_percent, ..Default::default() },
        ..IngestConfig::new(store.display().to_string())
    };
    let summary = s3_ingest::run::run(&catalog, &icfg, &|_| {})?;
    let samples: u64 = summary.datasets.iter().map(|d| d.samples).sum();
    say(&format!("   {samples} samples from {} cases", summary.datasets.iter().map(|d| d.cases).sum::<usize>()));

    let mut stage: StageConfig =
        toml::from_str(DEMO_STAGE).map_err(|e| DemoError::Other(format!("demo stage: {e}")))?;
    stage.max_minutes = Some(cfg.minutes);
    if let Some(steps) = cfg.max_steps {
        // Every epoch is at least one step: enough epochs for the steps asked for.
        (stage.max_minutes, stage.max_steps, stage.epochs) = (None, Some(steps), stage.epochs.max(steps));
    }
    let device = Device::flex();
    let mcfg = model_config(&stage)?;
    let data = open_store(&store.display().to_string(), &StoreOptions::default())?;
    let rt = s3_trainer::io_runtime::io_runtime()?;
    let (val, _, _) = select_rows(&data, &stage, Split::Val, rt)?;
    say(&format!("3/4 evaluating the untrained model on {} val samples", val.len()));
    let fresh = s3_trainer::train::seeded_model(&mcfg, &device, stage.seed);
    let clicks = [1, 3, 5, 10];
    let before = evaluate(&fresh, &mcfg, &data, &val, &clicks, stage.seed, &device)?;

    say(&format!(
        "4/4 training `{}` ({} preset) for up to {:.0} min, then evaluating",
        stage.name, stage.preset, cfg.minutes
    ));
    std::fs::create_dir_all(&run_dir).map_err(|e| DemoError::Other(e.to_string()))?;
    let spec = RunSpec {
        resume: false,
        ..RunSpec::new(store.display().to_string(), run_dir.display().to_string(), stage.clone())
    };
    clear_run(&run_dir);
    let training = train(&spec, &device, on_train)?;
    let (trained, _) = s3_trainer::train::load_latest_weights(&spec.run, &StoreOptions::default(), &mcfg, &device)?;
    let after = evaluate(&trained, &mcfg, &data, &val, &clicks, stage.seed, &device)?;
    s3_trainer::eval::write_report(&open_store(&spec.run, &StoreOptions::default())?, "val_before", &before)?;
    s3_trainer::eval::write_report(&open_store(&spec.run, &StoreOptions::default())?, "val", &after)?;
    Ok(DemoReport { before, after, training, run_dir, store })
}

/// A fresh demo run each time (the demo is not a resumable job).
fn clear_run(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir.join("checkpoints"));
    let _ = std::fs::remove_dir_all(dir.join("metrics"));
}

/// The before/after table.
pub fn dice_table(r: &DemoReport) -> String {
    let mut s = String::from("                     Dice@1  Dice@3  Dice@5  Dice@10\n");
    for (name, rep) in [("untrained", &r.before), ("trained", &r.after)] {
        let v: Vec<String> =
            [1, 3, 5, 10].iter().map(|&c| format!("{:>6.3}", rep.mean_at(c).unwrap_or(f64::NAN))).collect();
        s.push_str(&format!("{name:<20} {}\n", v.join("  ")));
    }
    s.push_str("\nper class after training:\n");
    for g in r.after.groups.iter().filter(|g| g.label != "*") {
        s.push_str(&format!(
            "  {:<12} {:<14} n={:<3} Dice@5 {:.3}\n",
            g.dataset,
            g.label,
            g.n,
            g.dice.get(2).copied().unwrap_or(f64::NAN)
        ));
    }
    s
}
