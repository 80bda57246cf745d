//! The mask decoder: a two-way transformer between prompt tokens and image
//! embeddings, transposed-conv upscaling, hypernetwork MLPs and the IoU head.

use burn::nn::conv::{ConvTranspose3d, ConvTranspose3dConfig};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use super::layers::{LayerNorm3d, Mlp, MlpBlock};
use crate::config::SamConfig;

/// Attention with separate projections to an (optionally) downsampled width.
#[derive(Module, Debug)]
pub struct DecoderAttention {
    /// Query projection.
    pub q_proj: Linear,
    /// Key projection.
    pub k_proj: Linear,
    /// Value projection.
    pub v_proj: Linear,
    /// Back to the embedding width.
    pub out_proj: Linear,
    heads: usize,
}

impl DecoderAttention {
    fn new(dim: usize, heads: usize, downsample: usize, device: &Device) -> Self {
        let inner = dim / downsample;
        DecoderAttention {
            q_proj: LinearConfig::new(dim, inner).init(device),
            k_proj: LinearConfig::new(dim, inner).init(device),
            v_proj: LinearConfig::new(dim, inner).init(device),
            out_proj: LinearConfig::new(inner, dim).init(device),
            heads,
        }
    }

    /// q `[B, Nq, E]`, k and v `[B, Nk, E]` → `[B, Nq, E]`
    pub fn forward(&self, q: Tensor<3>, k: Tensor<3>, v: Tensor<3>) -> Tensor<3> {
        let split = |x: Tensor<3>| {
            let [b, n, c] = x.dims();
            x.reshape([b, n, self.heads, c / self.heads]).swap_dims(1, 2) // [B, heads, N, c/heads]
        };
        let (q, k, v) = (split(self.q_proj.forward(q)), split(self.k_proj.forward(k)), split(self.v_proj.forward(v)));
        let out = attention(q, k, v, None, None, AttentionModuleOptions::default()); // [B, heads, Nq, c/heads]
        let [b, h, n, c] = out.dims();
        self.out_proj.forward(out.swap_dims(1, 2).reshape([b, n, h * c]))
    }
}

/// One two-way block: token self-attention, token→image, MLP, image→token.
#[derive(Module, Debug)]
pub struct TwoWayBlock {
    /// Token self-attention (full width).
    pub self_attn: DecoderAttention,
    /// After self-attention.
    pub norm1: LayerNorm,
    /// Tokens attend to the image.
    pub cross_attn_token_to_image: DecoderAttention,
    /// After it.
    pub norm2: LayerNorm,
    /// ReLU MLP on tokens.
    pub mlp: MlpBlock,
    /// After the MLP.
    pub norm3: LayerNorm,
    /// After image→token.
    pub norm4: LayerNorm,
    /// The image attends to the tokens.
    pub cross_attn_image_to_token: DecoderAttention,
    skip_first_layer_pe: bool,
}

impl TwoWayBlock {
    /// Returns updated (queries, keys).
    pub fn forward(
        &self,
        queries: Tensor<3>,
        keys: Tensor<3>,
        query_pe: Tensor<3>,
        key_pe: Tensor<3>,
    ) -> (Tensor<3>, Tensor<3>) {
        let queries = if self.skip_first_layer_pe {
            self.self_attn.forward(queries.clone(), queries.clone(), queries)
        } else {
            let q = queries.clone() + query_pe.clone();
            queries.clone() + self.self_attn.forward(q.clone(), q, queries)
        };
        let queries = self.norm1.forward(queries);
        let q = queries.clone() + query_pe.clone();
        let k = keys.clone() + key_pe.clone();
        let queries = self.norm2.forward(queries.clone() + self.cross_attn_token_to_image.forward(q, k, keys.clone()));
        let queries = self.norm3.forward(queries.clone() + self.mlp.forward(queries));
        let q = queries.clone() + query_pe;
        let k = keys.clone() + key_pe;
        let keys = self.norm4.forward(keys + self.cross_attn_image_to_token.forward(k, q, queries.clone()));
        (queries, keys)
    }
}

/// The two-way transformer.
#[derive(Module, Debug)]
pub struct TwoWayTransformer {
    /// Blocks.
    pub layers: Vec<TwoWayBlock>,
    /// Last token→image attention.
    pub final_attn_token_to_image: DecoderAttention,
    /// After it.
    pub norm_final_attn: LayerNorm,
}

impl TwoWayTransformer {
    /// image `[B, E, g, g, g]`, its PE (same shape), tokens `[B, T, E]` → (tokens, image tokens `[B, g³, E]`).
    pub fn forward(&self, image: Tensor<5>, image_pe: Tensor<5>, tokens: Tensor<3>) -> (Tensor<3>, Tensor<3>) {
        let keys = image.flatten::<3>(2, 4).swap_dims(1, 2); // [B, N, E]
        let key_pe = image_pe.flatten::<3>(2, 4).swap_dims(1, 2);
        let (mut queries, mut keys) = (tokens.clone(), keys);
        for layer in &self.layers {
            (queries, keys) = layer.forward(queries, keys, tokens.clone(), key_pe.clone());
        }
        let q = queries.clone() + tokens;
        let k = keys.clone() + key_pe;
        let queries =
            self.norm_final_attn.forward(queries + self.final_attn_token_to_image.forward(q, k, keys.clone()));
        (queries, keys)
    }
}

/// convT → LN3d → GELU → convT → GELU (`output_upscaling.0,1,3`).
#[derive(Module, Debug)]
pub struct Upscaling {
    /// `.0`: E → E/4, k2 s2
    pub convt1: ConvTranspose3d,
    /// `.1`
    pub norm: LayerNorm3d,
    /// `.3`: E/4 → E/8, k2 s2
    pub convt2: ConvTranspose3d,
}

/// Outputs of the decoder.
#[derive(Debug, Clone)]
pub struct DecoderOutput {
    /// Low-resolution mask logits `[B, M, 4g, 4g, 4g]`.
    pub masks: Tensor<5>,
    /// Predicted IoU `[B, M]`.
    pub iou: Tensor<2>,
}

/// The mask decoder.
#[derive(Module, Debug)]
pub struct MaskDecoder {
    /// Two-way transformer.
    pub transformer: TwoWayTransformer,
    /// IoU token.
    pub iou_token: Embedding,
    /// One token per output mask (1 + multimask).
    pub mask_tokens: Embedding,
    /// Upscaling of the image tokens.
    pub output_upscaling: Upscaling,
    /// One hypernetwork per mask token.
    pub output_hypernetworks_mlps: Vec<Mlp>,
    /// IoU prediction.
    pub iou_prediction_head: Mlp,
}

impl MaskDecoder {
    /// Builds the decoder of `cfg`.
    pub fn new(cfg: &SamConfig, device: &Device) -> Self {
        let (e, m) = (cfg.out, cfg.multimask + 1);
        let ln = || LayerNormConfig::new(e).init(device); // torch default eps 1e-5
        let layers = (0..cfg.decoder_depth)
            .map(|i| TwoWayBlock {
                self_attn: DecoderAttention::new(e, cfg.decoder_heads, 1, device),
                norm1: ln(),
                cross_attn_token_to_image: DecoderAttention::new(e, cfg.decoder_heads, 2, device),
                norm2: ln(),
                mlp: MlpBlock::new(e, cfg.decoder_mlp, false, device),
                norm3: ln(),
                norm4: ln(),
                cross_attn_image_to_token: DecoderAttention::new(e, cfg.decoder_heads, 2, device),
                skip_first_layer_pe: i == 0,
            })
            .collect();
        MaskDecoder {
            transformer: TwoWayTransformer {
                layers,
                final_attn_token_to_image: DecoderAttention::new(e, cfg.decoder_heads, 2, device),
                norm_final_attn: ln(),
            },
            iou_token: EmbeddingConfig::new(1, e).init(device),
            mask_tokens: EmbeddingConfig::new(m, e).init(device),
            output_upscaling: Upscaling {
                convt1: ConvTranspose3dConfig::new([e, e / 4], [2, 2, 2]).with_stride([2, 2, 2]).init(device),
                norm: LayerNorm3d::new(e / 4, device),
                convt2: ConvTranspose3dConfig::new([e / 4, e / 8], [2, 2, 2]).with_stride([2, 2, 2]).init(device),
            },
            output_hypernetworks_mlps: (0..m).map(|_| Mlp::new(e, e, e / 8, 3, device)).collect(),
            iou_prediction_head: Mlp::new(e, cfg.iou_hidden, m, 3, device),
        }
    }

    /// All mask outputs: index 0 is the single-mask output, 1.. the multimask ones.
    pub fn forward(
        &self,
        image: Tensor<5>,
        image_pe: Tensor<5>,
        sparse: Option<Tensor<3>>,
        dense: Tensor<5>,
    ) -> DecoderOutput {
        let [b, _, _, _, _] = image.dims();
        let m = self.mask_tokens.weight.val().dims()[0];
        let output_tokens = Tensor::cat(vec![self.iou_token.weight.val(), self.mask_tokens.weight.val()], 0); // [1+M, E]
        let [t, e] = output_tokens.dims();
        let output_tokens = output_tokens.unsqueeze_dim::<3>(0).expand([b as i32, t as i32, e as i32]);
        let tokens = match sparse {
            Some(sparse) => Tensor::cat(vec![output_tokens, sparse], 1), // [B, 1+M+P, E]
            None => output_tokens,
        };
        let src = image + dense; // [B, E, g, g, g]
        let [_, _, g, _, _] = src.dims();
        let pos = image_pe.expand([b as i32, -1, -1, -1, -1]);
        let (hs, keys) = self.transformer.forward(src, pos, tokens);
        let iou_token_out = hs.clone().slice(s![.., 0..1, ..]).reshape([b, e]);
        let src = keys.swap_dims(1, 2).reshape([b, e, g, g, g]);
        let up = &self.output_upscaling;
        let x = activation::gelu(up.norm.forward(up.convt1.forward(src)));
        let x = activation::gelu(up.convt2.forward(x)); // [B, E/8, 4g, 4g, 4g]
        let [_, c, lx, ly, lz] = x.dims();
        let hyper: Vec<Tensor<2>> = (0..m)
            .map(|i| {
                self.output_hypernetworks_mlps[i].forward(hs.clone().slice(s![.., 1 + i..2 + i, ..]).reshape([b, e]))
            })
            .collect();
        let hyper = Tensor::stack::<3>(hyper, 1); // [B, M, E/8]
        let masks = hyper.matmul(x.reshape([b, c, lx * ly * lz])).reshape([b, m, lx, ly, lz]);
        let iou = self.iou_prediction_head.forward(iou_token_out); // [B, M]
        DecoderOutput { masks, iou }
    }
}
