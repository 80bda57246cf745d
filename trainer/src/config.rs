//! Model configuration: the `vit_b_ori` preset, small presets for tests, and the
//! fixture configs of the reference implementation.

use serde::{Deserialize, Serialize};

/// How the windowed encoder blocks attend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionMode {
    /// As the reference: the 8³ token grid is zero-padded to the window (14³) after
    /// norm1 and all 2744 positions attend, pads included. Weight-compatible.
    #[default]
    Exact,
    /// Plain attention over the unpadded grid in the windowed blocks (relative
    /// positions read from the centre of the same tables): ~29× less attention work
    /// there for vit_b_ori, but not numerically compatible with reference weights.
    Unpadded,
}

/// Arithmetic of the image encoder's heavy operations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// Mixed precision: the encoder's linear layers and attention run in bf16
    /// (f32 accumulation where the backend does it); parameters, optimiser state,
    /// LayerNorm, GELU, residuals, the decoder and the loss stay f32. Meant for CUDA
    /// (H100/H200 tensor cores); it also runs on the CPU backend, which is how it is tested.
    Bf16,
}

/// SAM-Med3D architecture hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamConfig {
    /// Input cube edge (voxels).
    pub img_size: usize,
    /// Patch edge.
    pub patch_size: usize,
    /// Encoder width.
    pub embed_dim: usize,
    /// Encoder blocks.
    pub depth: usize,
    /// Encoder heads.
    pub heads: usize,
    /// Blocks with global attention; the others use windows.
    pub global_attn: Vec<usize>,
    /// Window edge of the windowed blocks.
    pub window: usize,
    /// Neck output = prompt embedding = decoder width.
    pub out: usize,
    /// Hidden width of the IoU head.
    pub iou_hidden: usize,
    /// Encoder MLP ratio.
    pub mlp_ratio: usize,
    /// Channels of the mask-prompt downscaler.
    pub mask_in_chans: usize,
    /// Two-way transformer depth.
    pub decoder_depth: usize,
    /// Two-way transformer heads.
    pub decoder_heads: usize,
    /// Two-way transformer MLP width.
    pub decoder_mlp: usize,
    /// Multimask outputs (plus one single-mask output).
    pub multimask: usize,
    /// Windowed attention variant.
    #[serde(default)]
    pub attention: AttentionMode,
    /// Encoder arithmetic.
    #[serde(default)]
    pub precision: Precision,
}

impl SamConfig {
    /// SAM-Med3D `vit_b_ori`: 100,509,232 trainable parameters.
    pub fn vit_b_ori() -> SamConfig {
        SamConfig {
            img_size: 128,
            patch_size: 16,
            embed_dim: 768,
            depth: 12,
            heads: 12,
            global_attn: vec![2, 5, 8, 11],
            window: 14,
            out: 384,
            iou_hidden: 256,
            mlp_ratio: 4,
            mask_in_chans: 16,
            decoder_depth: 2,
            decoder_heads: 8,
            decoder_mlp: 2048,
            multimask: 3,
            attention: AttentionMode::Exact,
            precision: Precision::F32,
        }
    }

    /// A small model for tests and the CPU demo (128³ input, a fraction of the width).
    pub fn small() -> SamConfig {
        SamConfig {
            embed_dim: 96,
            depth: 2,
            heads: 4,
            global_attn: vec![1],
            window: 8,
            out: 48,
            iou_hidden: 32,
            decoder_mlp: 256,
            ..SamConfig::vit_b_ori()
        }
    }

    /// The reference fixture's tiny config (64³ input).
    pub fn tiny() -> SamConfig {
        SamConfig { img_size: 64, window: 6, decoder_mlp: 2048, ..SamConfig::small() }
    }

    /// A preset by name.
    pub fn preset(name: &str) -> Option<SamConfig> {
        match name {
            "vit_b_ori" => Some(SamConfig::vit_b_ori()),
            "small" => Some(SamConfig::small()),
            "tiny" => Some(SamConfig::tiny()),
            _ => None,
        }
    }

    /// From the `config` object of a fixture JSON (img_size, embed_dim, depth, heads,
    /// global_attn, window, out, iou_hidden); the decoder keeps the reference's fixed
    /// depth 2, 8 heads, MLP 2048.
    pub fn from_fixture(v: &serde_json::Value) -> Result<SamConfig, String> {
        let u = |k: &str| {
            v.get(k).and_then(|x| x.as_u64()).map(|x| x as usize).ok_or_else(|| format!("config.{k} missing"))
        };
        Ok(SamConfig {
            img_size: u("img_size")?,
            embed_dim: u("embed_dim")?,
            depth: u("depth")?,
            heads: u("heads")?,
            global_attn: v
                .get("global_attn")
                .and_then(|g| g.as_array())
                .ok_or("config.global_attn missing")?
                .iter()
                .filter_map(|x| x.as_u64().map(|x| x as usize))
                .collect(),
            window: u("window")?,
            out: u("out")?,
            iou_hidden: u("iou_hidden")?,
            ..SamConfig::vit_b_ori()
        })
    }

    /// Token grid edge (img_size / patch_size).
    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size
    }

    /// Low-resolution mask edge (4 × grid).
    pub fn low_res(&self) -> usize {
        self.grid() * 4
    }
}
