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

/// Squared-prediction Dice + BCE-with-logits on logits `[B, 1, S, S, S]` (Dice per
/// sample then the batch mean, BCE the mean over every voxel, as MONAI reduces them);
/// `legacy` is the paper-era reference's effective loss, the Dice alone (its
/// single-channel CE term was identically zero).
pub fn seg_loss(logits: Tensor<5>, target: Tensor<5>, legacy: bool) -> Tensor<1> {
    let [b, _, _, _, _] = logits.dims();
    let x: Tensor<2> = logits.reshape([b as i32, -1]);
    let t: Tensor<2> = target.reshape([b as i32, -1]);
    let p = activation::sigmoid(x.clone());
    let inter = (p.clone() * t.clone()).sum_dim(1);
    let denom = p.square().sum_dim(1) + t.clone().square().sum_dim(1);
    let dice_loss = ((inter * 2.0 + 1e-5) / (denom + 1e-5)).neg() + 1.0; // [B, 1]
    let dice_loss: Tensor<1> = dice_loss.mean().reshape([1]);
    if legacy {
        return dice_loss;
    }
    // BCE with logits, stable form: max(x, 0) − x·t + log(1 + e^−|x|)
    let bce = x.clone().clamp_min(0.0) - x.clone() * t + (x.abs().neg().exp() + 1.0).log();
    dice_loss + bce.mean().reshape([1])
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
        let value = |legacy| seg_loss(tensor(x), tensor(t), legacy).into_scalar::<f64>();
        let (dice, bce) = (0.08057529956417925, 0.26562779519288926);
        assert!((value(true) - dice).abs() < 1e-6, "legacy (Dice alone): {}", value(true));
        assert!((value(false) - (dice + bce)).abs() < 1e-6, "Dice + BCE: {}", value(false));
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
