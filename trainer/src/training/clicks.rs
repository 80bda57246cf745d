//! Click simulation (DESIGN §8): a new point drawn uniformly from the error region
//! of the current prediction — false negatives give positive clicks, false positives
//! negative ones; with no prediction yet the error region is the whole mask.

use s3_shards::synthetic::Rng;

/// A click: voxel indices in the tensor's (i, j, k) order and its label (1 or 0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Click {
    /// Voxel coordinates.
    pub at: [f32; 3],
    /// 1 positive, 0 negative.
    pub label: f32,
}

/// Draws one click for a cubic volume of edge `side`: `logits` > 0 is the prediction
/// (sigmoid > 0.5), `mask` > 0.5 the truth. When the prediction is perfect, a positive
/// click inside the mask is returned (the pass still needs a prompt).
pub fn next_click(logits: &[f32], mask: &[f32], side: usize, rng: &mut Rng) -> Click {
    let err: Vec<usize> = (0..mask.len()).filter(|&n| (logits[n] > 0.0) != (mask[n] > 0.5)).collect();
    let pool: Vec<usize> = if err.is_empty() { (0..mask.len()).filter(|&n| mask[n] > 0.5).collect() } else { err };
    let n = if pool.is_empty() { side * side * side / 2 } else { pool[(rng.next_u64() % pool.len() as u64) as usize] };
    let label = if mask[n] > 0.5 { 1.0 } else { 0.0 };
    Click { at: [(n / (side * side)) as f32, (n / side % side) as f32, (n % side) as f32], label }
}

/// Dice of `logits > 0` against `mask > 0.5` (1 when both are empty).
pub fn dice(logits: &[f32], mask: &[f32]) -> f64 {
    let (mut inter, mut p, mut g) = (0u64, 0u64, 0u64);
    for (l, m) in logits.iter().zip(mask) {
        let (a, b) = (*l > 0.0, *m > 0.5);
        inter += u64::from(a && b);
        p += u64::from(a);
        g += u64::from(b);
    }
    if p + g == 0 { 1.0 } else { 2.0 * inter as f64 / (p + g) as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_click_is_inside_the_mask_and_errors_get_the_right_label() {
        let side = 8;
        let mut mask = vec![0.0f32; 512];
        for n in 0..512 {
            if n / 64 >= 2 && n / 64 < 5 {
                mask[n] = 1.0;
            }
        }
        let mut rng = Rng::new(3);
        for _ in 0..50 {
            let c = next_click(&vec![0.0; 512], &mask, side, &mut rng);
            assert_eq!(c.label, 1.0);
            assert!((2.0..5.0).contains(&c.at[0]));
        }
        // Prediction covers everything: only false positives remain outside the mask.
        for _ in 0..50 {
            let c = next_click(&vec![1.0; 512], &mask, side, &mut rng);
            assert_eq!(c.label, 0.0);
            assert!(!(2.0..5.0).contains(&c.at[0]));
        }
        assert!((dice(&mask.iter().map(|m| m - 0.5).collect::<Vec<_>>(), &mask) - 1.0).abs() < 1e-12);
    }
}
