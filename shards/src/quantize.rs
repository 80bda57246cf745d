//! int16 quantisation of intensities: value = q · scale + offset.
//!
//! Integer-valued data within the int16 range (CT in HU, most MR) is stored exactly
//! with scale 1 and offset 0. Anything else is mapped linearly onto [-32767, 32767]
//! around the midpoint of its range, so the rounding error is at most scale / 2.

use crate::error::{Result, ShardError};

/// Quantised values with their dequantisation.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantised {
    /// The int16 codes.
    pub values: Vec<i16>,
    /// value = q · scale + offset
    pub scale: f32,
    /// value = q · scale + offset
    pub offset: f32,
}

/// Quantises `values`; fails on NaN or ±Inf (the caller decides whether that quarantines a case).
pub fn quantize(values: &[f32]) -> Result<Quantised> {
    let mut lo = f32::INFINITY;
    let mut hi = f32::NEG_INFINITY;
    let mut integral = true;
    for (i, &v) in values.iter().enumerate() {
        if !v.is_finite() {
            return Err(ShardError::Quantise(format!("non-finite value {v} at voxel {i}")));
        }
        lo = lo.min(v);
        hi = hi.max(v);
        integral &= v.fract() == 0.0;
    }
    if values.is_empty() {
        return Ok(Quantised { values: Vec::new(), scale: 1.0, offset: 0.0 });
    }
    if integral && lo >= f32::from(i16::MIN) && hi <= f32::from(i16::MAX) {
        return Ok(Quantised { values: values.iter().map(|&v| v as i16).collect(), scale: 1.0, offset: 0.0 });
    }
    // The midpoint and step are rounded to f32 (what is stored) before coding, so
    // decoding with the stored numbers reproduces the bound exactly.
    let offset = ((f64::from(lo) + f64::from(hi)) / 2.0) as f32;
    let mut scale = ((f64::from(hi) - f64::from(lo)) / 65534.0) as f32;
    if scale <= 0.0 || !scale.is_normal() {
        scale = 1.0;
    }
    let (s, o) = (f64::from(scale), f64::from(offset));
    let q = values.iter().map(|&v| ((f64::from(v) - o) / s).round().clamp(-32768.0, 32767.0) as i16).collect();
    Ok(Quantised { values: q, scale, offset })
}

/// Decodes int16 codes back to f32.
pub fn dequantize(values: &[i16], scale: f32, offset: f32) -> Vec<f32> {
    values.iter().map(|&q| f32::from(q) * scale + offset).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_in_range_are_exact() {
        let v = [-1000.0f32, 0.0, 1000.0, 32767.0, -32768.0];
        let q = quantize(&v).unwrap();
        assert_eq!((q.scale, q.offset), (1.0, 0.0));
        assert_eq!(dequantize(&q.values, q.scale, q.offset), v);
    }

    #[test]
    fn floats_within_half_a_step() {
        let v: Vec<f32> = (0..5000).map(|i| ((i as f32) * 0.37).sin() * 123.456 + 7.5).collect();
        let q = quantize(&v).unwrap();
        assert!(q.scale < 0.01);
        let back = dequantize(&q.values, q.scale, q.offset);
        let worst = v.iter().zip(&back).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst <= q.scale / 2.0 * 1.01 + 1e-5, "worst {worst} vs step {}", q.scale);
    }

    #[test]
    fn out_of_range_integers_are_scaled() {
        let v = [0.0f32, 100_000.0];
        let q = quantize(&v).unwrap();
        assert_ne!(q.scale, 1.0);
        let back = dequantize(&q.values, q.scale, q.offset);
        assert!((back[1] - 100_000.0).abs() <= q.scale);
    }

    #[test]
    fn constant_and_nonfinite() {
        let q = quantize(&[0.25f32; 10]).unwrap();
        assert!(dequantize(&q.values, q.scale, q.offset).iter().all(|&x| (x - 0.25).abs() < 1e-6));
        assert!(quantize(&[1.0, f32::NAN]).is_err());
        assert!(quantize(&[f32::INFINITY]).is_err());
    }
}
