//! The training loop (DESIGN §8), in phase order: what the run is (data through
//! `index.json`, selection, model) → resume onto the same run, or init → per epoch,
//! stream this rank's samples → per micro-batch, one image embedding and `clicks`
//! decoder passes ([`crate::step`]) → every `accumulation` micro-batches one
//! all-reduce (when distributed) and an AdamW step → metrics, checkpoints, stop.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use burn::optim::AdamWConfig;
use burn::prelude::*;
use object_store::path::Path as ObjPath;
use s3_shards::samples_table::SampleRow;
use s3_shards::{Split, StoreLocation, StoreOptions, json, open_store};
use xxhash_rust::xxh3::xxh3_64;

pub use crate::checkpoint::TrainState;
use crate::checkpoint::{self, CheckpointState, Latest};
use crate::collective::{self, CollectiveOptions};
use crate::config::{Precision, SamConfig};
use crate::error::{Result, TrainError};
use crate::loader::{Item, Loaded, Loader, LoaderConfig};
pub use crate::metrics::StepMetrics;
use crate::metrics::{self, MetricsLog};
use crate::model::Sam;
use crate::run_identity::{self, RunIdentity};
use crate::sampler::{Sampler, SamplerState};
use crate::stage::StageConfig;
use crate::step::{Accumulators, Optimisers, all_reduce_step, check_same_weights, micro_step};
use crate::watchdog::Watchdog;
use crate::weights::{self, Strictness};

/// What to train, where.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// Store with the published shards.
    pub data: String,
    /// Run folder (checkpoints, metrics, config) on any store.
    pub run: String,
    /// The stage.
    pub stage: StageConfig,
    /// This rank.
    pub rank: usize,
    /// Number of ranks.
    pub world: usize,
    /// Rendezvous `host:port` of the gradient all-reduce (rank 0 listens); needed when `world` > 1.
    pub master: Option<String>,
    /// Continue from the run's latest checkpoint when there is one.
    pub resume: bool,
    /// S3 settings.
    pub store_options: StoreOptions,
    /// Timeouts and the join token of the collective.
    pub collective: CollectiveOptions,
    /// End the process (exit 2) when an optimiser step makes no progress for this long.
    pub step_timeout: Option<Duration>,
    /// The xxh3 the init weights file must have (the launcher verified it before
    /// starting stage 2; each rank checks the copy it actually read).
    pub init_xxh3: Option<u64>,
    /// Set (by a SIGTERM/SIGUSR2 handler) to ask for a preemption: every rank stops at
    /// the same step boundary (the flag travels through the all-reduce), rank 0
    /// checkpoints, and the outcome says `preempted` (the binary exits 75).
    pub preempt: Option<Arc<AtomicBool>>,
    /// The loader's decoding threads (outside the run's identity: the samples and
    /// their order are the same for any count).
    pub loader_threads: usize,
}

impl RunSpec {
    /// A single-rank run of `stage` on `data` into `run`, resuming, with default options.
    pub fn new(data: impl Into<String>, run: impl Into<String>, stage: StageConfig) -> RunSpec {
        RunSpec {
            data: data.into(),
            run: run.into(),
            stage,
            rank: 0,
            world: 1,
            master: None,
            resume: true,
            store_options: StoreOptions::default(),
            collective: CollectiveOptions::default(),
            step_timeout: None,
            init_xxh3: None,
            preempt: None,
            loader_threads: 1,
        }
    }
}

/// Progress of a run.
#[derive(Clone, Debug)]
pub enum TrainEvent {
    /// Training starts or resumes.
    Started {
        /// Samples selected.
        samples: usize,
        /// Optimiser steps per epoch.
        steps_per_epoch: u64,
        /// Total steps planned.
        total_steps: u64,
        /// Starting point.
        from: TrainState,
    },
    /// A step finished.
    Step {
        /// Its numbers (means over all ranks).
        metrics: StepMetrics,
        /// The samples this rank trained on in the step, in order.
        samples: Vec<String>,
    },
    /// A sample was skipped.
    Skipped {
        /// Sample.
        sample_id: String,
        /// Why.
        reason: String,
    },
    /// A checkpoint was written.
    Checkpoint {
        /// Step.
        step: u64,
        /// Folder on the run store.
        dir: String,
    },
}

/// What a run did. Nothing in it grows with the run's length: per-step detail goes
/// through [`TrainEvent::Step`] and the run's `metrics/` segments.
#[derive(Clone, Debug)]
pub struct TrainOutcome {
    /// Final state.
    pub state: TrainState,
    /// Steps this process ran.
    pub steps_run: u64,
    /// The last step's metrics.
    pub last: Option<StepMetrics>,
    /// Stopped by max_steps/max_minutes before the last epoch.
    pub stopped_early: bool,
    /// Stopped by a preemption request, after a checkpoint at that step.
    pub preempted: bool,
    /// xxh3 of the final parameters: equal on every rank of a synchronised run.
    pub weights_digest: u64,
}

/// How long ranks wait for each other at the rendezvous (they start in any order,
/// and a Slurm or Kubernetes rank may wait for its node).
pub const RENDEZVOUS_TIMEOUT: Duration = Duration::from_secs(600);

/// Resolves the model config of a stage.
pub fn model_config(stage: &StageConfig) -> Result<SamConfig> {
    let cfg = SamConfig::preset(&stage.preset)
        .ok_or_else(|| TrainError::Config(format!("unknown preset {:?}", stage.preset)))?;
    if cfg.img_size != s3_shards::SIDE {
        return Err(TrainError::Config(format!(
            "preset {:?} takes {}³ inputs; the shards hold {}³ crops (use vit_b_ori or small)",
            stage.preset,
            cfg.img_size,
            s3_shards::SIDE
        )));
    }
    Ok(SamConfig { attention: stage.attention, precision: stage.precision, ..cfg })
}

/// The `split` rows of the datasets `stage` selects, read through `index.json`;
/// with the chosen dataset names and the samples table's xxh3.
pub fn select_rows(
    data: &StoreLocation,
    stage: &StageConfig,
    split: Split,
    rt: &tokio::runtime::Runtime,
) -> Result<(Vec<SampleRow>, BTreeSet<String>, u64)> {
    let (rows, xxh3) = rt.block_on(run_identity::samples_from_index(data.store().as_ref()))?;
    let available: BTreeSet<String> = rows.iter().map(|r| r.dataset.clone()).collect();
    let chosen = stage.select_datasets(&available)?;
    let rows = rows.into_iter().filter(|r| r.split == split && chosen.contains(&r.dataset)).collect();
    Ok((rows, chosen, xxh3))
}

/// Runs (or resumes) a stage.
pub fn train(spec: &RunSpec, device: &Device, progress: &dyn Fn(&TrainEvent)) -> Result<TrainOutcome> {
    let stage = &spec.stage;
    stage.validate()?;
    if spec.world == 0 || spec.rank >= spec.world {
        return Err(TrainError::Config(format!("rank {} is not below the world size {}", spec.rank, spec.world)));
    }
    let rt = checkpoint::runtime()?;
    let data = open_store(&spec.data, &spec.store_options)?;
    let run = open_store(&spec.run, &spec.store_options)?;

    // Phase 0: what this run is — the data as published, the selection, the model.
    let (rows, datasets, samples_xxh3) = select_rows(&data, stage, Split::Train, rt)?;
    if rows.is_empty() {
        return Err(TrainError::Config(format!("stage {}: no training samples selected in {}", stage.name, data)));
    }
    let sampler = Sampler::from_rows(&rows, stage.seed, stage.shard_window);
    drop(rows);
    let cfg = model_config(stage)?;
    if cfg.precision == Precision::Bf16 && !device.supports_dtype(burn::tensor::FloatDType::BF16) {
        return Err(TrainError::Config(format!(
            "stage {}: precision = \"bf16\" but this device has no bf16",
            stage.name
        )));
    }
    let training = run_identity::training_config(stage, &cfg, &datasets);
    let identity = RunIdentity { config_digest: run_identity::digest(&training), samples_xxh3, world: spec.world };
    let ad = device.clone().autodiff();

    // Phase 1: model (seeded: every rank and every rerun starts from the same
    // weights), optimisers, then resume onto this same run, or init.
    let mut model = seeded_model(&cfg, &ad, stage.seed);
    let adamw = AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .with_weight_decay(stage.weight_decay as f32);
    let mut opt = Optimisers::new(&adamw);
    let mut state = TrainState::default();
    let mut log = MetricsLog::default();
    let latest: Option<Latest> = if spec.resume {
        rt.block_on(checkpoint::read_latest(run.store().as_ref()))?
    } else {
        if spec.rank == 0 {
            // Starting over: the old pointer must not outlive the decision, or a crash
            // before this run's first checkpoint would resume the old run next time.
            rt.block_on(checkpoint::forget_latest(run.store().as_ref()))?;
        }
        None
    };
    let mut _checkpoint_files = None;
    if let Some(l) = &latest {
        let saved_config = match rt
            .block_on(json::get_json::<serde_json::Value>(run.store().as_ref(), &ObjPath::from("config.json")))
        {
            Ok(v) => Some(v),
            Err(s3_shards::ShardError::NotFound(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let verify = |saved: &CheckpointState| {
            run_identity::check_resume(&saved.identity, saved_config.as_ref(), &identity, &training)
        };
        let restored = checkpoint::load(rt, &run, &l.dir, model, opt, verify)?;
        (model, opt, state) = (restored.model, restored.opt, restored.state.state);
        log = MetricsLog::resume(restored.summary);
        _checkpoint_files = Some(restored._files);
        if spec.rank == 0 {
            rt.block_on(metrics::drop_segments_after(run.store().as_ref(), state.step))?;
        }
        tracing::info!(step = state.step, epoch = state.sampler.epoch, "resumed from {}", l.dir);
    } else if spec.rank == 0 {
        // A fresh start (no checkpoint, or --no-resume): segments of an earlier run in
        // this folder would otherwise mix into this run's history.
        rt.block_on(metrics::drop_segments_after(run.store().as_ref(), 0))?;
    }
    if latest.is_none()
        && let Some(init) = &stage.init
    {
        let tmp = checkpoint::temp_dir()?;
        let file = checkpoint::local_copy(init, &spec.store_options, tmp.path())?;
        if let Some(want) = spec.init_xxh3 {
            let bytes = std::fs::read(&file)
                .map_err(|source| TrainError::Io { file: file.display().to_string(), error: source })?;
            let got = xxh3_64(&bytes);
            if got != want {
                return Err(TrainError::Config(format!(
                    "init weights {} have xxh3 {got:016x}, expected {want:016x}: not starting from a changed checkpoint",
                    s3_shards::store::redact(init)
                )));
            }
        }
        let report = weights::load(&mut model, &file, Strictness::Strict)?;
        tracing::info!(applied = report.applied, "initialised from {}", s3_shards::store::redact(init));
    }
    if spec.rank == 0 {
        let resolved = serde_json::json!({
            "stage": stage, "model": cfg, "datasets": datasets, "data": data.url(), "world": spec.world,
        });
        rt.block_on(json::put_json(run.store().as_ref(), &ObjPath::from("config.json"), &resolved))?;
    }

    let per_step = (stage.batch * stage.accumulation) as u64;
    let per_rank_epoch = sampler.padded_len(spec.world) / spec.world as u64;
    let steps_per_epoch = per_rank_epoch.div_ceil(per_step);
    progress(&TrainEvent::Started {
        samples: sampler.len(),
        steps_per_epoch,
        total_steps: steps_per_epoch * stage.epochs,
        from: state,
    });

    let started = Instant::now();
    let mut outcome =
        TrainOutcome { state, steps_run: 0, last: None, stopped_early: false, preempted: false, weights_digest: 0 };
    // Every rank takes the same optimiser steps on the mean gradient of all ranks.
    // The collective follows the device: NCCL on CUDA, the TCP star on the CPU.
    let mut collective = match (spec.world > 1, spec.master.as_deref()) {
        (false, _) => None,
        (true, Some(addr)) => Some(collective::join(addr, spec.rank, spec.world, &spec.collective, device)?),
        (true, None) => {
            return Err(TrainError::Config(format!(
                "world size {} needs a rendezvous address for the gradient all-reduce: --master HOST:PORT \
                 (or MASTER_ADDR and MASTER_PORT); unsynchronised ranks would train different models",
                spec.world
            )));
        }
    };
    if let Some(c) = collective.as_deref_mut() {
        // Every rank starts from the same place: a rank that read another checkpoint
        // pointer (a straggler of an old attempt moved it) or another init file would
        // otherwise train diverged weights until the first checkpoint.
        let position =
            xxh3_64(&[state.step, state.sampler.epoch, state.sampler.consumed].map(u64::to_le_bytes).concat());
        check_same_weights(c, weights_digest(&model) ^ position, state.step)?;
    }
    if stage.max_steps.is_some_and(|s| state.step >= s) {
        // Resumed at its step budget: nothing to do (not one more step per relaunch).
        outcome.stopped_early = state.sampler.epoch < stage.epochs;
        outcome.weights_digest = weights_digest(&model);
        return Ok(outcome);
    }
    let watchdog = spec.step_timeout.map(|t| Watchdog::start(t, Watchdog::exit_process()));
    // Phase 2: epochs.
    while state.sampler.epoch < stage.epochs {
        let epoch = state.sampler.epoch;
        let lr = stage.lr * stage.schedule.factor(epoch);
        let positions = sampler.rank_positions(state.sampler, spec.rank, spec.world);
        let loader = Loader::start(
            data.store().clone(),
            positions,
            LoaderConfig { seed: stage.seed, epoch, threads: spec.loader_threads, ..LoaderConfig::default() },
        );
        let mut micro: Vec<Item> = Vec::new();
        let mut acc = Accumulators::new();
        let mut step_samples: Vec<String> = Vec::new();
        let (mut done_positions, mut loss_sum, mut dice_sum, mut n_samples) = (0u64, 0f64, 0f64, 0usize);
        // Micro-batches and steps close on sample *positions*, not on usable samples:
        // a sample skipped on one rank must not shift that rank's step boundaries, or
        // the ranks' all-reduces would pair different steps.
        let (mut slot_positions, mut slots) = (0usize, 0usize);
        let mut step_start = Instant::now();
        let mut loaded = loader.peekable();
        while let Some(l) = loaded.next() {
            done_positions += 1;
            slot_positions += 1;
            match l {
                Loaded::Skipped { sample_id, reason, .. } => progress(&TrainEvent::Skipped { sample_id, reason }),
                Loaded::Item(item) => micro.push(item),
                // A store that keeps failing ends the run: the resume continues exactly
                // where the last checkpoint left off, instead of training without the sample.
                Loaded::Failed { sample_id, error, .. } => {
                    return Err(TrainError::Read { sample_id, source: Box::new(error) });
                }
            }
            let last = loaded.peek().is_none();
            if slot_positions == stage.batch || last {
                slot_positions = 0;
                slots += 1;
            }
            if slot_positions == 0 && !micro.is_empty() {
                // Phase 3: one micro-batch — embedding, click passes, loss, gradients.
                let step_seed = stage.seed ^ xxh3_64(&[epoch.to_le_bytes(), micro[0].position.to_le_bytes()].concat());
                let crate::step::MicroStep { loss, value: loss_val, dice: d } =
                    micro_step(&model, &micro, stage, &cfg, step_seed, &ad);
                let n = micro.len();
                acc.add(&model, loss / stage.accumulation as f64);
                step_samples.extend(micro.drain(..).map(|i| i.sample_id));
                loss_sum += loss_val * n as f64;
                dice_sum += d * n as f64;
                n_samples += n;
            }
            if slots == stage.accumulation || (last && slots > 0) {
                // Phase 4: all-reduce (when distributed), optimiser step. A step whose
                // samples were all skipped still counts (with no gradient here), so every
                // rank and every resume agrees on what step N covered.
                slots = 0;
                let mut grads = acc.take();
                let mut out_of_budget = stage.max_steps.is_some_and(|s| state.step + 1 >= s)
                    || stage.max_minutes.is_some_and(|mins| started.elapsed().as_secs_f64() >= mins * 60.0);
                let mut preempted = spec.preempt.as_ref().is_some_and(|p| p.load(Ordering::SeqCst));
                let mut totals = [loss_sum, dice_sum, n_samples as f64];
                if let Some(c) = collective.as_deref_mut() {
                    // The stop decisions travel with the gradients: ranks whose clocks
                    // disagree about max_minutes, or only one of which got the SIGTERM,
                    // still stop at the same step.
                    [out_of_budget, preempted] =
                        all_reduce_step(c, &model, &mut grads, &mut totals, [out_of_budget, preempted], device)?;
                }
                model = opt.step(model, grads, lr, lr * stage.decoder_lr_factor);
                state.step += 1;
                outcome.steps_run += 1;
                state.sampler.consumed += done_positions * spec.world as u64;
                done_positions = 0;
                let [loss_total, dice_total, n_total] = totals;
                let per_sample = |total: f64| if n_total > 0.0 { total / n_total } else { f64::NAN };
                let m = StepMetrics {
                    step: state.step,
                    epoch,
                    loss: per_sample(loss_total),
                    dice: per_sample(dice_total),
                    lr,
                    samples_per_s: n_total / step_start.elapsed().as_secs_f64().max(1e-9),
                };
                (loss_sum, dice_sum, n_samples) = (0.0, 0.0, 0);
                step_start = Instant::now();
                if let Some(w) = &watchdog {
                    w.pet();
                }
                log.push(m.clone());
                progress(&TrainEvent::Step { metrics: m.clone(), samples: std::mem::take(&mut step_samples) });
                outcome.last = Some(m);
                // Phase 5: checkpoints and stopping.
                if last {
                    state.sampler = SamplerState { epoch: epoch + 1, consumed: 0 };
                }
                let stop = out_of_budget || preempted;
                if state.step % stage.checkpoint_every.max(1) == 0 || last || stop {
                    // Every rank checks it holds the same weights before rank 0 saves them.
                    if let Some(c) = collective.as_deref_mut() {
                        check_same_weights(c, weights_digest(&model), state.step)?;
                    }
                    if spec.rank == 0 {
                        rt.block_on(log.flush(run.store().as_ref(), state.step))?;
                        let record = CheckpointState { state, identity: identity.clone() };
                        let dir = checkpoint::save(rt, &run, &model, &opt, &record, log.summary(), stage.keep_last)?;
                        progress(&TrainEvent::Checkpoint { step: state.step, dir });
                        // The upload is progress too: a slow store must not trip the watchdog.
                        if let Some(w) = &watchdog {
                            w.pet();
                        }
                    }
                }
                if stop {
                    outcome.state = state;
                    outcome.stopped_early = state.sampler.epoch < stage.epochs;
                    outcome.preempted = preempted;
                    outcome.weights_digest = weights_digest(&model);
                    return Ok(outcome);
                }
            }
        }
        state.sampler = SamplerState { epoch: epoch + 1, consumed: 0 };
    }
    outcome.state = state;
    outcome.weights_digest = weights_digest(&model);
    Ok(outcome)
}

/// xxh3 of every parameter's f32 values in visiting order.
pub fn weights_digest(model: &Sam) -> u64 {
    struct Digest(xxhash_rust::xxh3::Xxh3);
    impl burn::module::ModuleVisitor for Digest {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            let v = param.val().into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 after convert");
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            self.0.update(&bytes);
        }
    }
    let mut d = Digest(xxhash_rust::xxh3::Xxh3::new());
    model.visit(&mut d);
    d.0.digest()
}

/// A model initialised from `seed`. The device RNG is process-wide and burn draws a
/// parameter's initial values lazily (at its first use), so seeding and every draw
/// happen here under one lock: concurrent runs in a process cannot interleave draws.
pub fn seeded_model(cfg: &SamConfig, device: &Device, seed: u64) -> Sam {
    struct Materialise;
    impl burn::module::ModuleVisitor for Materialise {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            let _ = param.val();
        }
    }
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
    device.seed(seed);
    let model = Sam::new(cfg, device);
    model.visit(&mut Materialise);
    model
}

/// Loads the weights of the run's latest checkpoint into a fresh model on `device`.
pub fn load_latest_weights(
    run_url: &str,
    options: &StoreOptions,
    cfg: &SamConfig,
    device: &Device,
) -> Result<(Sam, u64)> {
    let rt = checkpoint::runtime()?;
    let run = open_store(run_url, options)?;
    let latest = rt
        .block_on(checkpoint::read_latest(run.store().as_ref()))?
        .ok_or_else(|| TrainError::Config(format!("{run}: no checkpoint yet (checkpoints/latest.json)")))?;
    let tmp = checkpoint::temp_dir()?;
    let file = tmp.path().join(s3_shards::run_folder::WEIGHTS_FILE);
    rt.block_on(checkpoint::get_file(run.store().as_ref(), &s3_shards::run_folder::weights_key(&latest.dir), &file))?;
    let mut model = Sam::new(cfg, device);
    weights::load(&mut model, &file, Strictness::Strict)?;
    Ok((model, latest.step))
}

/// The stage a run was trained with, from its `config.json` (for `eval` and resume).
pub fn load_run_stage(run_url: &str, options: &StoreOptions) -> Result<StageConfig> {
    let rt = checkpoint::runtime()?;
    let run = open_store(run_url, options)?;
    let v: serde_json::Value = rt.block_on(json::get_json(run.store().as_ref(), &ObjPath::from("config.json")))?;
    let stage = v.get("stage").cloned().ok_or_else(|| TrainError::Config(format!("{run}/config.json has no stage")))?;
    serde_json::from_value(stage).map_err(|e| TrainError::Config(format!("{run}/config.json: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preset_that_does_not_take_shard_crops_is_refused() {
        let stage: StageConfig = toml::from_str("name = \"t\"\nepochs = 1\npreset = \"tiny\"\n").unwrap();
        let e = model_config(&stage).unwrap_err();
        assert!(e.to_string().contains("64³ inputs"), "{e}");
        let stage = StageConfig { preset: "small".into(), ..stage };
        assert_eq!(model_config(&stage).unwrap().low_res(), 32);
    }
}
