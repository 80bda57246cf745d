//! The training loop (DESIGN §8), in phase order: resume → per epoch, stream this
//! rank's samples → per micro-batch, one image embedding and `clicks` decoder passes
//! with simulated clicks, loss summed over passes → every `accumulation`
//! micro-batches an AdamW step (encoder at lr, prompt encoder and decoder at
//! lr × 0.1) → metrics, checkpoints.

use std::collections::BTreeSet;
use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::activation;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use s3_shards::synthetic::Rng;
use s3_shards::{Split, StoreLocation, StoreOptions, json, open_store, samples_table};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::clicks::{Click, dice, next_click};
use crate::collective::{TcpCollective, flat};
use crate::config::{Precision, SamConfig};
use crate::error::{Result, TrainError};
use crate::loader::{Item, Loaded, Loader, LoaderConfig};
use crate::model::layers::{trilinear, trilinear_values};
use crate::model::{ImageEncoder, MaskDecoder, Prompt, PromptEncoder, Sam};
use crate::plots;
use crate::sampler::{Sampler, SamplerState};
use crate::stage::{LossResolution, StageConfig};
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
}

/// Where training stands; saved in every checkpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimiser steps done.
    pub step: u64,
    /// Sampler position.
    pub sampler: SamplerState,
}

/// One optimiser step's numbers.
#[derive(Clone, Debug, Serialize)]
pub struct StepMetrics {
    /// Step number (1-based after the step).
    pub step: u64,
    /// Epoch.
    pub epoch: u64,
    /// Mean loss per sample (summed over passes).
    pub loss: f64,
    /// Mean Dice of the last pass.
    pub dice: f64,
    /// Encoder learning rate.
    pub lr: f64,
    /// Samples per second over the step.
    pub samples_per_s: f64,
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
    Step(StepMetrics),
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

/// What a run did.
#[derive(Clone, Debug)]
pub struct TrainOutcome {
    /// Final state.
    pub state: TrainState,
    /// Sample ids trained on, in order (this process).
    pub trained: Vec<String>,
    /// Every step's metrics (this process).
    pub metrics: Vec<StepMetrics>,
    /// Stopped by max_steps/max_minutes before the last epoch.
    pub stopped_early: bool,
    /// xxh3 of the final parameters: equal on every rank of a synchronised run.
    pub weights_digest: u64,
}

/// The latest checkpoint pointer (`checkpoints/latest.json`), written last.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Latest {
    /// Step of the checkpoint.
    pub step: u64,
    /// Its folder.
    pub dir: String,
}

const LATEST: &str = "checkpoints/latest.json";

fn store_err(e: s3_shards::ShardError) -> TrainError {
    TrainError::Shards(e)
}

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

/// Training rows of the selected datasets.
pub fn select_rows(
    data: &StoreLocation,
    stage: &StageConfig,
    split: Split,
    rt: &tokio::runtime::Runtime,
) -> Result<Vec<samples_table::SampleRow>> {
    let rows = rt.block_on(samples_table::read(data.store().as_ref())).map_err(store_err)?;
    let available: BTreeSet<String> = rows.iter().map(|r| r.dataset.clone()).collect();
    let chosen = stage.select_datasets(&available)?;
    Ok(rows.into_iter().filter(|r| r.split == split && chosen.contains(&r.dataset)).collect())
}

/// Three optimisers: one per part, so the encoder and the rest get their own rates.
struct Optimisers {
    encoder: ModuleOptimizer,
    prompt: ModuleOptimizer,
    decoder: ModuleOptimizer,
}

struct Accumulators {
    encoder: GradientsAccumulator<ImageEncoder>,
    prompt: GradientsAccumulator<PromptEncoder>,
    decoder: GradientsAccumulator<MaskDecoder>,
}

impl Accumulators {
    fn new() -> Self {
        Accumulators {
            encoder: GradientsAccumulator::new(),
            prompt: GradientsAccumulator::new(),
            decoder: GradientsAccumulator::new(),
        }
    }
}

/// Runs (or resumes) a stage.
pub fn train(spec: &RunSpec, device: &Device, progress: &dyn Fn(&TrainEvent)) -> Result<TrainOutcome> {
    let stage = &spec.stage;
    stage.validate()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| TrainError::Io { file: "runtime".into(), error: source })?;
    let data = open_store(&spec.data, &spec.store_options).map_err(store_err)?;
    let run = open_store(&spec.run, &spec.store_options).map_err(store_err)?;
    let rows = select_rows(&data, stage, Split::Train, &rt)?;
    if rows.is_empty() {
        return Err(TrainError::Config(format!("stage {}: no training samples selected in {}", stage.name, data)));
    }
    let sampler = Sampler::from_rows(&rows, stage.seed, stage.shard_window);
    let cfg = model_config(stage)?;
    if cfg.precision == Precision::Bf16 && !device.supports_dtype(burn::tensor::FloatDType::BF16) {
        return Err(TrainError::Config(format!(
            "stage {}: precision = \"bf16\" but this device has no bf16",
            stage.name
        )));
    }
    let ad = device.clone().autodiff();

    // Phase 1: model (seeded: every rank and every rerun starts from the same
    // weights), optimisers, resume or init.
    let mut model = seeded_model(&cfg, &ad, stage.seed);
    let adamw = AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .with_weight_decay(stage.weight_decay as f32);
    let mut opt = Optimisers { encoder: adamw.init(), prompt: adamw.init(), decoder: adamw.init() };
    let mut state = TrainState::default();
    let latest: Option<Latest> = if spec.resume {
        match rt.block_on(json::get_json::<Latest>(run.store().as_ref(), &ObjPath::from(LATEST))) {
            Ok(l) => Some(l),
            Err(s3_shards::ShardError::NotFound(_)) => None,
            Err(e) => return Err(store_err(e)),
        }
    } else {
        None
    };
    // Burnpack tensors are read lazily from the file: keep it until the run ends.
    let mut _checkpoint_files = None;
    if let Some(l) = &latest {
        let tmp;
        (model, opt, state, tmp) = load_checkpoint(&rt, &run, &l.dir, model, opt)?;
        _checkpoint_files = Some(tmp);
    } else if let Some(init) = &stage.init {
        let report = weights::load(&mut model, std::path::Path::new(init), Strictness::Strict)?;
        tracing::info!(applied = report.applied, "initialised from {init}");
    }
    if spec.rank == 0 {
        let resolved = serde_json::json!({ "stage": stage, "model": cfg, "data": spec.data, "world": spec.world });
        rt.block_on(json::put_json(run.store().as_ref(), &ObjPath::from("config.json"), &resolved))
            .map_err(store_err)?;
    }

    let per_step = (stage.batch * stage.accumulation) as u64;
    let per_rank_epoch = sampler.padded_len(spec.world) / spec.world.max(1) as u64;
    let steps_per_epoch = per_rank_epoch.div_ceil(per_step);
    progress(&TrainEvent::Started {
        samples: sampler.len(),
        steps_per_epoch,
        total_steps: steps_per_epoch * stage.epochs,
        from: state,
    });

    let started = Instant::now();
    let mut outcome =
        TrainOutcome { state, trained: Vec::new(), metrics: Vec::new(), stopped_early: false, weights_digest: 0 };
    // Every rank takes the same optimiser steps on the mean gradient of all ranks.
    let mut collective = match (spec.world > 1, spec.master.as_deref()) {
        (false, _) => None,
        (true, Some(addr)) => Some(TcpCollective::connect(addr, spec.rank, spec.world, RENDEZVOUS_TIMEOUT)?),
        (true, None) => {
            return Err(TrainError::Config(format!(
                "world size {} needs a rendezvous address for the gradient all-reduce: --master HOST:PORT \
                 (or MASTER_ADDR and MASTER_PORT); unsynchronised ranks would train different models",
                spec.world
            )));
        }
    };
    let mut metrics_csv = read_metrics(&rt, &run);
    // Phase 2: epochs.
    while state.sampler.epoch < stage.epochs {
        let epoch = state.sampler.epoch;
        let lr = stage.lr * stage.schedule.factor(epoch);
        let positions = sampler.rank_positions(state.sampler, spec.rank, spec.world);
        let loader = Loader::start(
            data.store().clone(),
            positions,
            LoaderConfig { seed: stage.seed, epoch, ..LoaderConfig::default() },
        );
        let mut micro: Vec<Item> = Vec::new();
        let mut acc = Accumulators::new();
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
            }
            let last = loaded.peek().is_none();
            if slot_positions == stage.batch || last {
                slot_positions = 0;
                slots += 1;
            }
            if slot_positions == 0 && !micro.is_empty() {
                // Phase 3: one micro-batch — embedding, click passes, loss, gradients.
                let step_seed = stage.seed ^ xxh3_64(&[epoch.to_le_bytes(), micro[0].position.to_le_bytes()].concat());
                let (loss, d) = micro_step(&model, &micro, stage, &cfg, step_seed, &ad);
                let n = micro.len();
                let loss_val: f64 = loss.clone().into_scalar::<f64>();
                let mut grads = (loss / stage.accumulation as f64).backward();
                acc.encoder
                    .accumulate(&model.image_encoder, GradientsParams::from_module(&mut grads, &model.image_encoder));
                acc.prompt
                    .accumulate(&model.prompt_encoder, GradientsParams::from_module(&mut grads, &model.prompt_encoder));
                acc.decoder
                    .accumulate(&model.mask_decoder, GradientsParams::from_module(&mut grads, &model.mask_decoder));
                outcome.trained.extend(micro.iter().map(|i| i.sample_id.clone()));
                loss_sum += loss_val * n as f64;
                dice_sum += d * n as f64;
                n_samples += n;
                micro.clear();
            }
            if slots == stage.accumulation || (last && slots > 0) {
                // Phase 4: all-reduce (when distributed), optimiser step. A step whose
                // samples were all skipped still counts (with no gradient here), so every
                // rank and every resume agrees on what step N covered.
                slots = 0;
                let mut full = std::mem::replace(&mut acc, Accumulators::new());
                let mut grads = [full.encoder.grads(), full.prompt.grads(), full.decoder.grads()];
                let mut out_of_budget = stage.max_steps.is_some_and(|s| state.step + 1 >= s)
                    || stage.max_minutes.is_some_and(|mins| started.elapsed().as_secs_f64() >= mins * 60.0);
                let mut totals = [loss_sum, dice_sum, n_samples as f64];
                if let Some(c) = collective.as_mut() {
                    // The stop decision travels with the gradients: ranks whose clocks
                    // disagree about max_minutes still stop at the same step.
                    out_of_budget = all_reduce_step(c, &model, &mut grads, &mut totals, out_of_budget, device)?;
                }
                let [g_encoder, g_prompt, g_decoder] = grads;
                let Sam { image_encoder, prompt_encoder, mask_decoder } = model;
                let small = lr * stage.decoder_lr_factor;
                model = Sam {
                    image_encoder: opt.encoder.step(lr, image_encoder, g_encoder),
                    prompt_encoder: opt.prompt.step(small, prompt_encoder, g_prompt),
                    mask_decoder: opt.decoder.step(small, mask_decoder, g_decoder),
                };
                state.step += 1;
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
                metrics_csv.push_str(&format!(
                    "{},{},{:.6},{:.6},{:.3e},{:.3}\n",
                    m.step, m.epoch, m.loss, m.dice, m.lr, m.samples_per_s
                ));
                progress(&TrainEvent::Step(m.clone()));
                outcome.metrics.push(m);
                // Phase 5: checkpoints and stopping.
                if last {
                    state.sampler = SamplerState { epoch: epoch + 1, consumed: 0 };
                }
                if spec.rank == 0 && (state.step % stage.checkpoint_every.max(1) == 0 || last || out_of_budget) {
                    let dir = save_checkpoint(&rt, &run, &model, &opt, &state, &metrics_csv)?;
                    progress(&TrainEvent::Checkpoint { step: state.step, dir });
                }
                if out_of_budget {
                    outcome.state = state;
                    outcome.stopped_early = state.sampler.epoch < stage.epochs;
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

/// How long ranks wait for each other at the rendezvous (they start in any order,
/// and a Slurm or Kubernetes rank may wait for its node).
const RENDEZVOUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// One all-reduce for a whole optimiser step: the three parts' gradients (replaced
/// by the mean over ranks), the metric totals (summed) and the stop flag (any rank).
fn all_reduce_step(
    c: &mut TcpCollective,
    model: &Sam,
    grads: &mut [GradientsParams; 3],
    totals: &mut [f64; 3],
    stop: bool,
    device: &Device,
) -> Result<bool> {
    let (mut values, mut flags) = (Vec::new(), Vec::new());
    let [g0, g1, g2] = grads;
    flat::gather(&model.image_encoder, g0, &mut values, &mut flags);
    flat::gather(&model.prompt_encoder, g1, &mut values, &mut flags);
    flat::gather(&model.mask_decoder, g2, &mut values, &mut flags);
    let (nv, nf) = (values.len(), flags.len());
    values.extend(flags);
    values.extend(totals.iter().map(|&t| t as f32));
    values.push(f32::from(u8::from(stop)));
    c.all_reduce_sum(&mut values)?;
    let (vals, rest) = values.split_at(nv);
    let (flags, rest) = rest.split_at(nf);
    let scale = 1.0 / c.world() as f32;
    let (mut pos, mut k) = (0, 0);
    flat::scatter(&model.image_encoder, g0, vals, flags, &mut pos, &mut k, scale, device);
    flat::scatter(&model.prompt_encoder, g1, vals, flags, &mut pos, &mut k, scale, device);
    flat::scatter(&model.mask_decoder, g2, vals, flags, &mut pos, &mut k, scale, device);
    for (t, v) in totals.iter_mut().zip(&rest[..3]) {
        *t = f64::from(*v);
    }
    Ok(rest[3] > 0.0)
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

/// One micro-batch: the image embedding once, then `clicks` decoder passes, each
/// with a new click from the error region and the previous low-res logits as the
/// mask prompt; a random pass in 2..=8 and the last get no points. Returns the loss
/// summed over passes (mean over the batch) and the last pass's mean Dice.
pub fn micro_step(
    model: &Sam,
    items: &[Item],
    stage: &StageConfig,
    cfg: &SamConfig,
    seed: u64,
    device: &Device,
) -> (Tensor<1>, f64) {
    let (b, s) = (items.len(), cfg.img_size);
    let vox = s * s * s;
    let volume = |f: fn(&Item) -> &Vec<f32>| {
        let data: Vec<f32> = items.iter().flat_map(|i| f(i).iter().copied()).collect();
        Tensor::<5>::from_data(TensorData::new(data, [b, 1, s, s, s]), device)
    };
    let images = volume(|i| &i.image);
    let l = cfg.low_res();
    let low_loss = stage.loss_resolution == LossResolution::Low;
    let masks = if low_loss {
        let data: Vec<f32> = items.iter().flat_map(|i| area_fraction(&i.mask, s, l)).collect();
        Tensor::<5>::from_data(TensorData::new(data, [b, 1, l, l, l]), device)
    } else {
        volume(|i| &i.mask)
    };
    let emb = model.image_encoder.forward(images); // [B, E, g, g, g]
    let mut low = Tensor::<5>::zeros([b, 1, l, l, l], device);
    let mut rng = Rng::new(seed);
    let no_point = 2 + (rng.next_u64() % 7) as usize;
    let mut rngs: Vec<Rng> = items.iter().map(|i| Rng::new(seed ^ xxh3_64(i.sample_id.as_bytes()))).collect();
    let mut preds: Vec<Vec<f32>> = vec![vec![0.0; vox]; b];
    let mut clicks: Vec<Vec<Click>> = vec![Vec::new(); b];
    let mut total = Tensor::<1>::zeros([1], device);
    for pass in 0..stage.clicks {
        for (k, item) in items.iter().enumerate() {
            clicks[k].push(next_click(&preds[k], &item.mask, s, &mut rngs[k]));
        }
        let use_points = pass != no_point && pass + 1 != stage.clicks;
        let points = use_points.then(|| points_tensors(&clicks, device));
        let out = model.decode(emb.clone(), Prompt { points, mask: Some(low) });
        let (logits, _) = out.single(); // [B, 1, L, L, L]
        // Clicks always come from the full-resolution prediction, as in evaluation;
        // with the low-res loss the upsampling stays off the graph (and off the backend).
        if low_loss {
            total = total + seg_loss(logits.clone(), masks.clone(), stage.legacy_loss);
            let v: Vec<f32> = logits.clone().detach().into_data().try_to_vec::<f32>().expect("f32 logits");
            preds = v.chunks(l * l * l).map(|c| trilinear_values(c, l, s)).collect();
        } else {
            let full = trilinear(logits.clone(), s); // [B, 1, S, S, S]
            total = total + seg_loss(full.clone(), masks.clone(), stage.legacy_loss);
            let v: Vec<f32> = full.detach().into_data().try_to_vec::<f32>().expect("f32 logits");
            preds = v.chunks(vox).map(<[f32]>::to_vec).collect();
        }
        low = logits;
    }
    let d = items.iter().zip(&preds).map(|(i, p)| dice(p, &i.mask)).sum::<f64>() / b as f64;
    (total, d)
}

/// The fraction of each `low`³ voxel's block of a `side`³ mask that is foreground.
pub fn area_fraction(mask: &[f32], side: usize, low: usize) -> Vec<f32> {
    let f = side / low;
    let mut out = vec![0f32; low * low * low];
    for (n, &m) in mask.iter().enumerate() {
        if m > 0.5 {
            let (i, j, k) = (n / (side * side) / f, n / side % side / f, n % side / f);
            out[(i * low + j) * low + k] += 1.0;
        }
    }
    let block = (f * f * f) as f32;
    out.iter_mut().for_each(|v| *v /= block);
    out
}

/// Clicks so far as `[B, N, 3]` coordinates and `[B, N]` labels.
pub fn points_tensors(clicks: &[Vec<Click>], device: &Device) -> (Tensor<3>, Tensor<2>) {
    let (b, n) = (clicks.len(), clicks[0].len());
    let coords: Vec<f32> = clicks.iter().flat_map(|c| c.iter().flat_map(|p| p.at)).collect();
    let labels: Vec<f32> = clicks.iter().flat_map(|c| c.iter().map(|p| p.label)).collect();
    (
        Tensor::from_data(TensorData::new(coords, [b, n, 3]), device),
        Tensor::from_data(TensorData::new(labels, [b, n]), device),
    )
}

/// Dice + BCE on logits `[B, 1, S, S, S]` (mean over the batch); `legacy` is the
/// reference's effective loss: Dice with squared predictions only (its CE term was 0).
pub fn seg_loss(logits: Tensor<5>, target: Tensor<5>, legacy: bool) -> Tensor<1> {
    let [b, _, _, _, _] = logits.dims();
    let x: Tensor<2> = logits.reshape([b as i32, -1]);
    let t: Tensor<2> = target.reshape([b as i32, -1]);
    let p = activation::sigmoid(x.clone());
    let inter = (p.clone() * t.clone()).sum_dim(1);
    let denom = if legacy {
        p.clone().square().sum_dim(1) + t.clone().square().sum_dim(1)
    } else {
        p.sum_dim(1) + t.clone().sum_dim(1)
    };
    let dice_loss = ((inter * 2.0 + 1e-5) / (denom + 1e-5)).neg() + 1.0; // [B, 1]
    let dice_loss: Tensor<1> = dice_loss.mean().reshape([1]);
    if legacy {
        return dice_loss;
    }
    // BCE with logits, stable form: max(x, 0) − x·t + log(1 + e^−|x|)
    let bce = x.clone().clamp_min(0.0) - x.clone() * t + (x.abs().neg().exp() + 1.0).log();
    dice_loss + bce.mean().reshape([1])
}

fn temp_dir() -> Result<tempfile::TempDir> {
    tempfile::tempdir().map_err(|source| TrainError::Io { file: "temp dir".into(), error: source })
}

async fn put_file(store: &dyn ObjectStore, key: &str, file: &std::path::Path) -> Result<()> {
    let bytes =
        std::fs::read(file).map_err(|source| TrainError::Io { file: file.display().to_string(), error: source })?;
    store
        .put(&ObjPath::from(key), PutPayload::from(bytes))
        .await
        .map_err(|e| store_err(s3_shards::ShardError::Store { op: "put", path: ObjPath::from(key), source: e }))?;
    Ok(())
}

async fn get_file(store: &dyn ObjectStore, key: &str, file: &std::path::Path) -> Result<()> {
    let bytes = json::get_bytes(store, &ObjPath::from(key)).await.map_err(store_err)?;
    std::fs::write(file, &bytes).map_err(|source| TrainError::Io { file: file.display().to_string(), error: source })
}

/// Writes `checkpoints/step-N/` (model and optimiser state as burnpack, weights as
/// reference-named safetensors, state.json), then `checkpoints/latest.json` last: a
/// reader following the pointer only ever finds a complete checkpoint.
fn save_checkpoint(
    rt: &tokio::runtime::Runtime,
    run: &StoreLocation,
    model: &Sam,
    opt: &Optimisers,
    state: &TrainState,
    metrics_csv: &str,
) -> Result<String> {
    let dir = format!("checkpoints/step-{:08}", state.step);
    let tmp = temp_dir()?;
    let store = run.store().as_ref();
    let record_err = |e: burn::store::RecordError| TrainError::Weights { file: dir.clone(), reason: e.to_string() };
    model.clone().save_file(tmp.path().join("model")).map_err(record_err)?;
    weights::export_safetensors(&model.clone().valid(), &tmp.path().join("weights.safetensors"))?;
    for (name, o) in [("encoder", &opt.encoder), ("prompt", &opt.prompt), ("decoder", &opt.decoder)] {
        o.save(tmp.path().join(format!("optim-{name}"))).map_err(record_err)?;
    }
    rt.block_on(async {
        put_file(store, &format!("{dir}/model.bpk"), &tmp.path().join("model.bpk")).await?;
        put_file(store, &format!("{dir}/weights.safetensors"), &tmp.path().join("weights.safetensors")).await?;
        for name in ["encoder", "prompt", "decoder"] {
            put_file(store, &format!("{dir}/optim-{name}.bpk"), &tmp.path().join(format!("optim-{name}.bpk"))).await?;
        }
        json::put_json(store, &ObjPath::from(format!("{dir}/state.json")), state).await.map_err(store_err)?;
        store.put(&ObjPath::from("metrics.csv"), PutPayload::from(metrics_csv.as_bytes().to_vec())).await.map_err(
            |e| store_err(s3_shards::ShardError::Store { op: "put", path: ObjPath::from("metrics.csv"), source: e }),
        )?;
        // A plot that fails to render is logged, never a reason to lose a checkpoint.
        match plots::render_png(&plots::Curves::parse(metrics_csv), &format!("run at step {}", state.step)) {
            Ok(png) => {
                if let Err(e) = store.put(&ObjPath::from("metrics.png"), PutPayload::from(png)).await {
                    tracing::warn!("writing metrics.png: {e}");
                }
            }
            Err(e) => tracing::warn!("{e}"),
        }
        json::put_json(store, &ObjPath::from(LATEST), &Latest { step: state.step, dir: dir.clone() })
            .await
            .map_err(store_err)
    })?;
    Ok(dir)
}

fn load_checkpoint(
    rt: &tokio::runtime::Runtime,
    run: &StoreLocation,
    dir: &str,
    model: Sam,
    opt: Optimisers,
) -> Result<(Sam, Optimisers, TrainState, tempfile::TempDir)> {
    let tmp = temp_dir()?;
    let store = run.store().as_ref();
    let state: TrainState = rt.block_on(async {
        get_file(store, &format!("{dir}/model.bpk"), &tmp.path().join("model.bpk")).await?;
        for name in ["encoder", "prompt", "decoder"] {
            get_file(store, &format!("{dir}/optim-{name}.bpk"), &tmp.path().join(format!("optim-{name}.bpk"))).await?;
        }
        json::get_json(store, &ObjPath::from(format!("{dir}/state.json"))).await.map_err(store_err)
    })?;
    let err = |e: burn::store::RecordError| TrainError::Weights { file: dir.to_string(), reason: e.to_string() };
    let model = model.try_load_file(tmp.path().join("model.bpk")).map_err(err)?;
    let opt = Optimisers {
        encoder: opt.encoder.load(tmp.path().join("optim-encoder.bpk")).map_err(err)?,
        prompt: opt.prompt.load(tmp.path().join("optim-prompt.bpk")).map_err(err)?,
        decoder: opt.decoder.load(tmp.path().join("optim-decoder.bpk")).map_err(err)?,
    };
    Ok((model, opt, state, tmp))
}

fn read_metrics(rt: &tokio::runtime::Runtime, run: &StoreLocation) -> String {
    match rt.block_on(json::get_bytes(run.store().as_ref(), &ObjPath::from("metrics.csv"))) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(_) => "step,epoch,loss,dice,lr,samples_per_s\n".into(),
    }
}

/// Loads the weights of the run's latest checkpoint into a fresh model on `device`.
pub fn load_latest_weights(
    run_url: &str,
    options: &StoreOptions,
    cfg: &SamConfig,
    device: &Device,
) -> Result<(Sam, u64)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| TrainError::Io { file: "runtime".into(), error: source })?;
    let run = open_store(run_url, options).map_err(store_err)?;
    let latest: Latest =
        rt.block_on(json::get_json(run.store().as_ref(), &ObjPath::from(LATEST))).map_err(store_err)?;
    let tmp = temp_dir()?;
    let file = tmp.path().join("weights.safetensors");
    rt.block_on(get_file(run.store().as_ref(), &format!("{}/weights.safetensors", latest.dir), &file))?;
    let mut model = Sam::new(cfg, device);
    weights::load(&mut model, &file, Strictness::Strict)?;
    Ok((model, latest.step))
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

    #[test]
    fn area_fraction_averages_each_block() {
        // 4³ mask → 2³: block (0,0,0) full, block (1,1,1) one voxel of 8, the rest empty.
        let (side, low) = (4, 2);
        let mut mask = vec![0f32; side * side * side];
        for i in 0..2 {
            for j in 0..2 {
                for k in 0..2 {
                    mask[(i * side + j) * side + k] = 1.0;
                }
            }
        }
        mask[(3 * side + 2) * side + 3] = 1.0;
        let f = area_fraction(&mask, side, low);
        assert_eq!(f[0], 1.0);
        assert_eq!(f[(low + 1) * low + 1], 1.0 / 8.0);
        assert_eq!(f.iter().sum::<f32>(), 1.125);
    }
}
