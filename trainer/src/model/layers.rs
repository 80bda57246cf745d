//! Small building blocks shared by the three parts of the model.

use burn::module::Param;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::{FloatDType, activation};

/// `layer(x)`, computed in bf16 when `bf16` is set: input, weight and bias cast down,
/// the result cast back to f32. The parameters stay f32 (the optimiser's master
/// copy) and autodiff casts each gradient back to its source's dtype, so gradients
/// arrive in f32. Both operands are cast: a mixed f32 × bf16 matmul is not checked
/// on CUDA and gives wrong numbers.
pub fn linear_bf16<const D: usize>(layer: &Linear, x: Tensor<D>, bf16: bool) -> Tensor<D> {
    if !bf16 {
        return layer.forward(x);
    }
    let down = |t: Tensor<D>| t.cast(FloatDType::BF16);
    let w = layer.weight.val().cast(FloatDType::BF16);
    let b = layer.bias.as_ref().map(|b| b.val().cast(FloatDType::BF16));
    burn::tensor::module::linear(down(x), w, b).cast(FloatDType::F32)
}

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
    bf16: bool,
}

impl MlpBlock {
    /// GELU (encoder) or ReLU (decoder) between the layers.
    pub fn new(dim: usize, hidden: usize, gelu: bool, device: &Device) -> Self {
        MlpBlock {
            lin1: LinearConfig::new(dim, hidden).init(device),
            lin2: LinearConfig::new(hidden, dim).init(device),
            gelu,
            bf16: false,
        }
    }

    /// The same block with its two linear layers in bf16 (see [`linear_bf16`]).
    pub fn with_bf16(self, bf16: bool) -> Self {
        MlpBlock { bf16, ..self }
    }

    /// `[.., d]` → `[.., d]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let h = linear_bf16(&self.lin1, x, self.bf16);
        let h = if self.gelu { activation::gelu(h) } else { activation::relu(h) };
        linear_bf16(&self.lin2, h, self.bf16)
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

/// [`trilinear`] on a host array: one `low`³ cube (C order) to `size`³, the same
/// align_corners = false weights. Click sampling needs only the values, and doing it
/// here keeps a few-million-voxel upsampling per pass off the tensor backend.
pub fn trilinear_values(x: &[f32], low: usize, size: usize) -> Vec<f32> {
    // Source index pairs and weights along one axis (PyTorch's area_pixel_compute_source_index).
    let scale = low as f64 / size as f64;
    let taps: Vec<(usize, usize, f32)> = (0..size)
        .map(|d| {
            let src = ((d as f64 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(low - 1);
            let i1 = (i0 + 1).min(low - 1);
            (i0, i1, (src - i0 as f64) as f32)
        })
        .collect();
    let lerp = |a: f32, b: f32, w: f32| a * (1.0 - w) + b * w;
    // Along W: [low, low, size].
    let mut a = vec![0f32; low * low * size];
    for r in 0..low * low {
        for (k, &(i0, i1, w)) in taps.iter().enumerate() {
            a[r * size + k] = lerp(x[r * low + i0], x[r * low + i1], w);
        }
    }
    // Along H: [low, size, size].
    let mut b = vec![0f32; low * size * size];
    for d in 0..low {
        for (j, &(i0, i1, w)) in taps.iter().enumerate() {
            let (r0, r1) = ((d * low + i0) * size, (d * low + i1) * size);
            let out = (d * size + j) * size;
            for k in 0..size {
                b[out + k] = lerp(a[r0 + k], a[r1 + k], w);
            }
        }
    }
    // Along D: [size, size, size].
    let plane = size * size;
    let mut c = vec![0f32; size * plane];
    for (i, &(i0, i1, w)) in taps.iter().enumerate() {
        for n in 0..plane {
            c[i * plane + n] = lerp(b[i0 * plane + n], b[i1 * plane + n], w);
        }
    }
    c
}

#[cfg(test)]
mod trilinear_tests {
    use super::*;

    #[test]
    fn host_trilinear_matches_the_tensor_version() {
        let device = Device::flex();
        let (low, size) = (6, 20);
        let x: Vec<f32> = (0..low * low * low).map(|n| ((n * 37 % 101) as f32 / 50.0) - 1.0).collect();
        let t = Tensor::<5>::from_data(TensorData::new(x.clone(), [1, 1, low, low, low]), &device);
        let want: Vec<f32> = trilinear(t, size).into_data().try_to_vec().expect("f32");
        let got = trilinear_values(&x, low, size);
        let worst = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-5, "max difference {worst}");
    }
}
