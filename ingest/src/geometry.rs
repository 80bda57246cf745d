//! The torchio-exact geometry of DESIGN §4: 1.5 mm resampling about the volume
//! centre, reorientation to the closest canonical (RAS+) axes, and crop-or-pad to
//! 128³ about a mask's bounding box. Written by hand: no library reproduces
//! SimpleITK's and nibabel's conventions together.

pub use crate::volume::Affine;
use crate::volume::{Volume, Voxel};
use crate::with_voxels;

/// Target spacing in mm.
pub const TARGET_SPACING: f64 = 1.5;

/// Rejects affines that cannot describe a volume (non-finite or singular).
pub fn check_affine(a: &Affine) -> Result<(), String> {
    if a.iter().flatten().any(|v| !v.is_finite()) {
        return Err("affine has non-finite entries".into());
    }
    let d = det3(a);
    if d.abs() < 1e-12 {
        return Err(format!("affine is singular (determinant {d:e})"));
    }
    Ok(())
}

fn det3(a: &Affine) -> f64 {
    a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1]) - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
        + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0])
}

/// Column norms of the 3×3 part: the voxel spacing along each array axis
/// (summed in numpy's order so floors of `n·s/1.5` agree with torchio).
pub fn spacing(a: &Affine) -> [f64; 3] {
    std::array::from_fn(|c| (a[0][c] * a[0][c] + a[1][c] * a[1][c] + a[2][c] * a[2][c]).sqrt())
}

/// `a · [x, y, z, 1]`
pub fn apply(a: &Affine, p: [f64; 3]) -> [f64; 3] {
    std::array::from_fn(|r| a[r][0] * p[0] + a[r][1] * p[1] + a[r][2] * p[2] + a[r][3])
}

/// The inverse of an affine (world → voxel index); `None` when it is singular.
pub fn inverse(a: &Affine) -> Option<Affine> {
    let m: [[f64; 3]; 3] = std::array::from_fn(|i| std::array::from_fn(|j| a[i][j]));
    if det3(a).abs() < 1e-12 {
        return None;
    }
    let it = inverse_transpose(&m);
    let mut out = [[0.0; 4]; 4];
    for i in 0..3 {
        for j in 0..3 {
            out[i][j] = it[j][i];
        }
        out[i][3] = -(0..3).map(|j| it[j][i] * a[j][3]).sum::<f64>();
    }
    out[3][3] = 1.0;
    Some(out)
}

/// `a · b`
pub fn compose(a: &Affine, b: &Affine) -> Affine {
    std::array::from_fn(|i| std::array::from_fn(|j| (0..4).map(|k| a[i][k] * b[k][j]).sum()))
}

/// Largest absolute difference between two affines.
pub fn max_abs_diff(a: &Affine, b: &Affine) -> f64 {
    a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// A volume on the 1.5 mm grid (x fastest).
#[derive(Clone, Debug)]
pub struct Grid<T> {
    /// Shape.
    pub shape: [usize; 3],
    /// Affine (direction kept, spacing 1.5, centre kept).
    pub affine: Affine,
    /// Values, x fastest.
    pub data: Vec<T>,
}

/// Output shape and affine of resampling a `shape`/`affine` volume to 1.5 mm.
pub fn resampled_geometry(shape: [usize; 3], affine: &Affine) -> ([usize; 3], Affine) {
    let s = spacing(affine);
    let new_shape: [usize; 3] = std::array::from_fn(|a| {
        if shape[a] <= 1 { 1 } else { ((shape[a] as f64 * s[a] / TARGET_SPACING).floor() as usize).max(1) }
    });
    let centre = apply(affine, std::array::from_fn(|a| (shape[a] as f64 - 1.0) / 2.0));
    let mut out = [[0.0; 4]; 4];
    for r in 0..3 {
        for c in 0..3 {
            out[r][c] = affine[r][c] / s[c] * TARGET_SPACING;
        }
    }
    let half: [f64; 3] = std::array::from_fn(|a| (new_shape[a] as f64 - 1.0) / 2.0);
    for r in 0..3 {
        out[r][3] = centre[r] - (0..3).map(|c| out[r][c] * half[c]).sum::<f64>();
    }
    out[3][3] = 1.0;
    (new_shape, out)
}

/// Per output index along one axis: the input continuous index, clamped to [0, n−1].
fn source_positions(n: usize, n_out: usize, s: f64) -> Vec<f64> {
    let (cin, cout, step) = ((n as f64 - 1.0) / 2.0, (n_out as f64 - 1.0) / 2.0, TARGET_SPACING / s);
    (0..n_out).map(|o| (cin + (o as f64 - cout) * step).clamp(0.0, n as f64 - 1.0)).collect()
}

/// Linear taps along one axis: (lower index, upper index, weight of upper).
fn linear_taps(pos: &[f64], n: usize) -> Vec<(usize, usize, f64)> {
    pos.iter()
        .map(|&x| {
            let i0 = (x.floor() as usize).min(n - 1);
            let i1 = (i0 + 1).min(n - 1);
            (i0, i1, x - i0 as f64)
        })
        .collect()
}

/// Trilinear resampling of the image to 1.5 mm. Integer, unscaled sources are
/// truncated toward zero like SimpleITK casting back to the input pixel type.
pub fn resample_image(v: &Volume) -> Grid<f32> {
    let (shape, affine) = resampled_geometry(v.shape, &v.affine);
    let s = spacing(&v.affine);
    let taps: [Vec<(usize, usize, f64)>; 3] =
        std::array::from_fn(|a| linear_taps(&source_positions(v.shape[a], shape[a], s[a]), v.shape[a]));
    let truncate = v.integer_unscaled();
    let (slope, inter) = (v.slope, v.inter);
    let data = with_voxels!(&v.voxels, |d| trilinear(d, v.shape, shape, &taps, slope, inter, truncate));
    Grid { shape, affine, data }
}

fn trilinear<T: Voxel>(
    d: &[T],
    ins: [usize; 3],
    outs: [usize; 3],
    taps: &[Vec<(usize, usize, f64)>; 3],
    slope: f64,
    inter: f64,
    truncate: bool,
) -> Vec<f32> {
    use rayon::prelude::*;
    let (nx, nxy) = (ins[0], ins[0] * ins[1]);
    let mut out = vec![0f32; outs[0] * outs[1] * outs[2]];
    out.par_chunks_mut(outs[0] * outs[1]).enumerate().for_each(|(z, plane)| {
        let (z0, z1, wz) = taps[2][z];
        for y in 0..outs[1] {
            let (y0, y1, wy) = taps[1][y];
            for x in 0..outs[0] {
                let (x0, x1, wx) = taps[0][x];
                let at = |xi: usize, yi: usize, zi: usize| d[xi + nx * yi + nxy * zi].to_f64();
                let c00 = at(x0, y0, z0) * (1.0 - wx) + at(x1, y0, z0) * wx;
                let c10 = at(x0, y1, z0) * (1.0 - wx) + at(x1, y1, z0) * wx;
                let c01 = at(x0, y0, z1) * (1.0 - wx) + at(x1, y0, z1) * wx;
                let c11 = at(x0, y1, z1) * (1.0 - wx) + at(x1, y1, z1) * wx;
                let c0 = c00 * (1.0 - wy) + c10 * wy;
                let c1 = c01 * (1.0 - wy) + c11 * wy;
                let v = (c0 * (1.0 - wz) + c1 * wz) * slope + inter;
                plane[x + outs[0] * y] = if truncate { v.trunc() as f32 } else { v as f32 };
            }
        }
    });
    out
}

/// Nearest-neighbour resampling of a label map (`floor(x + 0.5)`) to 1.5 mm.
/// Fails when a label value is not an integer.
pub fn resample_label(v: &Volume) -> Result<Grid<i32>, String> {
    let (shape, affine) = resampled_geometry(v.shape, &v.affine);
    let s = spacing(&v.affine);
    let idx: [Vec<usize>; 3] = std::array::from_fn(|a| {
        source_positions(v.shape[a], shape[a], s[a])
            .iter()
            .map(|&x| ((x + 0.5).floor() as usize).min(v.shape[a] - 1))
            .collect()
    });
    let (nx, nxy) = (v.shape[0], v.shape[0] * v.shape[1]);
    let mut data = Vec::with_capacity(shape.iter().product());
    for z in &idx[2] {
        for y in &idx[1] {
            for x in &idx[0] {
                let value = v.value(x + nx * y + nxy * z);
                if value.fract() != 0.0 || value.abs() > f64::from(i32::MAX) {
                    return Err(format!("label value {value} is not an integer"));
                }
                data.push(value as i32);
            }
        }
    }
    Ok(Grid { shape, affine, data })
}

/// nibabel's `io_orientation`: for each array axis, the world axis it runs along
/// most closely and the direction (+1/−1), after removing shears (polar decomposition).
pub fn io_orientation(a: &Affine) -> [(usize, i8); 3] {
    let s = spacing(a);
    let mut r: [[f64; 3]; 3] =
        std::array::from_fn(|i| std::array::from_fn(|j| a[i][j] / if s[j] == 0.0 { 1.0 } else { s[j] }));
    // Polar factor by Newton iteration R ← (R + R^-T)/2: the closest orthogonal matrix.
    for _ in 0..100 {
        let inv_t = inverse_transpose(&r);
        let next: [[f64; 3]; 3] = std::array::from_fn(|i| std::array::from_fn(|j| (r[i][j] + inv_t[i][j]) / 2.0));
        let delta = (0..3)
            .flat_map(|i| (0..3).map(move |j| (i, j)))
            .map(|(i, j)| (next[i][j] - r[i][j]).abs())
            .fold(0.0, f64::max);
        r = next;
        if delta < 1e-15 {
            break;
        }
    }
    let mut out = [(0usize, 1i8); 3];
    for in_ax in 0..3 {
        let col: [f64; 3] = std::array::from_fn(|i| r[i][in_ax]);
        let mut best = 0;
        for i in 1..3 {
            if col[i].abs() > col[best].abs() {
                best = i;
            }
        }
        out[in_ax] = (best, if col[best] < 0.0 { -1 } else { 1 });
        for c in 0..3 {
            r[best][c] = 0.0;
        }
    }
    out
}

fn inverse_transpose(m: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    // cofactor matrix / det = inverse transposed
    let c = |i: usize, j: usize| {
        let (r0, r1) = ((i + 1) % 3, (i + 2) % 3);
        let (c0, c1) = ((j + 1) % 3, (j + 2) % 3);
        m[r0][c0] * m[r1][c1] - m[r0][c1] * m[r1][c0]
    };
    std::array::from_fn(|i| std::array::from_fn(|j| c(i, j) / det))
}

/// A volume in RAS+ orientation, C order `[i][j][k]` (k fastest).
#[derive(Clone, Debug)]
pub struct Canonical<T> {
    /// Shape along R, A, S.
    pub shape: [usize; 3],
    /// Affine of the reoriented array.
    pub affine: Affine,
    /// Values, C order.
    pub data: Vec<T>,
}

/// Reorients a grid to the closest canonical orientation (nibabel's
/// `as_closest_canonical`: axis permutation and flips only) and lays it out in C order.
pub fn to_canonical<T: Copy>(g: &Grid<T>) -> Canonical<T> {
    let ornt = io_orientation(&g.affine);
    let mut shape = [0usize; 3];
    let mut src_axis = [0usize; 3];
    for (in_ax, &(out_ax, _)) in ornt.iter().enumerate() {
        shape[out_ax] = g.shape[in_ax];
        src_axis[out_ax] = in_ax;
    }
    let mut affine = [[0.0; 4]; 4];
    for r in 0..3 {
        affine[r][3] = g.affine[r][3];
    }
    for (in_ax, &(out_ax, sign)) in ornt.iter().enumerate() {
        for r in 0..3 {
            affine[r][out_ax] = g.affine[r][in_ax] * f64::from(sign);
            if sign < 0 {
                affine[r][3] += g.affine[r][in_ax] * (g.shape[in_ax] as f64 - 1.0);
            }
        }
    }
    affine[3][3] = 1.0;
    let strides = [1, g.shape[0], g.shape[0] * g.shape[1]];
    // For each output axis: the source stride and where it starts (flips run backwards).
    let plan: [(isize, usize); 3] = std::array::from_fn(|out_ax| {
        let in_ax = src_axis[out_ax];
        let st = strides[in_ax] as isize;
        if ornt[in_ax].1 < 0 { (-st, (g.shape[in_ax] - 1) * strides[in_ax]) } else { (st, 0) }
    });
    let mut data = Vec::with_capacity(g.data.len());
    for i in 0..shape[0] {
        let bi = plan[0].1 as isize + i as isize * plan[0].0;
        for j in 0..shape[1] {
            let bj = bi + plan[1].1 as isize + j as isize * plan[1].0;
            for k in 0..shape[2] {
                data.push(g.data[(bj + plan[2].1 as isize + k as isize * plan[2].0) as usize]);
            }
        }
    }
    Canonical { shape, affine, data }
}

/// Bounding box `[lo, hi)` of the voxels where `pred` holds, or None.
pub fn bbox<T: Copy>(c: &Canonical<T>, pred: impl Fn(T) -> bool) -> Option<([usize; 3], [usize; 3])> {
    let (mut lo, mut hi) = ([usize::MAX; 3], [0usize; 3]);
    let [_, n1, n2] = c.shape;
    for (n, &v) in c.data.iter().enumerate() {
        if pred(v) {
            let idx = [n / (n1 * n2), n / n2 % n1, n % n2];
            for a in 0..3 {
                lo[a] = lo[a].min(idx[a]);
                hi[a] = hi[a].max(idx[a] + 1);
            }
        }
    }
    (lo[0] != usize::MAX).then_some((lo, hi))
}

/// torchio's CropOrPad start index for a target `side` centred on `[lo, hi)`.
pub fn crop_begin(lo: [usize; 3], hi: [usize; 3], side: usize) -> [isize; 3] {
    std::array::from_fn(|a| {
        let mut c = (lo[a] + hi[a]) as f64 / 2.0;
        let c_integer = c.fract() == 0.0;
        if (side % 2 == 0) ^ c_integer {
            c -= 0.5;
        }
        (c - side as f64 / 2.0) as isize
    })
}

/// Copies the `side³` window starting at `begin` (C order), `fill` outside the volume.
pub fn crop<T: Copy, U>(c: &Canonical<T>, begin: [isize; 3], side: usize, fill: U, map: impl Fn(T) -> U) -> Vec<U>
where
    U: Copy,
{
    let mut out = Vec::with_capacity(side * side * side);
    let [n0, n1, n2] = c.shape.map(|n| n as isize);
    for i in 0..side as isize {
        let si = begin[0] + i;
        for j in 0..side as isize {
            let sj = begin[1] + j;
            let row_ok = (0..n0).contains(&si) && (0..n1).contains(&sj);
            for k in 0..side as isize {
                let sk = begin[2] + k;
                out.push(if row_ok && (0..n2).contains(&sk) {
                    map(c.data[((si * n1 + sj) * n2 + sk) as usize])
                } else {
                    fill
                });
            }
        }
    }
    out
}

/// The affine of a crop starting at `begin`: origin moved to `affine · begin`.
pub fn crop_affine(a: &Affine, begin: [isize; 3]) -> Affine {
    let mut out = *a;
    let o = apply(a, begin.map(|b| b as f64));
    for r in 0..3 {
        out[r][3] = o[r];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orientation_of_common_affines() {
        let las: Affine = [[-2.0, 0.0, 0.0, 10.0], [0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 1.0]];
        assert_eq!(io_orientation(&las), [(0, -1), (1, 1), (2, 1)]);
        // PIR-like: array axis 0 runs posterior, 1 inferior, 2 right.
        let pir: Affine = [[0.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]];
        assert_eq!(io_orientation(&pir), [(1, -1), (2, -1), (0, 1)]);
    }

    #[test]
    fn canonical_flip_keeps_world_positions() {
        let a: Affine = [[-2.0, 0.0, 0.0, 10.0], [0.0, 0.0, 3.0, -5.0], [0.0, 1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 1.0]];
        let shape = [4, 3, 2];
        let data: Vec<usize> = (0..24).collect();
        let g = Grid { shape, affine: a, data: data.clone() };
        let c = to_canonical(&g);
        // Every output voxel maps to the same world point as its source voxel.
        for i in 0..c.shape[0] {
            for j in 0..c.shape[1] {
                for k in 0..c.shape[2] {
                    let v = c.data[(i * c.shape[1] + j) * c.shape[2] + k];
                    let src = [v % 4, v / 4 % 3, v / 12];
                    let w1 = apply(&c.affine, [i as f64, j as f64, k as f64]);
                    let w0 = apply(&a, src.map(|x| x as f64));
                    assert!((0..3).all(|r| (w1[r] - w0[r]).abs() < 1e-12), "{w1:?} vs {w0:?}");
                }
            }
        }
        assert!(c.affine[0][0] > 0.0 && c.affine[1][1] > 0.0 && c.affine[2][2] > 0.0);
    }

    #[test]
    fn inverse_undoes_an_oblique_affine() {
        let a: Affine = [[0.0, 1.2, 0.3, 5.0], [-0.7, 0.0, 0.1, -3.0], [0.2, 0.1, 2.5, 9.0], [0.0, 0.0, 0.0, 1.0]];
        let back = compose(&inverse(&a).unwrap(), &a);
        let id: Affine = std::array::from_fn(|i| std::array::from_fn(|j| f64::from(u8::from(i == j))));
        assert!(max_abs_diff(&back, &id) < 1e-12, "{back:?}");
        assert!(inverse(&[[0.0; 4]; 4]).is_none());
    }

    #[test]
    fn crop_centre_rule() {
        // bbox [10, 20): centre 15 is an integer → for an even side it moves to 14.5? No: XOR rule.
        assert_eq!(crop_begin([10; 3], [20; 3], 128), [-49; 3]);
        // bbox [10, 21): centre 15.5 → 15 → begin -49
        assert_eq!(crop_begin([10; 3], [21; 3], 128), [-49; 3]);
    }

    #[test]
    fn resampled_shape_and_centre() {
        let a: Affine = [[0.7, 0.0, 0.0, -100.0], [0.0, 0.7, 0.0, 50.0], [0.0, 0.0, 5.0, 0.0], [0.0, 0.0, 0.0, 1.0]];
        let (shape, b) = resampled_geometry([512, 512, 3], &a);
        assert_eq!(shape, [238, 238, 10]);
        let c0 = apply(&a, [255.5, 255.5, 1.0]);
        let c1 = apply(&b, [118.5, 118.5, 4.5]);
        assert!((0..3).all(|r| (c0[r] - c1[r]).abs() < 1e-9));
        assert_eq!(spacing(&b), [1.5, 1.5, 1.5]);
    }
}
