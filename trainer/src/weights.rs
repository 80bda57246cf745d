//! Weights under the reference's key names: safetensors and PyTorch checkpoints in,
//! safetensors out.
//!
//! The module tree mirrors the reference's, so most keys map by name; the
//! `nn.Sequential` members (numbered in PyTorch) have names here, mapped by
//! [`SEQUENTIAL_NAMES`]. Linear weights are transposed and LayerNorm
//! `weight/bias` become `gamma/beta` by burn-store's PyTorch adapters.

use std::path::Path;

use burn::prelude::*;
use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter, PytorchStore, SafetensorsStore};

use crate::error::{Result, TrainError};
use crate::model::Sam;

/// (reference key prefix, our module path prefix) for the numbered `nn.Sequential` members.
pub const SEQUENTIAL_NAMES: [(&str, &str); 12] = [
    ("image_encoder.neck.0.", "image_encoder.neck.conv1."),
    ("image_encoder.neck.1.", "image_encoder.neck.norm1."),
    ("image_encoder.neck.2.", "image_encoder.neck.conv2."),
    ("image_encoder.neck.3.", "image_encoder.neck.norm2."),
    ("prompt_encoder.mask_downscaling.0.", "prompt_encoder.mask_downscaling.conv1."),
    ("prompt_encoder.mask_downscaling.1.", "prompt_encoder.mask_downscaling.norm1."),
    ("prompt_encoder.mask_downscaling.3.", "prompt_encoder.mask_downscaling.conv2."),
    ("prompt_encoder.mask_downscaling.4.", "prompt_encoder.mask_downscaling.norm2."),
    ("prompt_encoder.mask_downscaling.6.", "prompt_encoder.mask_downscaling.conv3."),
    ("mask_decoder.output_upscaling.0.", "mask_decoder.output_upscaling.convt1."),
    ("mask_decoder.output_upscaling.1.", "mask_decoder.output_upscaling.norm."),
    ("mask_decoder.output_upscaling.3.", "mask_decoder.output_upscaling.convt2."),
];

fn to_regex(prefix: &str) -> String {
    format!("^{}", regex_escape(prefix))
}

fn regex_escape(s: &str) -> String {
    s.chars().flat_map(|c| if c == '.' { vec!['\\', '.'] } else { vec![c] }).collect()
}

/// How strictly a checkpoint must match the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strictness {
    /// Every model parameter present and every file key used.
    Strict,
    /// Load what matches; report the rest.
    AllowPartial,
}

/// What a load did.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// Tensors applied.
    pub applied: usize,
    /// Model parameters the file lacked.
    pub missing: Vec<String>,
    /// File keys no parameter took.
    pub unused: Vec<String>,
}

fn check(report: LoadReport, strictness: Strictness, file: &Path) -> Result<LoadReport> {
    if strictness == Strictness::Strict && (!report.missing.is_empty() || !report.unused.is_empty()) {
        return Err(TrainError::Weights {
            file: file.display().to_string(),
            reason: format!("missing keys {:?}; unexpected keys {:?}", report.missing, report.unused),
        });
    }
    Ok(report)
}

/// Loads a safetensors file with reference key names into `model`.
pub fn load_safetensors(model: &mut Sam, file: &Path, strictness: Strictness) -> Result<LoadReport> {
    let mut store = SafetensorsStore::from_file(file).with_from_adapter(PyTorchToBurnAdapter).allow_partial(true);
    for (from, to) in SEQUENTIAL_NAMES {
        store = store.with_key_remapping(to_regex(from), to);
    }
    let res = model
        .load_from(&mut store)
        .map_err(|e| TrainError::Weights { file: file.display().to_string(), reason: e.to_string() })?;
    let report = LoadReport {
        applied: res.applied.len(),
        missing: res.missing.iter().map(|(p, _)| p.clone()).collect(),
        unused: res.unused.clone(),
    };
    if !res.errors.is_empty() {
        return Err(TrainError::Weights { file: file.display().to_string(), reason: format!("{:?}", res.errors) });
    }
    check(report, strictness, file)
}

/// Loads a PyTorch checkpoint: a `torch.save` dict with the weights under
/// `model_state_dict` (official SAM-Med3D checkpoints), or a bare state dict.
pub fn load_pytorch(model: &mut Sam, file: &Path, strictness: Strictness) -> Result<LoadReport> {
    let attempt = |model: &mut Sam, top: Option<&str>| {
        let mut store = PytorchStore::from_file(file).map_indices_contiguous(false).allow_partial(true);
        if let Some(k) = top {
            store = store.with_top_level_key(k);
        }
        for (from, to) in SEQUENTIAL_NAMES {
            store = store.with_key_remapping(to_regex(from), to);
        }
        model.load_from(&mut store)
    };
    let res = match attempt(model, Some("model_state_dict")) {
        Ok(r) if !r.applied.is_empty() => r,
        _ => attempt(model, None)
            .map_err(|e| TrainError::Weights { file: file.display().to_string(), reason: e.to_string() })?,
    };
    let report = LoadReport {
        applied: res.applied.len(),
        missing: res.missing.iter().map(|(p, _)| p.clone()).collect(),
        unused: res.unused.clone(),
    };
    check(report, strictness, file)
}

/// Loads by extension: `.safetensors`, else a PyTorch pickle (`.pth`, `.pt`, `.ckpt`).
pub fn load(model: &mut Sam, file: &Path, strictness: Strictness) -> Result<LoadReport> {
    if file.extension().is_some_and(|e| e == "safetensors") {
        load_safetensors(model, file, strictness)
    } else {
        load_pytorch(model, file, strictness)
    }
}

/// Writes `model` as safetensors under the reference key names and layouts.
pub fn export_safetensors(model: &Sam, file: &Path) -> Result<()> {
    let mut store = SafetensorsStore::from_file(file)
        .with_to_adapter(BurnToPyTorchAdapter)
        .skip_enum_variants(true)
        .overwrite(true);
    for (from, to) in SEQUENTIAL_NAMES {
        store = store.with_key_remapping(to_regex(to), from);
    }
    model
        .save_into(&mut store)
        .map_err(|e| TrainError::Weights { file: file.display().to_string(), reason: e.to_string() })?;
    Ok(())
}

/// Reads one float tensor from a safetensors file (fixture inputs and outputs).
pub fn read_tensor<const D: usize>(file: &Path, name: &str, device: &Device) -> Result<Tensor<D>> {
    use burn::store::ModuleStore;
    let bad = |reason: String| TrainError::Weights { file: file.display().to_string(), reason };
    let mut store = SafetensorsStore::from_file(file);
    let t = store.get_tensor(name).map_err(|e| bad(e.to_string()))?.ok_or_else(|| bad(format!("no tensor {name}")))?;
    let data = burn::store::bridge::to_data(t).map_err(|e| bad(e.to_string()))?;
    let rank = data.shape().len();
    if rank != D {
        return Err(bad(format!("{name} has rank {rank}, expected {D}")));
    }
    Ok(Tensor::from_data(data, device))
}
