//! The training loop (DESIGN §8), in phase order: what the run is (data through
//! `index.json`, selection, model) → resume onto the same run, or init → per epoch,
//! stream this rank's samples → per micro-batch, one image embedding and `clicks`
//! decoder passes ([`crate::step`]) → every `accumulation` micro-batches one
//! all-reduce (when distributed) and an AdamW step → metrics, checkpoints, stop.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use object_store::path::Path as ObjPath;
use s3_shards::{Split, StoreLocation, json, open_store};
use xxhash_rust::xxh3::xxh3_64;

use crate::checkpoint::{self, CheckpointState, Latest};
use crate::collective::{self, Collective};
use crate::config::{Precision, SamConfig};
use crate::error::{Result, TrainError};
use crate::loader::{Item, Loaded, Loader, LoaderConfig};
use crate::metrics::{self, MetricsLog};
use crate::model::Sam;
use crate::run_identity::{self, RunIdentity};
use crate::run_inputs::{model_config, seeded_model, select_rows, weights_digest};
use crate::sampler::{Sampler, SamplerState};
use crate::step::{Accumulators, Optimisers, all_reduce_step, check_same_weights, micro_step};
pub use crate::training::run_spec::{RunSpec, StepMetrics, TrainEvent, TrainOutcome, TrainState};
use crate::watchdog::Watchdog;
use crate::weights::{self, Strictness};

/// How long ranks wait for each other at the rendezvous (they start in any order,
/// and a Slurm or Kubernetes rank may wait for its node).
pub const RENDEZVOUS_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs (or resumes) a stage: the loop reads in the order it runs, each phase a
/// method of [`Training`].
pub fn train(spec: &RunSpec, device: &Device, progress: &dyn Fn(&TrainEvent)) -> Result<TrainOutcome> {
    let stage = &spec.stage;
    let mut t = Training::start(spec, device, progress)?;
    // From here a stop waits for the step boundary, where every rank stops together
    // and rank 0 checkpoints.
    t.hold_exit();
    if stage.max_steps.is_some_and(|s| t.state.step >= s) {
        // Resumed at its step budget: nothing to do (not one more step per relaunch).
        return Ok(t.finish(false));
    }
    let watchdog = spec.step_timeout.map(|limit| Watchdog::start(limit, Watchdog::exit_process()));
    while t.state.sampler.epoch < stage.epochs {
        let epoch = t.state.sampler.epoch;
        let lr = stage.lr * stage.schedule.factor(epoch);
        let mut step = PendingStep::new();
        let mut loaded = t.loader(epoch).peekable();
        while let Some(l) = loaded.next() {
            let last = loaded.peek().is_none();
            t.take(l, &mut step, last)?;
            if step.micro_batch_full() {
                t.micro_batch(&mut step, epoch);
            }
            if !step.full(stage.accumulation, last) {
                continue;
            }
            let (grads, stops) = t.all_reduce(&mut step)?;
            t.model = t.opt.step(t.model, grads, lr, lr * stage.decoder_lr_factor);
            t.record_step(&mut step, epoch, lr, last);
            if let Some(w) = &watchdog {
                w.pet();
            }
            let stop = stops.out_of_budget || stops.preempted;
            if t.state.step % stage.checkpoint_every.max(1) == 0 || last || stop {
                t.checkpoint(watchdog.as_ref())?;
            }
            if stop {
                return Ok(t.finish(stops.preempted));
            }
        }
        t.state.sampler = SamplerState::start(epoch + 1, spec.order_nodes());
    }
    Ok(t.finish(false))
}

/// One run of the loop on this rank: what it trains on, the model and its
/// optimisers, where it stands, and what it reports.
struct Training<'a> {
    spec: &'a RunSpec,
    progress: &'a dyn Fn(&TrainEvent),
    rt: &'static tokio::runtime::Runtime,
    data: StoreLocation,
    /// The node-local shard cache in front of `data`, told each epoch's plan.
    cache: Option<Arc<crate::shard_cache::ShardCache>>,
    run: StoreLocation,
    sampler: Sampler,
    cfg: SamConfig,
    identity: RunIdentity,
    /// The compute device, and its autodiff view the model trains on.
    device: Device,
    ad: Device,
    model: Sam,
    opt: Optimisers,
    state: TrainState,
    log: MetricsLog,
    collective: Option<Box<dyn Collective>>,
    started: Instant,
    steps_run: u64,
    last: Option<StepMetrics>,
    /// Burnpack tensors of a resumed checkpoint are read lazily from these files.
    _checkpoint_files: Option<tempfile::TempDir>,
}

/// What the ranks decided together at a step.
struct Stops {
    /// The step or time budget is spent.
    out_of_budget: bool,
    /// A rank was asked to stop (SIGTERM, SIGUSR2).
    preempted: bool,
}

/// The step being gathered: its micro-batch, gradients and running totals.
/// Micro-batches and steps close on sample *positions*, not on usable samples: a
/// sample skipped on one rank must not shift that rank's step boundaries, or the
/// ranks' all-reduces would pair different steps.
struct PendingStep {
    micro: Vec<Item>,
    acc: Accumulators,
    samples: Vec<String>,
    /// Positions this rank consumed since the last step.
    positions: u64,
    loss_sum: f64,
    dice_sum: f64,
    n_samples: usize,
    /// Positions in the current micro-batch slot, and slots closed in this step.
    slot_positions: usize,
    slots: usize,
    /// The last slot closed and the micro-batch is ready to run.
    slot_closed: bool,
    started: Instant,
}

impl PendingStep {
    fn new() -> PendingStep {
        PendingStep {
            micro: Vec::new(),
            acc: Accumulators::new(),
            samples: Vec::new(),
            positions: 0,
            loss_sum: 0.0,
            dice_sum: 0.0,
            n_samples: 0,
            slot_positions: 0,
            slots: 0,
            slot_closed: false,
            started: Instant::now(),
        }
    }

    fn micro_batch_full(&self) -> bool {
        self.slot_closed && !self.micro.is_empty()
    }

    /// Whether the step closes here. A step whose samples were all skipped still
    /// counts (with no gradient here), so every rank and every resume agrees on what
    /// step N covered.
    fn full(&self, accumulation: usize, last: bool) -> bool {
        self.slots == accumulation || (last && self.slots > 0)
    }
}

impl<'a> Training<'a> {
    /// Phases 0 and 1: what this run is (the data as published, the selection, the
    /// model), then the model (seeded: every rank and every rerun starts from the same
    /// weights) and optimisers, resumed onto this same run or initialised, and the
    /// collective joined with every rank at the same starting point.
    fn start(spec: &'a RunSpec, device: &Device, progress: &'a dyn Fn(&TrainEvent)) -> Result<Training<'a>> {
        let stage = &spec.stage;
        stage.validate()?;
        if spec.world == 0 || spec.rank >= spec.world {
            return Err(TrainError::Launch(format!("rank {} is not below the world size {}", spec.rank, spec.world)));
        }
        let rt = s3_shards::io_runtime::io_runtime()?;
        let data = open_store(&spec.data, &spec.store_options)?;
        let (data, cache) = match &spec.shard_cache {
            Some(settings) => crate::shard_cache::with_cache(data, settings, rt),
            None => (data, None),
        };
        let run = open_store(&spec.run, &spec.store_options)?;

        let (rows, datasets, samples_xxh3) = select_rows(&data, stage, Split::Train, rt)?;
        if rows.is_empty() {
            return Err(TrainError::Stage {
                stage: stage.name.clone(),
                reason: format!("no training samples selected in {data}"),
            });
        }
        let sampler = Sampler::from_rows(&rows, stage.seed, stage.shard_window);
        drop(rows);
        let cfg = model_config(stage)?;
        if cfg.precision == Precision::Bf16 && !device.supports_dtype(burn::tensor::FloatDType::BF16) {
            return Err(TrainError::Stage {
                stage: stage.name.clone(),
                reason: "precision = \"bf16\" but this device has no bf16".into(),
            });
        }
        let training = run_identity::training_config(stage, &cfg, &datasets);
        let identity = RunIdentity { config_digest: run_identity::digest(&training), samples_xxh3, world: spec.world };
        let ad = device.clone().autodiff();
        let adamw = AdamWConfig::new()
            .with_beta_1(0.9)
            .with_beta_2(0.999)
            .with_epsilon(1e-8)
            .with_weight_decay(stage.weight_decay as f32);
        let t = Training {
            spec,
            progress,
            rt,
            model: seeded_model(&cfg, &ad, stage.seed),
            opt: Optimisers::new(&adamw),
            data,
            cache,
            run,
            sampler,
            cfg,
            identity,
            device: device.clone(),
            ad,
            state: TrainState::default(),
            log: MetricsLog::default(),
            collective: None,
            started: Instant::now(),
            steps_run: 0,
            last: None,
            _checkpoint_files: None,
        };
        let (mut t, resumed) = t.resume(&training)?;
        t.place_epoch();
        if !resumed && let Some(init) = &stage.init {
            t.init_from(init)?;
        }
        if spec.rank == 0 {
            let resolved = serde_json::json!({
                "stage": stage, "model": t.cfg, "datasets": datasets, "data": t.data.url(), "world": spec.world,
            });
            t.uninterrupted("writing config.json", || {
                rt.block_on(json::put_json(t.run.store().as_ref(), &ObjPath::from("config.json"), &resolved))
            })?;
        }
        let per_step = (stage.batch * stage.accumulation) as u64;
        let per_rank_epoch = t.sampler.padded_len(spec.world) / spec.world as u64;
        let steps_per_epoch = per_rank_epoch.div_ceil(per_step);
        progress(&TrainEvent::Started {
            samples: t.sampler.len(),
            steps_per_epoch,
            total_steps: steps_per_epoch * stage.epochs,
            from: t.state,
        });
        t.started = Instant::now();
        t.join_collective()?;
        Ok(t)
    }

    /// Continues from the run's latest checkpoint when asked to and there is one
    /// (refusing another run's folder), and clears the metrics an earlier attempt
    /// wrote past it; says whether it resumed.
    fn resume(mut self, training: &serde_json::Value) -> Result<(Self, bool)> {
        let (spec, rt, store) = (self.spec, self.rt, self.run.store().clone());
        let latest: Option<Latest> = if spec.resume {
            rt.block_on(checkpoint::read_latest(store.as_ref()))?
        } else {
            if spec.rank == 0 {
                // Starting over: the old pointer must not outlive the decision, or a crash
                // before this run's first checkpoint would resume the old run next time.
                self.uninterrupted("forgetting the old checkpoint", || {
                    rt.block_on(checkpoint::forget_latest(store.as_ref()))
                })?;
            }
            None
        };
        let Some(l) = latest else {
            if spec.rank == 0 {
                // A fresh start (no checkpoint, or --no-resume): segments of an earlier run in
                // this folder would otherwise mix into this run's history.
                self.uninterrupted("clearing old metrics", || {
                    rt.block_on(metrics::drop_segments_after(store.as_ref(), 0))
                })?;
            }
            return Ok((self, false));
        };
        let saved_config =
            match rt.block_on(json::get_json::<serde_json::Value>(store.as_ref(), &ObjPath::from("config.json"))) {
                Ok(v) => Some(v),
                Err(s3_shards::ShardError::NotFound(_)) => None,
                Err(e) => return Err(e.into()),
            };
        let identity = &self.identity;
        let verify = |saved: &CheckpointState| {
            run_identity::check_resume(&saved.identity, saved_config.as_ref(), identity, training)
        };
        let restored = checkpoint::load(rt, &self.run, &l.dir, self.model, self.opt, verify)?;
        (self.model, self.opt, self.state) = (restored.model, restored.opt, restored.state.state);
        self.log = MetricsLog::resume(restored.summary);
        self._checkpoint_files = Some(restored._files);
        if spec.rank == 0 {
            let step = self.state.step;
            self.uninterrupted("clearing metrics past the checkpoint", || {
                rt.block_on(metrics::drop_segments_after(store.as_ref(), step))
            })?;
        }
        tracing::info!(step = self.state.step, epoch = self.state.sampler.epoch, "resumed from {}", l.dir);
        Ok((self, true))
    }

    /// Draws the current epoch for this job's node count when none of it is done;
    /// an epoch under way keeps the order it was drawn for (resume is exact), and a
    /// new node count takes over from the next epoch.
    fn place_epoch(&mut self) {
        let (now, s) = (self.spec.order_nodes(), self.state.sampler);
        if s.consumed == 0 {
            self.state.sampler = SamplerState::start(s.epoch, now);
        } else if s.nodes.max(1) != now {
            tracing::warn!(
                epoch = s.epoch,
                "epoch {} was drawn for {} node(s) and this job orders for {now}: the rest of it keeps that \
                 order (every sample still once) and the next epoch is drawn for {now} (each node's shard \
                 share changes once)",
                s.epoch,
                s.nodes.max(1)
            );
        }
    }

    /// Starts from a weights file (stage 2 from stage 1), refusing one whose xxh3 is
    /// not the one the launcher verified.
    fn init_from(&mut self, init: &str) -> Result<()> {
        let tmp = checkpoint::temp_dir()?;
        let file = checkpoint::local_copy(init, &self.spec.store_options, tmp.path())?;
        if let Some(want) = self.spec.init_xxh3 {
            let bytes = std::fs::read(&file)
                .map_err(|source| TrainError::Io { file: file.display().to_string(), error: source })?;
            let got = xxh3_64(&bytes);
            if got != want {
                return Err(TrainError::Weights {
                    file: s3_shards::store::redact(init),
                    reason: format!("xxh3 {got:016x}, expected {want:016x}: not starting from a changed checkpoint"),
                });
            }
        }
        let report = weights::load(&mut self.model, &file, Strictness::Strict)?;
        tracing::info!(applied = report.applied, "initialised from {}", s3_shards::store::redact(init));
        Ok(())
    }

    /// Runs a write of rank 0 before the first step with the exit-at-once held off, so
    /// that a stop signal cannot cut it in half; a stop asked for meanwhile ends the
    /// start right after it.
    fn uninterrupted<T, E: Into<TrainError>>(
        &self,
        what: &'static str,
        write: impl FnOnce() -> std::result::Result<T, E>,
    ) -> Result<T> {
        let at_once = self.spec.exit_at_once.as_deref();
        at_once.inspect(|a| a.store(false, Ordering::SeqCst));
        let written = write().map_err(Into::into);
        at_once.inspect(|a| a.store(true, Ordering::SeqCst));
        if self.spec.preempt.as_ref().is_some_and(|p| p.load(Ordering::SeqCst)) {
            written?;
            return Err(TrainError::Stopped(what));
        }
        written
    }

    /// Training starts: a stop now waits for the step boundary.
    fn hold_exit(&self) {
        if let Some(a) = &self.spec.exit_at_once {
            a.store(false, Ordering::SeqCst);
        }
    }

    /// Every rank takes the same optimiser steps on the mean gradient of all ranks.
    /// The collective follows the device: NCCL on CUDA, the TCP star on the CPU.
    fn join_collective(&mut self) -> Result<()> {
        let spec = self.spec;
        if spec.world == 1 {
            return Ok(());
        }
        let Some(addr) = spec.master.as_deref() else {
            return Err(TrainError::Launch(format!(
                "world size {} needs a rendezvous address for the gradient all-reduce: --master HOST:PORT \
                 (or MASTER_ADDR and MASTER_PORT); unsynchronised ranks would train different models",
                spec.world
            )));
        };
        // A stop asked for while peers are missing ends the wait (exit 75) instead of
        // outliving `timeout`, `scancel` and a pod's grace period.
        let options = collective::CollectiveOptions { cancel: spec.preempt.clone(), ..spec.collective.clone() };
        let c = self.collective.insert(collective::join(addr, spec.rank, spec.world, &options, &self.device)?);
        // Every rank starts from the same place: a rank that read another checkpoint
        // pointer (a straggler of an old attempt moved it) or another init file would
        // otherwise train diverged weights until the first checkpoint.
        let s = self.state;
        let position =
            xxh3_64(&[s.step, s.sampler.epoch, s.sampler.consumed, s.sampler.nodes].map(u64::to_le_bytes).concat());
        check_same_weights(c.as_mut(), weights_digest(&self.model) ^ position, s.step)
    }

    /// Phase 2: this rank's samples of the epoch, from where the run stands.
    fn loader(&self, epoch: u64) -> Loader {
        let (spec, stage) = (self.spec, &self.spec.stage);
        let positions = self.sampler.rank_positions(self.state.sampler, spec.rank, spec.world);
        if let Some(cache) = &self.cache {
            cache.plan(positions.iter().map(|(_, r)| r.shard.clone()));
        }
        let cfg = LoaderConfig { seed: stage.seed, epoch, threads: spec.loader_threads, ..LoaderConfig::default() };
        Loader::start(self.data.store().clone(), positions, cfg)
    }

    /// One sample position: a usable sample joins the micro-batch, a skipped one is
    /// reported, a store that keeps failing ends the run (the resume continues exactly
    /// where the last checkpoint left off, instead of training without the sample).
    fn take(&self, loaded: Loaded, step: &mut PendingStep, last: bool) -> Result<()> {
        step.positions += 1;
        step.slot_positions += 1;
        match loaded {
            Loaded::Skipped { sample_id, reason, .. } => (self.progress)(&TrainEvent::Skipped { sample_id, reason }),
            Loaded::Item(item) => step.micro.push(item),
            Loaded::Failed { sample_id, error, .. } => {
                return Err(TrainError::Read { sample_id, source: Box::new(error) });
            }
        }
        step.slot_closed = step.slot_positions == self.spec.stage.batch || last;
        if step.slot_closed {
            step.slot_positions = 0;
            step.slots += 1;
        }
        Ok(())
    }

    /// Phase 3: one micro-batch — embedding, click passes, loss, gradients.
    fn micro_batch(&self, step: &mut PendingStep, epoch: u64) {
        let stage = &self.spec.stage;
        let first = step.micro[0].position;
        let seed = stage.seed ^ xxh3_64(&[epoch.to_le_bytes(), first.to_le_bytes()].concat());
        let crate::step::MicroStep { loss, value, dice } =
            micro_step(&self.model, &step.micro, stage, &self.cfg, seed, &self.ad);
        let n = step.micro.len();
        step.acc.add(&self.model, loss / stage.accumulation as f64);
        step.samples.extend(step.micro.drain(..).map(|i| i.sample_id));
        step.loss_sum += value * n as f64;
        step.dice_sum += dice * n as f64;
        step.n_samples += n;
    }

    /// Phase 4: the step's gradients, averaged over the ranks when distributed, with
    /// the stop decisions, which travel with the gradients: ranks whose clocks disagree
    /// about max_minutes, or only one of which got the SIGTERM, still stop at the same
    /// step. The totals become the sums over all ranks.
    fn all_reduce(&mut self, step: &mut PendingStep) -> Result<([GradientsParams; 3], Stops)> {
        let stage = &self.spec.stage;
        step.slots = 0;
        let mut grads = step.acc.take();
        let out_of_budget = stage.max_steps.is_some_and(|s| self.state.step + 1 >= s)
            || stage.max_minutes.is_some_and(|mins| self.started.elapsed().as_secs_f64() >= mins * 60.0);
        let preempted = self.spec.preempt.as_ref().is_some_and(|p| p.load(Ordering::SeqCst));
        let mut stops = [out_of_budget, preempted];
        if let Some(c) = self.collective.as_deref_mut() {
            let mut totals = [step.loss_sum, step.dice_sum, step.n_samples as f64];
            stops = all_reduce_step(c, &self.model, &mut grads, &mut totals, stops, &self.device)?;
            [step.loss_sum, step.dice_sum] = [totals[0], totals[1]];
            step.n_samples = totals[2] as usize;
        }
        Ok((grads, Stops { out_of_budget: stops[0], preempted: stops[1] }))
    }

    /// After the optimiser step: where the run stands, and the step's metrics
    /// (per-sample means over all ranks) logged and reported.
    fn record_step(&mut self, step: &mut PendingStep, epoch: u64, lr: f64, last: bool) {
        self.state.step += 1;
        self.steps_run += 1;
        self.state.sampler.consumed += step.positions * self.spec.world as u64;
        let n = step.n_samples as f64;
        let per_sample = |total: f64| if n > 0.0 { total / n } else { f64::NAN };
        let m = StepMetrics {
            step: self.state.step,
            epoch,
            loss: per_sample(step.loss_sum),
            dice: per_sample(step.dice_sum),
            lr,
            samples_per_s: n / step.started.elapsed().as_secs_f64().max(1e-9),
        };
        let samples = std::mem::take(&mut step.samples);
        *step = PendingStep::new();
        self.log.push(m.clone());
        (self.progress)(&TrainEvent::Step { metrics: m.clone(), samples });
        self.last = Some(m);
        if last {
            self.state.sampler = SamplerState::start(epoch + 1, self.spec.order_nodes());
        }
    }

    /// Phase 5: every rank checks it holds the same weights, then rank 0 saves them
    /// with the metrics so far.
    fn checkpoint(&mut self, watchdog: Option<&Watchdog>) -> Result<()> {
        if let Some(c) = self.collective.as_deref_mut() {
            check_same_weights(c, weights_digest(&self.model), self.state.step)?;
        }
        if self.spec.rank != 0 {
            return Ok(());
        }
        let (rt, stage) = (self.rt, &self.spec.stage);
        rt.block_on(self.log.flush(self.run.store().as_ref(), self.state.step))?;
        let record = CheckpointState { state: self.state, identity: self.identity.clone() };
        let dir =
            checkpoint::save(rt, &self.run, &self.model, &self.opt, &record, self.log.summary(), stage.keep_last)?;
        (self.progress)(&TrainEvent::Checkpoint { step: self.state.step, dir });
        // The upload is progress too: a slow store must not trip the watchdog.
        if let Some(w) = watchdog {
            w.pet();
        }
        Ok(())
    }

    /// What the run did.
    fn finish(self, preempted: bool) -> TrainOutcome {
        TrainOutcome {
            state: self.state,
            steps_run: self.steps_run,
            last: self.last,
            stopped_early: self.state.sampler.epoch < self.spec.stage.epochs,
            preempted,
            weights_digest: weights_digest(&self.model),
        }
    }
}
