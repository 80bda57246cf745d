//! The model against the reference: parameter count, key names and shapes of the
//! state dict, fixture parity, and weight round trips.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use burn::prelude::*;
use s3_trainer::config::SamConfig;
use s3_trainer::model::Sam;
use s3_trainer::weights::{self, Strictness};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/model")
}

/// Key → shape from a safetensors file's JSON header.
fn safetensors_shapes(file: &Path) -> BTreeMap<String, Vec<usize>> {
    let bytes = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            (k.clone(), v["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect())
        })
        .collect()
}

#[test]
fn vit_b_ori_has_the_reference_state_dict() {
    let device = Device::flex();
    let model = Sam::new(&SamConfig::vit_b_ori(), &device);
    assert_eq!(model.trainable_params(), 100_509_232);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("vit_b_ori.safetensors");
    weights::export_safetensors(&model, &file).unwrap();
    let ours = safetensors_shapes(&file);
    let tsv = std::fs::read_to_string(fixtures().join("vit_b_ori_state_dict.tsv")).unwrap();
    let reference: BTreeMap<String, Vec<usize>> = tsv
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            (cols[0].to_string(), cols[1].split('x').map(|d| d.parse().unwrap()).collect())
        })
        .collect();
    assert_eq!(reference.len(), 324);
    let missing: Vec<_> = reference.keys().filter(|k| !ours.contains_key(*k)).collect();
    let extra: Vec<_> = ours.keys().filter(|k| !reference.contains_key(*k)).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing {missing:?}\nextra {extra:?}");
    for (k, shape) in &reference {
        assert_eq!(&ours[k], shape, "{k}");
    }
}

#[test]
fn tiny_fixture_parity_through_the_cli() {
    let prefix = fixtures().join("sam3d_tiny");
    let out = Command::new(env!("CARGO_BIN_EXE_s3-train")).arg("check-fixture").arg(&prefix).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for name in [
        "image_embeddings",
        "sparse_embeddings",
        "dense_embeddings",
        "image_pe",
        "low_res_logits",
        "iou_predictions",
        "low_res_logits_multimask",
        "iou_predictions_multimask",
        "upsampled_logits",
    ] {
        assert!(text.lines().any(|l| l.starts_with(name) && l.ends_with("ok")), "{name}: {text}");
    }
}

#[test]
fn load_export_load_is_exact_and_strictness_reports_keys() {
    let device = Device::flex();
    let cfg = SamConfig::tiny();
    let mut a = Sam::new(&cfg, &device);
    let report = weights::load(&mut a, &fixtures().join("sam3d_tiny.weights.safetensors"), Strictness::Strict).unwrap();
    assert_eq!(report.applied, 174);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("tiny.safetensors");
    weights::export_safetensors(&a, &file).unwrap();
    assert_eq!(safetensors_shapes(&file), safetensors_shapes(&fixtures().join("sam3d_tiny.weights.safetensors")));
    let mut b = Sam::new(&cfg, &device);
    weights::load(&mut b, &file, Strictness::Strict).unwrap();
    let x = Tensor::<5>::random([1, 1, 64, 64, 64], burn::tensor::Distribution::Default, &device);
    let (ea, eb) = (a.image_encoder.forward(x.clone()), b.image_encoder.forward(x));
    assert_eq!(ea.into_data(), eb.into_data(), "identical weights give identical embeddings");

    // A deeper model than the checkpoint: block 2 is missing, named in the error.
    let mut deeper = Sam::new(&SamConfig { depth: 3, ..cfg.clone() }, &device);
    let e = weights::load(&mut deeper, &fixtures().join("sam3d_tiny.weights.safetensors"), Strictness::Strict)
        .unwrap_err()
        .to_string();
    assert!(e.contains("image_encoder.blocks.2."), "{e}");
    let r = weights::load(&mut deeper, &fixtures().join("sam3d_tiny.weights.safetensors"), Strictness::AllowPartial)
        .unwrap();
    assert!(r.missing.iter().all(|k| k.starts_with("image_encoder.blocks.2.")) && !r.missing.is_empty());
    // A shallower one: block 1's keys are unexpected.
    let mut shallow = Sam::new(&SamConfig { depth: 1, global_attn: vec![], ..cfg }, &device);
    let e = weights::load(&mut shallow, &fixtures().join("sam3d_tiny.weights.safetensors"), Strictness::Strict)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unexpected keys") && e.contains("image_encoder.blocks.1."), "{e}");
}

#[test]
fn unpadded_attention_runs_and_is_not_weight_compatible() {
    let device = Device::flex();
    // Window 14 over an 8³ grid: exact mode pads to 2744 tokens, unpadded attends over 512.
    let base = SamConfig { embed_dim: 48, heads: 2, depth: 2, global_attn: vec![1], out: 48, ..SamConfig::small() };
    let base = SamConfig { window: 14, ..base };
    let exact = Sam::new(&base, &device);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("w.safetensors");
    weights::export_safetensors(&exact, &file).unwrap();
    let mut unpadded =
        Sam::new(&SamConfig { attention: s3_trainer::config::AttentionMode::Unpadded, ..base.clone() }, &device);
    // Same parameters (the tables keep their 27 rows), so the same weights load strictly.
    weights::load(&mut unpadded, &file, Strictness::Strict).unwrap();
    let x = Tensor::<5>::random([1, 1, 128, 128, 128], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
    let a = exact.image_encoder.forward(x.clone());
    let b = unpadded.image_encoder.forward(x);
    assert_eq!(a.dims(), [1, 48, 8, 8, 8]);
    assert_eq!(a.dims(), b.dims());
    let diff: f32 = (a - b.clone()).abs().max().into_scalar();
    assert!(diff > 1e-3, "pads take part in exact mode, so the outputs differ ({diff})");
    assert!(b.into_data().try_to_vec::<f32>().unwrap().iter().all(|v| v.is_finite()));
}

#[test]
fn bf16_encoder_tracks_f32_and_its_gradients_stay_f32() {
    use s3_trainer::config::Precision;
    let device = Device::flex();
    assert!(device.supports_dtype(burn::tensor::FloatDType::BF16), "flex computes bf16");
    let base = SamConfig { embed_dim: 48, heads: 2, depth: 2, global_attn: vec![1], out: 48, ..SamConfig::small() };
    let full = Sam::new(&base, &device);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("w.safetensors");
    weights::export_safetensors(&full, &file).unwrap();
    let bf16_cfg = SamConfig { precision: Precision::Bf16, ..base.clone() };
    let mut half = Sam::new(&bf16_cfg, &device);
    weights::load(&mut half, &file, Strictness::Strict).unwrap();
    let x = Tensor::<5>::random([1, 1, 128, 128, 128], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
    let a = full.image_encoder.forward(x.clone());
    let b = half.image_encoder.forward(x.clone());
    assert_eq!(b.dtype(), burn::tensor::DType::F32, "the encoder hands f32 to the decoder");
    let scale: f32 = a.clone().abs().max().into_scalar();
    let rel = (a - b).abs().max().into_scalar::<f32>() / scale;
    // bf16 keeps 8 bits of mantissa: visibly different from f32, but close.
    assert!(rel > 1e-6 && rel < 5e-2, "bf16 vs f32 relative difference {rel}");

    // Gradients reach the f32 master parameters in f32.
    let ad = device.autodiff();
    let mut model = Sam::new(&bf16_cfg, &ad);
    weights::load(&mut model, &file, Strictness::Strict).unwrap();
    let loss = model.image_encoder.forward(Tensor::from_data(x.into_data(), &ad)).square().mean();
    let grads = loss.backward();
    let qkv = &model.image_encoder.blocks[0].attn.qkv.weight;
    assert_eq!(qkv.val().dtype(), burn::tensor::DType::F32, "parameters stay f32");
    let g = qkv.val().grad(&grads).expect("qkv weight has a gradient");
    assert_eq!(g.dtype(), burn::tensor::DType::F32);
    let norm: f32 = g.abs().sum().into_scalar();
    assert!(norm.is_finite() && norm > 0.0, "gradient norm {norm}");
}
