//! The inverse of the preprocessing for one prediction (DESIGN §8, the source
//! protocol and `s3-train predict`): a 128³ crop's mask back onto the source grid.
//!
//! Inverse crop, inverse reorientation and nearest resampling compose into one map:
//! a source voxel's world point, expressed as a continuous index of the crop
//! (`crop_affine⁻¹ · source_affine`), rounded half up as SimpleITK's nearest
//! interpolator rounds. Voxels whose nearest crop voxel lies outside the crop are
//! background, as in the reference's paste into a zero volume.

use crate::geometry::{self, Affine};

/// Where a `side`³ crop lies on a source grid.
#[derive(Clone, Debug)]
pub struct Footprint {
    /// Source voxel index → continuous crop index (rows 0..3 of the affine).
    to_crop: Affine,
    side: usize,
    shape: [usize; 3],
    /// Source index box `[lo, hi)` that holds every voxel mapping into the crop.
    lo: [usize; 3],
    hi: [usize; 3],
}

impl Footprint {
    /// The footprint of a crop (`crop_affine`, edge `side`) on a source of `shape` and
    /// `source_affine`; `None` when either affine is singular.
    pub fn new(crop_affine: &Affine, side: usize, shape: [usize; 3], source_affine: &Affine) -> Option<Footprint> {
        let to_crop = geometry::compose(&geometry::inverse(crop_affine)?, source_affine);
        let to_source = geometry::compose(&geometry::inverse(source_affine)?, crop_affine);
        // The crop's box, voxel edges included, seen from the source grid.
        let (mut lo, mut hi) = ([f64::MAX; 3], [f64::MIN; 3]);
        for corner in 0..8 {
            let c: [f64; 3] = std::array::from_fn(|a| if corner >> a & 1 == 0 { -0.5 } else { side as f64 - 0.5 });
            let s = geometry::apply(&to_source, c);
            for a in 0..3 {
                lo[a] = lo[a].min(s[a]);
                hi[a] = hi[a].max(s[a]);
            }
        }
        let lo = std::array::from_fn(|a| (lo[a].floor() - 1.0).clamp(0.0, shape[a] as f64) as usize);
        let hi = std::array::from_fn(|a| (hi[a].ceil() + 2.0).clamp(0.0, shape[a] as f64) as usize);
        Some(Footprint { to_crop, side, shape, lo, hi })
    }

    /// Calls `f(source, crop)` for every source voxel whose nearest crop voxel is
    /// inside the crop: `source` indexes the source array (x fastest, as NIfTI stores
    /// it), `crop` the crop (C order, k fastest, as shards store it).
    pub fn for_each(&self, mut f: impl FnMut(usize, usize)) {
        let n = self.side as f64;
        let [nx, ny, _] = self.shape;
        let m = &self.to_crop;
        for z in self.lo[2]..self.hi[2] {
            for y in self.lo[1]..self.hi[1] {
                let row: [f64; 3] = std::array::from_fn(|r| m[r][1] * y as f64 + m[r][2] * z as f64 + m[r][3]);
                for x in self.lo[0]..self.hi[0] {
                    let c: [f64; 3] = std::array::from_fn(|r| (m[r][0] * x as f64 + row[r] + 0.5).floor());
                    if c.iter().all(|&v| (0.0..n).contains(&v)) {
                        let [i, j, k] = c.map(|v| v as usize);
                        f(x + nx * (y + ny * z), (i * self.side + j) * self.side + k);
                    }
                }
            }
        }
    }

    /// The crop's mask (`inside(crop index)`) on the whole source grid: 1 inside, 0 elsewhere.
    pub fn paste(&self, inside: impl Fn(usize) -> bool) -> Vec<u8> {
        let mut out = vec![0u8; self.shape.iter().product()];
        self.paste_over(&mut out, 1, inside);
        out
    }

    /// Writes `value` into `map` (the source grid) wherever the crop's mask is set,
    /// leaving every other voxel as it was: one class of a label map over the classes
    /// pasted before it, touching only the crop's footprint.
    pub fn paste_over(&self, map: &mut [u8], value: u8, inside: impl Fn(usize) -> bool) {
        self.for_each(|s, c| {
            if inside(c) {
                map[s] = value;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::{Grid, crop, crop_affine, crop_begin, to_canonical};

    /// A source already on a 1.5 mm grid, not in RAS order: the paste-back of its crop
    /// equals the source wherever the crop reaches, and is 0 elsewhere.
    #[test]
    fn on_a_1_5_mm_source_the_paste_back_is_the_exact_inverse_of_the_crop() {
        let shape = [150, 90, 40];
        let a: Affine = [[0.0, -1.5, 0.0, 60.0], [0.0, 0.0, 1.5, -20.0], [-1.5, 0.0, 0.0, 100.0], [0.0, 0.0, 0.0, 1.0]];
        let data: Vec<i32> = (0..shape.iter().product::<usize>()).map(|n| (n % 7 == 0 || n % 11 == 0) as i32).collect();
        let g = Grid { shape, affine: a, data: data.clone() };
        let c = to_canonical(&g);
        let begin = crop_begin([40, 10, 5], [60, 30, 30], 128);
        let mask = crop(&c, begin, 128, false, |v| v == 1);
        let f = Footprint::new(&crop_affine(&c.affine, begin), 128, shape, &a).unwrap();
        let pasted = f.paste(|n| mask[n]);
        let mut reached = vec![false; data.len()];
        f.for_each(|s, _| reached[s] = true);
        let inside = reached.iter().filter(|&&r| r).count();
        assert!(inside > 100_000, "the crop covers much of the volume ({inside})");
        for n in 0..data.len() {
            let want = if reached[n] { data[n] as u8 } else { 0 };
            assert_eq!(pasted[n], want, "voxel {n}");
        }
    }

    /// Two classes pasted in turn: the later wins where both are set, the earlier
    /// stays where only it is, and what neither sets keeps its value.
    #[test]
    fn a_later_paste_wins_where_two_overlap_and_leaves_the_rest() {
        let shape = [40, 36, 30];
        let a: Affine = [[1.5, 0.0, 0.0, 0.0], [0.0, 1.5, 0.0, 0.0], [0.0, 0.0, 1.5, 0.0], [0.0, 0.0, 0.0, 1.0]];
        let f = Footprint::new(&crop_affine(&a, [5, 3, 2]), 16, shape, &a).unwrap();
        let mut map = vec![7u8; shape.iter().product()];
        f.paste_over(&mut map, 2, |c| c % 2 == 0);
        f.paste_over(&mut map, 5, |c| c % 3 == 0);
        let mut crop_of = vec![None; map.len()];
        f.for_each(|s, c| crop_of[s] = Some(c));
        assert_eq!(crop_of.iter().flatten().count(), 16 * 16 * 16, "the crop lies inside the source");
        for (s, c) in crop_of.iter().enumerate() {
            let want = match c {
                Some(c) if c % 3 == 0 => 5,
                Some(c) if c % 2 == 0 => 2,
                _ => 7,
            };
            assert_eq!(map[s], want, "voxel {s} (crop {c:?})");
        }
    }
}
