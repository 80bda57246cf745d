//! Parity with the reference implementation on a fixture (`<prefix>.json`,
//! `<prefix>.weights.safetensors`, `<prefix>.io.safetensors`).

use std::path::{Path, PathBuf};

use burn::prelude::*;

use crate::config::{Precision, SamConfig};
use crate::error::{Result, TrainError};
use crate::model::layers::trilinear;
use crate::model::{Prompt, Sam};
use crate::weights::{Strictness, load_safetensors, read_tensor};

/// Largest relative error allowed per output: max|ours − ref| / max|ref|.
pub const TOLERANCE: f64 = 1e-4;

/// One compared output.
#[derive(Clone, Debug)]
pub struct Comparison {
    /// Output name in the io file.
    pub name: String,
    /// max |ours − ref|
    pub max_abs: f64,
    /// max_abs / max |ref|
    pub rel: f64,
    /// Whether the shapes agreed.
    pub shape_ok: bool,
}

impl Comparison {
    /// Within [`TOLERANCE`].
    pub fn ok(&self) -> bool {
        self.shape_ok && self.rel <= TOLERANCE
    }
}

fn compare<const D: usize>(name: &str, ours: Tensor<D>, reference: Tensor<D>) -> Comparison {
    if ours.dims() != reference.dims() {
        return Comparison { name: name.into(), max_abs: f64::INFINITY, rel: f64::INFINITY, shape_ok: false };
    }
    let max_abs: f64 = (ours - reference.clone()).abs().max().into_scalar::<f64>();
    let scale: f64 = reference.abs().max().into_scalar::<f64>();
    Comparison { name: name.into(), max_abs, rel: max_abs / scale.max(f64::MIN_POSITIVE), shape_ok: true }
}

/// Runs the fixture's forward pass and compares every output.
pub fn check_fixture(prefix: &Path, device: &Device) -> Result<Vec<Comparison>> {
    check_fixture_with(prefix, device, Precision::F32)
}

/// The comparison as a table and a verdict: every output within [`TOLERANCE`] (f32),
/// or, in bf16, the largest error reported and not held to it.
pub fn report(results: &[Comparison], precision: Precision) -> (String, bool) {
    let mut out = format!("{:<28} {:>14} {:>14}\n", "OUTPUT", "MAX ABS ERR", "REL ERR");
    for r in results {
        let verdict = if r.ok() { "ok" } else { "FAIL" };
        out.push_str(&format!("{:<28} {:>14.3e} {:>14.3e}  {verdict}\n", r.name, r.max_abs, r.rel));
    }
    if precision == Precision::Bf16 {
        let worst = results.iter().map(|r| r.rel).fold(0.0, f64::max);
        out.push_str(&format!(
            "bf16: largest relative error {worst:.3e} against the f32 reference (reported, not held to 1e-4)\n"
        ));
        return (out, true);
    }
    if results.iter().any(|r| !r.ok()) {
        out.push_str(&format!("parity FAILED (tolerance {TOLERANCE:e})\n"));
        return (out, false);
    }
    out.push_str(&format!("parity ok: every output within {TOLERANCE:e} of the reference\n"));
    (out, true)
}

/// [`check_fixture`] with the encoder in `precision` (bf16 is measured against the
/// f32 reference, not held to [`TOLERANCE`]).
pub fn check_fixture_with(prefix: &Path, device: &Device, precision: Precision) -> Result<Vec<Comparison>> {
    let with = |suffix: &str| PathBuf::from(format!("{}{suffix}", prefix.display()));
    let json_path = with(".json");
    let text = std::fs::read_to_string(&json_path)
        .map_err(|source| TrainError::Io { file: json_path.display().to_string(), error: source })?;
    let parse = |source: Box<dyn std::error::Error + Send + Sync>| TrainError::Parse {
        file: json_path.display().to_string(),
        source,
    };
    let meta: serde_json::Value = serde_json::from_str(&text).map_err(|e| parse(Box::new(e)))?;
    let cfg = SamConfig { precision, ..SamConfig::from_fixture(&meta["config"]).map_err(|e| parse(e.into()))? };
    let mut model = Sam::new(&cfg, device);
    load_safetensors(&mut model, &with(".weights.safetensors"), Strictness::Strict)?;
    let io = with(".io.safetensors");

    let image: Tensor<5> = read_tensor(&io, "input_image", device)?;
    let coords: Tensor<3> = read_tensor(&io, "point_coords", device)?;
    let labels: Tensor<2> = read_tensor(&io, "point_labels", device)?;
    let mask: Tensor<5> = read_tensor(&io, "mask_input", device)?;

    let embeddings = model.image_encoder.forward(image);
    let sparse = model.prompt_encoder.embed_points(coords.clone(), labels.clone());
    let [b, _, _, _, _] = embeddings.dims();
    let dense = model.prompt_encoder.embed_mask(Some(mask.clone()), b, device);
    let pe = model.prompt_encoder.dense_pe(device);
    let out = model.decode(embeddings.clone(), Prompt { points: Some((coords, labels)), mask: Some(mask) });
    let (low, iou) = out.single();
    let (low_multi, iou_multi) = out.multi();
    let upsampled = trilinear(low.clone(), cfg.img_size);

    Ok(vec![
        compare("image_embeddings", embeddings, read_tensor(&io, "image_embeddings", device)?),
        compare("sparse_embeddings", sparse, read_tensor(&io, "sparse_embeddings", device)?),
        compare("dense_embeddings", dense, read_tensor(&io, "dense_embeddings", device)?),
        compare("image_pe", pe, read_tensor(&io, "image_pe", device)?),
        compare("low_res_logits", low, read_tensor(&io, "low_res_logits", device)?),
        compare("iou_predictions", iou, read_tensor(&io, "iou_predictions", device)?),
        compare("low_res_logits_multimask", low_multi, read_tensor(&io, "low_res_logits_multimask", device)?),
        compare("iou_predictions_multimask", iou_multi, read_tensor(&io, "iou_predictions_multimask", device)?),
        compare("upsampled_logits", upsampled, read_tensor(&io, "upsampled_logits", device)?),
    ])
}
