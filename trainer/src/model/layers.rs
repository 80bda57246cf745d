//! Small building blocks shared by the three parts of the model.

use burn::module::Param;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation;

/// Channel-first LayerNorm over dim 1 of `[B, C, D, H, W]` (the reference's LayerNorm3d).
#[derive(Module, Debug)]
pub struct LayerNorm3d {
    /// Scale, `[C]`.
    pub weight: Param<Tensor<1>>,
    /// Shift, `[C]`.
    pub bias: Param<Tensor<1>>,
    eps: f64,
}

impl LayerNorm3d {
    /// Ones/zeros init, eps 1e-6.
    pub fn new(channels: usize, device: &Device) -> Self {
        LayerNorm3d {
            weight: Param::from_tensor(Tensor::ones([channels], device)),
            bias: Param::from_tensor(Tensor::zeros([channels], device)),
            eps: 1e-6,
        }
    }

    /// `[B, C, D, H, W]` → same shape.
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let c = self.weight.val().dims()[0];
        let u = x.clone().mean_dim(1); // [B,1,D,H,W]
        let d = x - u;
        let s = d.clone().square().mean_dim(1);
        let x = d / (s + self.eps).sqrt();
        x * self.weight.val().reshape([1, c as i32, 1, 1, 1]) + self.bias.val().reshape([1, c as i32, 1, 1, 1])
    }
}

/// Two linear layers with an activation between them (`lin1`, `lin2`).
#[derive(Module, Debug)]
pub struct MlpBlock {
    /// d → hidden
    pub lin1: Linear,
    /// hidden → d
    pub lin2: Linear,
    gelu: bool,
}

impl MlpBlock {
    /// GELU (encoder) or ReLU (decoder) between the layers.
    pub fn new(dim: usize, hidden: usize, gelu: bool, device: &Device) -> Self {
        MlpBlock {
            lin1: LinearConfig::new(dim, hidden).init(device),
            lin2: LinearConfig::new(hidden, dim).init(device),
            gelu,
        }
    }

    /// `[.., d]` → `[.., d]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let h = self.lin1.forward(x);
        let h = if self.gelu { activation::gelu(h) } else { activation::relu(h) };
        self.lin2.forward(h)
    }
}

/// `num_layers` linear layers with ReLU between them (`layers.N`).
#[derive(Module, Debug)]
pub struct Mlp {
    /// The layers.
    pub layers: Vec<Linear>,
}

impl Mlp {
    /// input → hidden × (n−1) → output.
    pub fn new(input: usize, hidden: usize, output: usize, num_layers: usize, device: &Device) -> Self {
        let mut dims = vec![input];
        dims.extend(std::iter::repeat_n(hidden, num_layers - 1));
        dims.push(output);
        Mlp { layers: dims.windows(2).map(|w| LinearConfig::new(w[0], w[1]).init(device)).collect() }
    }

    /// `[.., input]` → `[.., output]`
    pub fn forward<const D: usize>(&self, mut x: Tensor<D>) -> Tensor<D> {
        let n = self.layers.len();
        for (i, l) in self.layers.iter().enumerate() {
            x = l.forward(x);
            if i + 1 < n {
                x = activation::relu(x);
            }
        }
        x
    }
}

/// Trilinear resize of `[B, C, D, H, W]` to `size³` with align_corners = false: burn has
/// no 3-D interpolate, and trilinear is exactly bilinear over (D, H) then linear over W.
pub fn trilinear(x: Tensor<5>, size: usize) -> Tensor<5> {
    use burn::tensor::module::interpolate;
    use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
    let [b, c, d, h, w] = x.dims();
    let opts = |out: [usize; 2]| {
        InterpolateOptions::new(InterpolateMode::Bilinear).with_align_corners(false).with_output_size(out)
    };
    // (D, H): W folded into channels.
    let y = x.permute([0, 1, 4, 2, 3]).reshape([b, c * w, d, h]); // [B, C·W, D, H]
    let y = interpolate(y, opts([size, size])); // [B, C·W, S, S]
    // W: (C, S) folded into channels, the second S passes through unchanged (scale 1).
    let y = y.reshape([b, c, w, size, size]).permute([0, 1, 3, 4, 2]); // [B, C, S, S, W]
    let y = y.reshape([b, c * size, size, w]);
    let y = interpolate(y, opts([size, size])); // [B, C·S, S, S]
    y.reshape([b, c, size, size, size])
}
