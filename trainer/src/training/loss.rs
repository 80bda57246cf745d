//! The segmentation loss of one decoder pass (DESIGN §8): MONAI's
//! `DiceCELoss(sigmoid=True, squared_pred=True)` (Dice with Σp² + Σt² and smoothing
//! 1e-5, plus BCE-with-logits), or its Dice alone (`legacy`), and the low-resolution
//! target.

use burn::prelude::*;
use burn::tensor::activation;

/// The fraction of each `low`³ voxel's block of a `side`³ mask that is foreground.
pub fn area_fraction(mask: &[f32], side: usize, low: usize) -> Vec<f32> {
    let f = side / low;
    let mut out = vec![0f32; low * low * low];
    for (n, &m) in mask.iter().enumerate() {
        if m > 0.5 {
            let (i, j, k) = (n / (side * side) / f, n / side % side / f, n % side / f);
            out[(i * low + j) * low + k] += 1.0;
        }
    }
    let block = (f * f * f) as f32;
    out.iter_mut().for_each(|v| *v /= block);
    out
}

/// A pass's loss: its value, and a tensor whose gradient is the loss's gradient.
pub struct SegLoss {
    /// The loss (detached: for metrics).
    pub value: Tensor<1>,
    /// `Σ logits · ∂loss/∂logits` with the derivative detached: backward through it
    /// gives the loss's exact gradient (DESIGN §8) in one multiply, where autodiff
    /// through the loss's ~15 elementwise ops over 2 M voxels doubled them again.
    pub surrogate: Tensor<1>,
}

/// Squared-prediction Dice + BCE-with-logits on logits `[B, 1, S, S, S]` (Dice per
/// sample then the batch mean, BCE the mean over every voxel, as MONAI reduces them);
/// `legacy` is the paper-era reference's effective loss, the Dice alone (its
/// single-channel CE term was identically zero).
///
/// With p = σ(x), I = Σpt, D = Σp² + Σt², r = (2I + ε)/(D + ε), the gradient is
/// ∂/∂x = −(2/B)(t − r·p)/(D + ε) · p(1 − p) for the Dice and (p − t)/(B·N) for the BCE.
pub fn seg_loss(logits: Tensor<5>, target: Tensor<5>, legacy: bool) -> SegLoss {
    const EPS: f64 = 1e-5;
    let [b, _, _, _, _] = logits.dims();
    let x: Tensor<2> = logits.clone().detach().reshape([b as i32, -1]);
    let n = x.dims()[1];
    let t: Tensor<2> = target.detach().reshape([b as i32, -1]);
    let p = activation::sigmoid(x.clone());
    let inter = (p.clone() * t.clone()).sum_dim(1); // [B, 1]
    let denom = p.clone().square().sum_dim(1) + t.clone().square().sum_dim(1) + EPS;
    let ratio = (inter * 2.0 + EPS) / denom.clone(); // [B, 1]
    let dice_loss: Tensor<1> = (ratio.clone().neg() + 1.0).mean().reshape([1]);
    let slope = p.clone() * (p.clone().neg() + 1.0);
    let mut grad = (t.clone() - p.clone() * ratio) / denom * slope * (-2.0 / b as f64);
    let value = if legacy {
        dice_loss
    } else {
        // BCE with logits, stable form: max(x, 0) − x·t + log(1 + e^−|x|)
        let bce = x.clone().clamp_min(0.0) - x.clone() * t.clone() + (x.abs().neg().exp() + 1.0).log();
        grad = grad + (p - t) / (b * n) as f64;
        dice_loss + bce.mean().reshape([1])
    };
    let surrogate = (logits.reshape([b as i32, -1]) * grad).sum().reshape([1]);
    SegLoss { value, surrogate }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MONAI's formula on fixed logits and targets, evaluated with numpy (float64):
    /// `p = sigmoid(x)`; Dice = 1 − (2Σpt + 1e-5)/(Σp² + Σt² + 1e-5) per sample, then
    /// the mean; BCE = mean(max(x,0) − xt + log1p(e^−|x|)).
    #[test]
    fn the_loss_is_monai_dice_ce_with_squared_predictions() {
        let device = Device::flex();
        let x = [[2.0, -1.0, 0.5, -3.0, 1.5, 0.0, -0.5, 4.0], [-2.0, -1.0, 3.0, 0.2, -0.7, 1.0, 2.5, -4.0]];
        let t = [[1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0]];
        let tensor = |v: [[f64; 8]; 2]| {
            let flat: Vec<f32> = v.iter().flatten().map(|&a| a as f32).collect();
            Tensor::<1>::from_floats(flat.as_slice(), &device).reshape([2, 1, 2, 2, 2])
        };
        let value = |legacy| seg_loss(tensor(x), tensor(t), legacy).value.into_scalar::<f64>();
        let (dice, bce) = (0.08057529956417925, 0.26562779519288926);
        assert!((value(true) - dice).abs() < 1e-6, "legacy (Dice alone): {}", value(true));
        assert!((value(false) - (dice + bce)).abs() < 1e-6, "Dice + BCE: {}", value(false));
    }

    /// The surrogate's gradient is autodiff's gradient of the loss written as plain
    /// tensor ops (the formula of MONAI's DiceCELoss), for both losses and a batch of 2.
    #[test]
    fn the_surrogate_gradient_is_the_loss_gradient() {
        let device = Device::flex().autodiff();
        let mut rng = s3_shards::synthetic::Rng::new(4);
        let xs: Vec<f32> = (0..2 * 64).map(|_| (rng.unit() as f32 - 0.5) * 8.0).collect();
        let ts: Vec<f32> = (0..2 * 64).map(|_| f32::from(u8::from(rng.unit() < 0.3))).collect();
        let t = Tensor::<5>::from_data(TensorData::new(ts, [2, 1, 4, 4, 4]), &device);
        for legacy in [true, false] {
            let leaf = || Tensor::<5>::from_data(TensorData::new(xs.clone(), [2, 1, 4, 4, 4]), &device).require_grad();
            let x = leaf();
            let mut g = seg_loss(x.clone(), t.clone(), legacy).surrogate.backward();
            let ours: Vec<f32> = x.grad_remove(&mut g).unwrap().into_data().try_to_vec::<f32>().unwrap();
            // The loss as autodiff sees it, op by op.
            let x = leaf();
            let xf: Tensor<2> = x.clone().reshape([2, -1]);
            let tf: Tensor<2> = t.clone().reshape([2, -1]);
            let p = activation::sigmoid(xf.clone());
            let inter = (p.clone() * tf.clone()).sum_dim(1);
            let denom = p.square().sum_dim(1) + tf.clone().square().sum_dim(1);
            let mut loss = (((inter * 2.0 + 1e-5) / (denom + 1e-5)).neg() + 1.0).mean();
            if !legacy {
                let bce = xf.clone().clamp_min(0.0) - xf.clone() * tf + (xf.abs().neg().exp() + 1.0).log();
                loss = loss + bce.mean();
            }
            let mut g = loss.backward();
            let want: Vec<f32> = x.grad_remove(&mut g).unwrap().into_data().try_to_vec::<f32>().unwrap();
            let scale = want.iter().map(|v| v.abs()).fold(0f32, f32::max);
            let worst = ours.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(scale > 0.0 && worst <= 1e-5 * scale, "legacy {legacy}: worst {worst:e} of {scale:e}");
        }
    }

    #[test]
    fn area_fraction_averages_each_block() {
        // 4³ mask → 2³: block (0,0,0) full, block (1,1,1) one voxel of 8, the rest empty.
        let (side, low) = (4, 2);
        let mut mask = vec![0f32; side * side * side];
        for i in 0..2 {
            for j in 0..2 {
                for k in 0..2 {
                    mask[(i * side + j) * side + k] = 1.0;
                }
            }
        }
        mask[(3 * side + 2) * side + 3] = 1.0;
        let f = area_fraction(&mask, side, low);
        assert_eq!(f[0], 1.0);
        assert_eq!(f[(low + 1) * low + 1], 1.0 / 8.0);
        assert_eq!(f.iter().sum::<f32>(), 1.125);
    }
}
