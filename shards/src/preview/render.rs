//! A sample as a picture: the three orthogonal slices through the mask's centre,
//! the mask outlined in colour.

use image::{Rgb, RgbImage};

use crate::sample::{SIDE, Sample};

/// Pixels per voxel in a single sample's picture.
pub const ZOOM: u32 = 2;

/// Outline colour of a sample's mask (and of a label beside a prediction).
pub const LABEL_RED: Rgb<u8> = Rgb([255, 40, 40]);
/// Outline colour of a prediction.
pub const PREDICTION_GREEN: Rgb<u8> = Rgb([40, 220, 90]);

/// Renders axial | coronal | sagittal slices through the centre of the mask's
/// bounding box (the volume centre when the mask is empty). CT is shown in a
/// soft-tissue window (−160…240 HU); other modalities between the 1st and 99th
/// percentile of the non-zero voxels (padding would otherwise dominate).
pub fn render(sample: &Sample) -> RgbImage {
    let mask = sample.mask_bools();
    render_outlined(&sample.image_f32(), &sample.meta.modality, &[(&mask, LABEL_RED)], &mask, ZOOM)
}

/// The three slices of a 128³ `image` through the centre of `centre_of`'s bounding
/// box, each mask of `outlines` outlined in its colour (a later one drawn over an
/// earlier), `zoom` pixels per voxel.
pub fn render_outlined(
    image: &[f32],
    modality: &str,
    outlines: &[(&[bool], Rgb<u8>)],
    centre_of: &[bool],
    zoom: u32,
) -> RgbImage {
    let centre = mask_centre(centre_of);
    let (lo, hi) = if modality == "CT" { (-160.0, 240.0) } else { window(image) };
    let at = |i: usize, j: usize, k: usize| (i * SIDE + j) * SIDE + k;
    // (row, col) → voxel, with anterior/superior at the top as radiologists expect.
    let views: [Box<dyn Fn(usize, usize) -> usize>; 3] = [
        Box::new(move |r, c| at(c, SIDE - 1 - r, centre[2])), // axial: i across, j up
        Box::new(move |r, c| at(c, centre[1], SIDE - 1 - r)), // coronal: i across, k up
        Box::new(move |r, c| at(centre[0], c, SIDE - 1 - r)), // sagittal: j across, k up
    ];
    let side = SIDE as u32 * zoom;
    let mut out = RgbImage::new(side * 3 + 4, side);
    for (v, view) in views.iter().enumerate() {
        for r in 0..SIDE {
            for c in 0..SIDE {
                let n = view(r, c);
                let g = (((image[n] - lo) / (hi - lo).max(1e-6)).clamp(0.0, 1.0) * 255.0) as u8;
                let edge = |mask: &[bool]| {
                    mask[n]
                        && [(-1i32, 0i32), (1, 0), (0, -1), (0, 1)].iter().any(|(dr, dc)| {
                            let (rr, cc) = (r as i32 + dr, c as i32 + dc);
                            !(0..SIDE as i32).contains(&rr)
                                || !(0..SIDE as i32).contains(&cc)
                                || !mask[view(rr as usize, cc as usize)]
                        })
                };
                let px = outlines.iter().rev().find(|(m, _)| edge(m)).map_or(Rgb([g, g, g]), |(_, colour)| *colour);
                for dy in 0..zoom {
                    for dx in 0..zoom {
                        out.put_pixel(v as u32 * (side + 2) + c as u32 * zoom + dx, r as u32 * zoom + dy, px);
                    }
                }
            }
        }
    }
    out
}

fn mask_centre(mask: &[bool]) -> [usize; 3] {
    let (mut lo, mut hi) = ([SIDE; 3], [0usize; 3]);
    for (n, _) in mask.iter().enumerate().filter(|(_, m)| **m) {
        let idx = [n / (SIDE * SIDE), n / SIDE % SIDE, n % SIDE];
        for a in 0..3 {
            lo[a] = lo[a].min(idx[a]);
            hi[a] = hi[a].max(idx[a]);
        }
    }
    if lo[0] > hi[0] {
        return [SIDE / 2; 3];
    }
    std::array::from_fn(|a| (lo[a] + hi[a]) / 2)
}

fn window(image: &[f32]) -> (f32, f32) {
    let mut sorted: Vec<f32> = image.iter().step_by(7).copied().filter(|&v| v != 0.0).collect();
    if sorted.is_empty() {
        return (0.0, 1.0);
    }
    sorted.sort_by(f32::total_cmp);
    let q = |p: f64| sorted[((sorted.len() - 1) as f64 * p) as usize];
    (q(0.01), q(0.99))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outline_is_drawn_through_the_mask() {
        let s = crate::synthetic::ct_like("D", "t", "c", 1, 7).unwrap();
        let img = render(&s);
        assert_eq!(img.dimensions(), (SIDE as u32 * ZOOM * 3 + 4, SIDE as u32 * ZOOM));
        let red = img.pixels().filter(|p| **p == LABEL_RED).count();
        assert!(red > 300, "only {red} outline pixels");
    }

    #[test]
    fn a_later_outline_is_drawn_over_an_earlier_one() {
        let s = crate::synthetic::ct_like("D", "t", "c", 1, 7).unwrap();
        let mask = s.mask_bools();
        let img = render_outlined(&s.image_f32(), "CT", &[(&mask, LABEL_RED), (&mask, PREDICTION_GREEN)], &mask, 1);
        assert_eq!(img.dimensions(), (SIDE as u32 * 3 + 4, SIDE as u32));
        assert_eq!(img.pixels().filter(|p| **p == LABEL_RED).count(), 0);
        assert!(img.pixels().filter(|p| **p == PREDICTION_GREEN).count() > 100);
        let empty = vec![false; mask.len()];
        let img = render_outlined(&s.image_f32(), "CT", &[(&mask, LABEL_RED), (&empty, PREDICTION_GREEN)], &mask, 1);
        assert!(img.pixels().filter(|p| **p == LABEL_RED).count() > 100, "an empty prediction hides nothing");
    }
}
