//! The 3-D ViT image encoder: patch embedding, absolute position embedding, blocks
//! with decomposed relative-position attention (global or windowed), and the neck.

use burn::module::Param;
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig, PaddingConfig3d};
use burn::prelude::*;
use burn::tensor::FloatDType;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use super::layers::{LayerNorm3d, MlpBlock, linear_bf16};
use crate::config::{AttentionMode, Precision, SamConfig};

/// Conv3d patchify (`patch_embed.proj`).
#[derive(Module, Debug)]
pub struct PatchEmbed {
    /// k = s = patch size.
    pub proj: Conv3d,
}

impl PatchEmbed {
    /// `[B, 1, S, S, S]` → `[B, g, g, g, C]`. The convolution has kernel = stride and
    /// one input channel, so it is exactly a matmul of the flattened patches with the
    /// `[C, p³]` kernel: ~3.5× faster forward+backward than the CPU backend's conv3d,
    /// with the same `patch_embed.proj` weights.
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let [b, cin, s, _, _] = x.dims();
        let [c, _, p, _, _] = self.proj.weight.dims();
        if cin != 1 {
            return self.proj.forward(x).permute([0, 2, 3, 4, 1]);
        }
        let g = s / p;
        let patches =
            x.reshape([b, g, p, g, p, g, p]).permute([0, 1, 3, 5, 2, 4, 6]).reshape([b * g * g * g, p * p * p]);
        let kernel = self.proj.weight.val().reshape([c, p * p * p]).transpose(); // [p³, C]
        let mut y = patches.matmul(kernel); // [B·g³, C]
        if let Some(bias) = &self.proj.bias {
            y = y + bias.val().reshape([1, c]);
        }
        y.reshape([b, g, g, g, c])
    }
}

/// Multi-head attention with decomposed 3-D relative position bias.
#[derive(Module, Debug)]
pub struct Attention {
    /// Fused q, k, v projection.
    pub qkv: Linear,
    /// Output projection.
    pub proj: Linear,
    /// Relative positions along D, `[2·size−1, head_dim]`.
    pub rel_pos_d: Param<Tensor<2>>,
    /// Along H.
    pub rel_pos_h: Param<Tensor<2>>,
    /// Along W.
    pub rel_pos_w: Param<Tensor<2>>,
    heads: usize,
    bf16: bool,
}

impl Attention {
    fn new(dim: usize, heads: usize, size: usize, bf16: bool, device: &Device) -> Self {
        let hd = dim / heads;
        let table = || Param::from_tensor(Tensor::zeros([2 * size - 1, hd], device));
        Attention {
            qkv: LinearConfig::new(dim, dim * 3).init(device),
            proj: LinearConfig::new(dim, dim).init(device),
            rel_pos_d: table(),
            rel_pos_h: table(),
            rel_pos_w: table(),
            heads,
            bf16,
        }
    }

    /// `[B, D, H, W, C]` → same shape; every position attends to every other.
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let [b, d, h, w, c] = x.dims();
        let (n, heads, hd) = (d * h * w, self.heads, c / self.heads);
        let qkv = linear_bf16(&self.qkv, x.reshape([b, n, c]), self.bf16); // [B, N, 3C]
        let qkv = qkv.reshape([b, n, 3, heads, hd]).permute([2, 0, 3, 1, 4]); // [3, B, heads, N, hd]
        let part = |i: usize| qkv.clone().slice(s![i..i + 1]).reshape([b, heads, n, hd]);
        let (q, k, v) = (part(0), part(1), part(2));
        let bias = self.rel_pos_bias(q.clone(), [d, h, w]); // [B, heads, N, N]
        let opts = AttentionModuleOptions::default();
        let out = if self.bf16 {
            let down = |t: Tensor<4>| t.cast(FloatDType::BF16);
            attention(down(q), down(k), down(v), None, Some(down(bias)), opts).cast(FloatDType::F32)
        } else {
            attention(q, k, v, None, Some(bias), opts)
        }; // [B, heads, N, hd]
        let out = out.swap_dims(1, 2).reshape([b, d, h, w, c]);
        linear_bf16(&self.proj, out, self.bf16)
    }

    /// The reference's `add_decomposed_rel_pos` (from the unscaled q), including how
    /// it broadcasts: it adds `rel_d[:, :, :, :, None, None]`, `rel_h[:, :, :, None, :, None]`
    /// and `rel_w[:, :, :, None, None, :]` to the `[B, qd, qh, qw, kd, kh, kw]` scores,
    /// which (for cubic grids) puts every table's key index on the kw axis and reads
    /// rel_h/rel_w at the query-w index taken from kd/kh. Trained weights depend on
    /// exactly this, so it is reproduced, not "fixed" (checked on the fixture: the
    /// textbook broadcast is off by 3e-3, this one by 1e-6).
    fn rel_pos_bias(&self, q: Tensor<4>, [d, h, w]: [usize; 3]) -> Tensor<4> {
        let [b, heads, n, hd] = q.dims();
        let bh = b * heads;
        let r_q = q.reshape([bh, d, h, w, hd]);
        let rd = rel_table(self.rel_pos_d.val(), d); // [D, Dk, hd]
        let rh = rel_table(self.rel_pos_h.val(), h);
        let rw = rel_table(self.rel_pos_w.val(), w);
        // einsum "bdhwc,dkc->bdhwk" as a batched matmul over d, likewise for h and w.
        let rel_d = r_q.clone().permute([1, 0, 2, 3, 4]).reshape([d, bh * h * w, hd]).matmul(rd.swap_dims(1, 2)); // [D, BH·H·W, Dk]
        let rel_d = rel_d.reshape([d, bh, h, w, d]).permute([1, 0, 2, 3, 4]); // [BH, D, H, W, Dk]
        let rel_h = r_q.clone().permute([2, 0, 1, 3, 4]).reshape([h, bh * d * w, hd]).matmul(rh.swap_dims(1, 2));
        let rel_h = rel_h.reshape([h, bh, d, w, h]).permute([1, 2, 0, 3, 4]); // [BH, D, H, W, Hk]
        let rel_w = r_q.permute([3, 0, 1, 2, 4]).reshape([w, bh * d * h, hd]).matmul(rw.swap_dims(1, 2));
        let rel_w = rel_w.reshape([w, bh, d, h, w]).permute([1, 2, 3, 0, 4]); // [BH, D, H, W, Wk]
        // (BH, qd, qh) merged into one axis M; the four remaining axes are (qw, kd, kh, kw).
        let m = bh * d * h;
        let bias = rel_d.reshape([m, w, 1, 1, d]) // qw on qw, kd on kw
            + rel_h.reshape([m, 1, w, 1, h]) // qw on kd, kh on kw
            + rel_w.reshape([m, 1, 1, w, w]); // qw on kh, kw on kw
        bias.reshape([b, heads, n, n])
    }
}

/// `[q, k, hd]` table of relative embeddings for q/k positions 0..size: row
/// `(i − j) + (L − 1)/2` of the `[L, hd]` parameter. With L = 2·size − 1 this is the
/// reference's `get_rel_pos`; a larger table (unpadded mode) is read about its centre.
fn rel_table(table: Tensor<2>, size: usize) -> Tensor<3> {
    let [l, hd] = table.dims();
    let centre = (l as i64 - 1) / 2;
    let idx: Vec<i64> = (0..size as i64).flat_map(|i| (0..size as i64).map(move |j| i - j + centre)).collect();
    let device = table.device();
    let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [size * size]), &device);
    table.select(0, idx).reshape([size, size, hd])
}

/// Pre-norm transformer block.
#[derive(Module, Debug)]
pub struct Block {
    /// Before attention (eps 1e-6).
    pub norm1: LayerNorm,
    /// Attention.
    pub attn: Attention,
    /// Before the MLP.
    pub norm2: LayerNorm,
    /// GELU MLP.
    pub mlp: MlpBlock,
    /// Window edge; 0 = global.
    window: usize,
}

impl Block {
    /// `[B, D, H, W, C]` → same.
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let shortcut = x.clone();
        let x = self.norm1.forward(x);
        let x = if self.window > 0 { self.windowed(x) } else { self.attn.forward(x) };
        let x = shortcut + x;
        x.clone() + self.mlp.forward(self.norm2.forward(x))
    }

    /// Zero-pads the grid to a multiple of the window (pads take part in attention,
    /// as in the reference), attends within each window, and crops back.
    fn windowed(&self, x: Tensor<5>) -> Tensor<5> {
        let [b, d, h, w, c] = x.dims();
        let ws = self.window;
        let up = |n: usize| n.div_ceil(ws) * ws;
        let (dp, hp, wp) = (up(d), up(h), up(w));
        let padded = if (dp, hp, wp) == (d, h, w) {
            x
        } else {
            Tensor::zeros([b, dp, hp, wp, c], &x.device()).slice_assign(s![.., 0..d, 0..h, 0..w, ..], x)
        };
        let mut out = padded.clone();
        for i in (0..dp).step_by(ws) {
            for j in (0..hp).step_by(ws) {
                for k in (0..wp).step_by(ws) {
                    let r = s![.., i..i + ws, j..j + ws, k..k + ws, ..];
                    let y = self.attn.forward(padded.clone().slice(r));
                    out = out.slice_assign(r, y);
                }
            }
        }
        out.slice(s![.., 0..d, 0..h, 0..w, ..])
    }
}

/// conv 1×1 → LN3d → conv 3×3×3 → LN3d (`neck.0`–`neck.3`).
#[derive(Module, Debug)]
pub struct Neck {
    /// `neck.0`
    pub conv1: Conv3d,
    /// `neck.1`
    pub norm1: LayerNorm3d,
    /// `neck.2`
    pub conv2: Conv3d,
    /// `neck.3`
    pub norm2: LayerNorm3d,
}

/// The image encoder.
#[derive(Module, Debug)]
pub struct ImageEncoder {
    /// `[1, g, g, g, C]`
    pub pos_embed: Param<Tensor<5>>,
    /// Patchify.
    pub patch_embed: PatchEmbed,
    /// Transformer blocks.
    pub blocks: Vec<Block>,
    /// Channel reduction to the prompt width.
    pub neck: Neck,
}

impl ImageEncoder {
    /// Builds the encoder of `cfg` (zero position embeddings and tables, like the reference).
    pub fn new(cfg: &SamConfig, device: &Device) -> Self {
        let (c, g, p) = (cfg.embed_dim, cfg.grid(), cfg.patch_size);
        let bf16 = cfg.precision == Precision::Bf16;
        let blocks = (0..cfg.depth)
            .map(|i| {
                let global = cfg.global_attn.contains(&i);
                // Exact: windowed blocks attend over window³ (padded) positions.
                let (window, size) = match (global, cfg.attention) {
                    (true, _) => (0, g),
                    (false, AttentionMode::Exact) => (cfg.window, cfg.window),
                    (false, AttentionMode::Unpadded) => (0, cfg.window),
                };
                Block {
                    norm1: LayerNormConfig::new(c).with_epsilon(1e-6).init(device),
                    attn: Attention::new(c, cfg.heads, size, bf16, device),
                    norm2: LayerNormConfig::new(c).with_epsilon(1e-6).init(device),
                    mlp: MlpBlock::new(c, c * cfg.mlp_ratio, true, device).with_bf16(bf16),
                    window,
                }
            })
            .collect();
        ImageEncoder {
            pos_embed: Param::from_tensor(Tensor::zeros([1, g, g, g, c], device)),
            patch_embed: PatchEmbed { proj: Conv3dConfig::new([1, c], [p, p, p]).with_stride([p, p, p]).init(device) },
            blocks,
            neck: Neck {
                conv1: Conv3dConfig::new([c, cfg.out], [1, 1, 1]).with_bias(false).init(device),
                norm1: LayerNorm3d::new(cfg.out, device),
                conv2: Conv3dConfig::new([cfg.out, cfg.out], [3, 3, 3])
                    .with_padding(PaddingConfig3d::Explicit(1, 1, 1))
                    .with_bias(false)
                    .init(device),
                norm2: LayerNorm3d::new(cfg.out, device),
            },
        }
    }

    /// `[B, 1, S, S, S]` → `[B, out, g, g, g]`
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let x = self.patch_embed.forward(x); // [B, g, g, g, C]
        let mut x = x + self.pos_embed.val();
        for blk in &self.blocks {
            x = blk.forward(x);
        }
        let x = x.permute([0, 4, 1, 2, 3]); // [B, C, g, g, g]
        let x = self.neck.norm1.forward(self.neck.conv1.forward(x));
        self.neck.norm2.forward(self.neck.conv2.forward(x))
    }
}
