//! The prompt encoder: random-Fourier position encoding of points and of the
//! embedding grid, learned point-type embeddings, and the mask-prompt downscaler.

use std::f64::consts::PI;

use burn::module::Param;
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::{Embedding, EmbeddingConfig};
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::activation;

use super::layers::LayerNorm3d;
use crate::config::SamConfig;

/// Random-Fourier features from a stored Gaussian matrix (a buffer, not trained).
#[derive(Module, Debug)]
pub struct PositionEmbeddingRandom {
    /// `[3, embed/3]`
    pub positional_encoding_gaussian_matrix: Param<Tensor<2>>,
}

impl PositionEmbeddingRandom {
    /// `coords` in [0, 1], `[.., 3]` → `[.., 3F]` as [sin, cos, sin] of 2π(2c−1)·G.
    pub fn encode<const D: usize>(&self, coords: Tensor<D>) -> Tensor<D> {
        let g = self.positional_encoding_gaussian_matrix.val(); // [3, F]
        let dims = coords.dims();
        let flat: Tensor<2> = coords.reshape([-1, 3]); // [M, 3]
        let proj = (flat * 2.0 - 1.0).matmul(g) * (2.0 * PI); // [M, F]
        let f = Tensor::cat(vec![proj.clone().sin(), proj.clone().cos(), proj.sin()], 1); // [M, 3F]
        let mut out_dims = dims;
        out_dims[D - 1] = f.dims()[1];
        f.reshape(out_dims)
    }
}

/// conv → LN3d → GELU → conv → LN3d → GELU → conv (`mask_downscaling.0,1,3,4,6`).
#[derive(Module, Debug)]
pub struct MaskDownscaling {
    /// `.0`: 1 → c/4, k2 s2
    pub conv1: Conv3d,
    /// `.1`
    pub norm1: LayerNorm3d,
    /// `.3`: c/4 → c, k2 s2
    pub conv2: Conv3d,
    /// `.4`
    pub norm2: LayerNorm3d,
    /// `.6`: c → embed, k1
    pub conv3: Conv3d,
}

impl MaskDownscaling {
    /// `[B, 1, 4g, 4g, 4g]` → `[B, E, g, g, g]`
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let x = activation::gelu(self.norm1.forward(self.conv1.forward(x)));
        let x = activation::gelu(self.norm2.forward(self.conv2.forward(x)));
        self.conv3.forward(x)
    }
}

/// The prompt encoder.
#[derive(Module, Debug)]
pub struct PromptEncoder {
    /// Fourier features.
    pub pe_layer: PositionEmbeddingRandom,
    /// Negative (0) and positive (1) point types.
    pub point_embeddings: Vec<Embedding>,
    /// The padding point (label −1).
    pub not_a_point_embed: Embedding,
    /// Mask prompt path.
    pub mask_downscaling: MaskDownscaling,
    /// Dense embedding when no mask is given.
    pub no_mask_embed: Embedding,
    embed_dim: usize,
    grid: usize,
    img_size: usize,
}

impl PromptEncoder {
    /// Builds the prompt encoder of `cfg` (Gaussian matrix ~ N(0, 1), as the reference).
    pub fn new(cfg: &SamConfig, device: &Device) -> Self {
        let (e, m) = (cfg.out, cfg.mask_in_chans);
        let gaussian = Tensor::random([3, e / 3], Distribution::Normal(0.0, 1.0), device);
        PromptEncoder {
            pe_layer: PositionEmbeddingRandom {
                positional_encoding_gaussian_matrix: Param::from_tensor(gaussian).set_require_grad(false),
            },
            point_embeddings: (0..2).map(|_| EmbeddingConfig::new(1, e).init(device)).collect(),
            not_a_point_embed: EmbeddingConfig::new(1, e).init(device),
            mask_downscaling: MaskDownscaling {
                conv1: Conv3dConfig::new([1, m / 4], [2, 2, 2]).with_stride([2, 2, 2]).init(device),
                norm1: LayerNorm3d::new(m / 4, device),
                conv2: Conv3dConfig::new([m / 4, m], [2, 2, 2]).with_stride([2, 2, 2]).init(device),
                norm2: LayerNorm3d::new(m, device),
                conv3: Conv3dConfig::new([m, e], [1, 1, 1]).init(device),
            },
            no_mask_embed: EmbeddingConfig::new(1, e).init(device),
            embed_dim: e,
            grid: cfg.grid(),
            img_size: cfg.img_size,
        }
    }

    /// Sparse embeddings of points `[B, N, 3]` (voxel units) with labels `[B, N]`
    /// (1 positive, 0 negative, −1 none): a padding point is appended → `[B, N+1, E]`.
    pub fn embed_points(&self, coords: Tensor<3>, labels: Tensor<2>) -> Tensor<3> {
        let [b, _, _] = coords.dims();
        let device = coords.device();
        let coords = Tensor::cat(vec![coords + 0.5, Tensor::zeros([b, 1, 3], &device)], 1); // [B, N+1, 3]
        let labels = Tensor::cat(vec![labels, Tensor::full([b, 1], -1.0, &device)], 1); // [B, N+1]
        let pe = self.pe_layer.encode(coords / self.img_size as f64); // [B, N+1, E]
        let is = |v: f64| labels.clone().equal_elem(v).float().unsqueeze_dim::<3>(2); // [B, N+1, 1]
        let row = |e: &Embedding| e.weight.val().reshape([1, 1, self.embed_dim as i32]); // [1, 1, E]
        let none = is(-1.0);
        pe * (none.clone().neg() + 1.0)
            + none * row(&self.not_a_point_embed)
            + is(0.0) * row(&self.point_embeddings[0])
            + is(1.0) * row(&self.point_embeddings[1])
    }

    /// Dense embedding of a low-res mask prompt `[B, 1, 4g, 4g, 4g]`, or the learned
    /// no-mask embedding broadcast to `[B, E, g, g, g]`.
    pub fn embed_mask(&self, mask: Option<Tensor<5>>, batch: usize, device: &Device) -> Tensor<5> {
        match mask {
            Some(m) => self.mask_downscaling.forward(m),
            None => {
                let g = self.grid as i32;
                self.no_mask_embed
                    .weight
                    .val()
                    .reshape([1, self.embed_dim as i32, 1, 1, 1])
                    .expand([batch as i32, -1, g, g, g])
                    .to_device(device)
            }
        }
    }

    /// Position encoding of the embedding grid, `[1, E, g, g, g]`. Note the reference
    /// swaps the first two axes here relative to point coordinates.
    pub fn dense_pe(&self, device: &Device) -> Tensor<5> {
        let g = self.grid;
        let mut coords = Vec::with_capacity(g * g * g * 3);
        for i in 0..g {
            for j in 0..g {
                for k in 0..g {
                    let c = |n: usize| (n as f32 + 0.5) / g as f32;
                    coords.extend([c(j), c(i), c(k)]);
                }
            }
        }
        let coords = Tensor::<4>::from_data(TensorData::new(coords, [g, g, g, 3]), device);
        self.pe_layer.encode(coords).permute([3, 0, 1, 2]).unsqueeze_dim(0)
    }
}
