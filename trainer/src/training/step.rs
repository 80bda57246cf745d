//! One micro-batch and one optimiser step: the click-simulation passes (shared
//! with evaluation through [`ClickLoop`]), the per-part AdamW optimisers and the
//! gradient accumulation, and the one all-reduce per step.

use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use s3_shards::synthetic::Rng;
use xxhash_rust::xxh3::xxh3_64;

use crate::clicks::{Click, dice, next_click};
use crate::collective::{Collective, flat};
use crate::config::SamConfig;
use crate::error::Result;
use crate::loader::Item;
use crate::loss::{area_fraction, seg_loss};
use crate::model::layers::{trilinear, trilinear_values};
use crate::model::{ImageEncoder, MaskDecoder, Prompt, PromptEncoder, Sam};
use crate::stage::{ClickMemory, LossResolution, StageConfig};

/// Three optimisers: one per part, so the encoder and the rest get their own rates.
pub(crate) struct Optimisers {
    encoder: ModuleOptimizer,
    prompt: ModuleOptimizer,
    decoder: ModuleOptimizer,
}

impl Optimisers {
    pub(crate) fn new(adamw: &AdamWConfig) -> Self {
        Optimisers { encoder: adamw.init(), prompt: adamw.init(), decoder: adamw.init() }
    }
    pub(crate) fn parts(&self) -> [&ModuleOptimizer; 3] {
        [&self.encoder, &self.prompt, &self.decoder]
    }
    pub(crate) fn into_parts(self) -> [ModuleOptimizer; 3] {
        [self.encoder, self.prompt, self.decoder]
    }
    pub(crate) fn from_parts([encoder, prompt, decoder]: [ModuleOptimizer; 3]) -> Self {
        Optimisers { encoder, prompt, decoder }
    }

    /// One AdamW step: the encoder at `lr`, prompt encoder and decoder at `small`.
    pub(crate) fn step(&mut self, model: Sam, grads: [GradientsParams; 3], lr: f64, small: f64) -> Sam {
        let [g_encoder, g_prompt, g_decoder] = grads;
        let Sam { image_encoder, prompt_encoder, mask_decoder } = model;
        Sam {
            image_encoder: self.encoder.step(lr, image_encoder, g_encoder),
            prompt_encoder: self.prompt.step(small, prompt_encoder, g_prompt),
            mask_decoder: self.decoder.step(small, mask_decoder, g_decoder),
        }
    }
}

/// Gradients summed over the micro-batches of one optimiser step.
pub(crate) struct Accumulators {
    encoder: GradientsAccumulator<ImageEncoder>,
    prompt: GradientsAccumulator<PromptEncoder>,
    decoder: GradientsAccumulator<MaskDecoder>,
}

impl Accumulators {
    pub(crate) fn new() -> Self {
        Accumulators {
            encoder: GradientsAccumulator::new(),
            prompt: GradientsAccumulator::new(),
            decoder: GradientsAccumulator::new(),
        }
    }

    /// Adds the gradients of `loss` (already divided by the accumulation count).
    pub(crate) fn add(&mut self, model: &Sam, loss: Tensor<1>) {
        let mut grads = loss.backward();
        self.encoder.accumulate(&model.image_encoder, GradientsParams::from_module(&mut grads, &model.image_encoder));
        self.prompt.accumulate(&model.prompt_encoder, GradientsParams::from_module(&mut grads, &model.prompt_encoder));
        self.decoder.accumulate(&model.mask_decoder, GradientsParams::from_module(&mut grads, &model.mask_decoder));
    }

    /// The step's gradients, leaving the accumulators empty.
    pub(crate) fn take(&mut self) -> [GradientsParams; 3] {
        let mut full = std::mem::replace(self, Accumulators::new());
        [full.encoder.grads(), full.prompt.grads(), full.decoder.grads()]
    }
}

/// The click-simulation state of a batch (DESIGN §8), shared by training and
/// evaluation: each pass draws one click per sample (the first uniform in the
/// mask, later ones uniform in the error region of the previous prediction) and
/// decodes with the clicks so far and the previous low-res logits.
pub struct ClickLoop {
    side: usize,
    low_side: usize,
    low: Tensor<5>,
    preds: Vec<Vec<f32>>,
    clicks: Vec<Vec<Click>>,
    rngs: Vec<Rng>,
    memory: ClickMemory,
}

impl ClickLoop {
    /// A fresh loop for the samples `ids` (each sample's clicks seeded by `seed` and its
    /// id); `memory` says which of the clicks so far each pass shows the decoder.
    pub fn new(ids: &[&str], seed: u64, cfg: &SamConfig, memory: ClickMemory, device: &Device) -> ClickLoop {
        let (s, l, b) = (cfg.img_size, cfg.low_res(), ids.len());
        ClickLoop {
            side: s,
            low_side: l,
            low: Tensor::<5>::zeros([b, 1, l, l, l], device),
            preds: vec![vec![0.0; s * s * s]; b],
            clicks: vec![Vec::new(); b],
            rngs: ids.iter().map(|id| Rng::new(seed ^ xxh3_64(id.as_bytes()))).collect(),
            memory,
        }
    }

    /// One pass: new clicks from `masks` (128³, 0/1 per sample), then the decoder with
    /// the clicks (or none when `use_points` is false) and the previous low-res logits.
    /// Returns the low-res logits `[B, 1, L, L, L]`, still on the autodiff graph.
    pub fn pass(
        &mut self,
        model: &Sam,
        emb: Tensor<5>,
        masks: &[&[f32]],
        use_points: bool,
        device: &Device,
    ) -> Tensor<5> {
        for (k, mask) in masks.iter().enumerate() {
            self.clicks[k].push(next_click(&self.preds[k], mask, self.side, &mut self.rngs[k]));
        }
        self.decode(model, emb, use_points, device)
    }

    /// Adds a click of one's own (inference) to sample `k`, for the next [`ClickLoop::decode`].
    pub fn push(&mut self, k: usize, click: Click) {
        self.clicks[k].push(click);
    }

    /// The decoder with the clicks so far (or none when `use_points` is false) and the
    /// previous low-res logits; returns the new low-res logits `[B, 1, L, L, L]`.
    pub fn decode(&mut self, model: &Sam, emb: Tensor<5>, use_points: bool, device: &Device) -> Tensor<5> {
        let points = use_points.then(|| points_tensors(&visible(&self.clicks, self.memory), device));
        let out = model.decode(emb, Prompt { points, mask: Some(self.low.clone()) });
        let (logits, _) = out.single(); // [B, 1, L, L, L]
        self.low = logits.clone();
        logits
    }

    /// Takes the next clicks' predictions from low-res logits, upsampled on the host
    /// (off the graph and off the backend).
    pub fn predict_from_low(&mut self, logits: &Tensor<5>) {
        let (l, s) = (self.low_side, self.side);
        let v: Vec<f32> = logits.clone().detach().into_data().convert::<f32>().try_to_vec::<f32>().expect("f32");
        self.preds = v.chunks(l * l * l).map(|c| trilinear_values(c, l, s)).collect();
    }

    /// Takes the next clicks' predictions from full-resolution logits `[B, 1, S, S, S]`.
    pub fn predict_from_full(&mut self, full: &Tensor<5>) {
        let vox = self.side.pow(3);
        let v: Vec<f32> = full.clone().detach().into_data().convert::<f32>().try_to_vec::<f32>().expect("f32");
        self.preds = v.chunks(vox).map(<[f32]>::to_vec).collect();
    }

    /// The current full-resolution logits of sample `k` (> 0: foreground).
    pub fn prediction(&self, k: usize) -> &[f32] {
        &self.preds[k]
    }

    /// Dice (sigmoid > 0.5) of the current prediction of sample `k` against `mask`.
    pub fn dice(&self, k: usize, mask: &[f32]) -> f64 {
        dice(&self.preds[k], mask)
    }
}

/// One micro-batch: the image embedding once, then `clicks` decoder passes through a
/// [`ClickLoop`]; a random pass in 2..=8 and the last get no points. Returns the loss
/// summed over passes (mean over the batch), its gradient's tensor, and the last
/// pass's mean Dice.
pub fn micro_step(
    model: &Sam,
    items: &[Item],
    stage: &StageConfig,
    cfg: &SamConfig,
    seed: u64,
    device: &Device,
) -> MicroStep {
    let (b, s) = (items.len(), cfg.img_size);
    let volume = |f: fn(&Item) -> &Vec<f32>| {
        let data: Vec<f32> = items.iter().flat_map(|i| f(i).iter().copied()).collect();
        Tensor::<5>::from_data(TensorData::new(data, [b, 1, s, s, s]), device)
    };
    let l = cfg.low_res();
    let low_loss = stage.loss_resolution == LossResolution::Low;
    let targets = if low_loss {
        let data: Vec<f32> = items.iter().flat_map(|i| area_fraction(&i.mask, s, l)).collect();
        Tensor::<5>::from_data(TensorData::new(data, [b, 1, l, l, l]), device)
    } else {
        volume(|i| &i.mask)
    };
    let emb = model.image_encoder.forward(volume(|i| &i.image)); // [B, E, g, g, g]
    let no_point = 2 + (Rng::new(seed).next_u64() % 7) as usize;
    let ids: Vec<&str> = items.iter().map(|i| i.sample_id.as_str()).collect();
    let masks: Vec<&[f32]> = items.iter().map(|i| i.mask.as_slice()).collect();
    let mut clicks = ClickLoop::new(&ids, seed, cfg, stage.click_memory, device);
    let mut total = Tensor::<1>::zeros([1], device);
    let mut value = Tensor::<1>::zeros([1], device);
    for pass in 0..stage.clicks {
        let use_points = pass != no_point && pass + 1 != stage.clicks;
        let logits = clicks.pass(model, emb.clone(), &masks, use_points, device);
        // Clicks always come from the full-resolution prediction, as in evaluation;
        // with the low-res loss the upsampling stays off the graph.
        let loss = if low_loss {
            clicks.predict_from_low(&logits);
            seg_loss(logits, targets.clone(), stage.legacy_loss)
        } else {
            let full = trilinear(logits, s); // [B, 1, S, S, S]
            clicks.predict_from_full(&full);
            seg_loss(full, targets.clone(), stage.legacy_loss)
        };
        total = total + loss.surrogate;
        value = value + loss.value;
    }
    let d = items.iter().enumerate().map(|(k, i)| clicks.dice(k, &i.mask)).sum::<f64>() / b as f64;
    MicroStep { loss: total, value: value.into_scalar::<f64>(), dice: d }
}

/// What a micro-batch computed.
pub struct MicroStep {
    /// Backward through this for the loss's gradients (its value is not the loss).
    pub loss: Tensor<1>,
    /// The loss summed over passes (mean over the batch).
    pub value: f64,
    /// The last pass's mean Dice.
    pub dice: f64,
}

/// The clicks a pass shows the decoder: each sample's newest (`New`) or all so far.
fn visible(clicks: &[Vec<Click>], memory: ClickMemory) -> Vec<Vec<Click>> {
    match memory {
        ClickMemory::All => clicks.to_vec(),
        ClickMemory::New => clicks.iter().map(|c| c.last().cloned().into_iter().collect()).collect(),
    }
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

/// One all-reduce for a whole optimiser step: the three parts' gradients (replaced
/// by the mean over ranks), the metric totals (summed) and the stop flags (any rank),
/// in one flat buffer built on `device` ([`flat`]); the collective keeps it there
/// (NCCL) or takes it through the host (TCP).
pub(crate) fn all_reduce_step(
    c: &mut dyn Collective,
    model: &Sam,
    grads: &mut [GradientsParams; 3],
    totals: &mut [f64; 3],
    stops: [bool; 2],
    device: &Device,
) -> Result<[bool; 2]> {
    let (mut pieces, mut flags) = (Vec::new(), Vec::new());
    let [g0, g1, g2] = grads;
    flat::gather(&model.image_encoder, g0, &mut pieces, &mut flags, device);
    flat::gather(&model.prompt_encoder, g1, &mut pieces, &mut flags, device);
    flat::gather(&model.mask_decoder, g2, &mut pieces, &mut flags, device);
    let layout = flat::Layout {
        values: pieces.iter().map(|p| p.dims()[0]).sum(),
        flags: flags.len(),
        extra: totals.len() + stops.len(),
    };
    let mut tail = flags;
    tail.extend(totals.iter().map(|&t| t as f32));
    tail.extend(stops.map(flat::flag));
    pieces.push(Tensor::from_data(TensorData::new(tail, [layout.tail().len()]), device));
    let summed = c.all_reduce_sum_tensor(Tensor::cat(pieces, 0))?; // [layout.len()]
    let tail: Vec<f32> =
        summed.clone().slice(layout.tail()).into_data().convert::<f32>().try_into_vec::<f32>().expect("f32");
    let (flags, rest) = tail.split_at(layout.flags);
    let values = summed.slice(layout.values()); // [layout.values]
    let scale = flat::mean_scale(c.world());
    let (mut pos, mut k) = (0, 0);
    flat::scatter(&model.image_encoder, g0, &values, flags, &mut pos, &mut k, scale);
    flat::scatter(&model.prompt_encoder, g1, &values, flags, &mut pos, &mut k, scale);
    flat::scatter(&model.mask_decoder, g2, &values, flags, &mut pos, &mut k, scale);
    for (t, v) in totals.iter_mut().zip(&rest[..3]) {
        *t = f64::from(*v);
    }
    Ok([flat::any(rest[3]), flat::any(rest[4])])
}

/// Every rank's weights digest through the collective (exactly: 16-bit pieces in
/// each rank's own slots of a zero buffer, summed); an error naming the ranks when
/// they differ. A synchronised run can never drift apart silently, as the
/// reference's DDP did.
pub(crate) fn check_same_weights(c: &mut dyn Collective, digest: u64, step: u64) -> Result<()> {
    let (rank, world) = (c.rank(), c.world());
    let mut buf = vec![0f32; world * 4];
    for k in 0..4 {
        buf[rank * 4 + k] = ((digest >> (16 * k)) & 0xffff) as f32;
    }
    c.all_reduce_sum(&mut buf)?;
    let digests: Vec<u64> =
        (0..world).map(|r| (0..4).fold(0u64, |acc, k| acc | ((buf[r * 4 + k] as u64) << (16 * k)))).collect();
    if digests.iter().any(|&d| d != digests[0]) {
        let list: Vec<String> = digests.iter().enumerate().map(|(r, d)| format!("rank {r}: {d:016x}")).collect();
        return Err(crate::error::TrainError::Collective(format!(
            "the ranks hold different weights (or start from different positions) at step {step} ({}); the run stops \
             rather than train diverged copies",
            list.join(", ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_shows_the_newest_click_or_every_click_so_far() {
        let c = |x: f32, label: f32| Click { at: [x, 0.0, 0.0], label };
        let so_far = vec![vec![c(1.0, 1.0), c(2.0, 0.0), c(3.0, 1.0)], vec![c(7.0, 1.0), c(8.0, 1.0), c(9.0, 0.0)]];
        let newest = visible(&so_far, ClickMemory::New);
        assert_eq!(newest, vec![vec![c(3.0, 1.0)], vec![c(9.0, 0.0)]]);
        assert_eq!(visible(&so_far, ClickMemory::All), so_far);
        let first = vec![vec![c(1.0, 1.0)]];
        assert_eq!(visible(&first, ClickMemory::New), first, "the first pass has one click either way");
    }
}
