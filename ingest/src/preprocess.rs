//! One case → its samples (DESIGN §4): checks, 1.5 mm resampling and RAS+
//! reorientation once per case, then per label value a binary mask, the size
//! filters, the 128³ crop-or-pad about the mask and the CT clamp.

use std::collections::BTreeMap;

use s3_shards::{SIDE, Sample, SampleMeta, Split};

use crate::catalog::{LabelInfo, Modality};
use crate::error::{IngestError, Result};
use crate::geometry::{self, Affine, Canonical};
use crate::volume::{Volume, Voxel};
use crate::with_voxels;

/// Size filters and split.
#[derive(Clone, Debug)]
pub struct PreprocessOptions {
    /// Drop a label whose mask at 1.5 mm is smaller than this (mm³); the paper's 1 cm³.
    pub min_mask_mm3: f64,
    /// Drop a label whose 128³ crop keeps fewer foreground voxels than this.
    pub min_crop_voxels: i64,
    /// Percent of cases (by hash of dataset/case) in the validation split.
    pub val_percent: u32,
    /// Largest difference between image and label affines still taken as the same grid (mm).
    pub affine_tolerance_mm: f64,
    /// Every case in this split instead of the `val_percent` rule (an evaluation
    /// catalogue's `test`).
    pub split: Option<Split>,
}

impl Default for PreprocessOptions {
    fn default() -> Self {
        PreprocessOptions {
            min_mask_mm3: 1000.0,
            min_crop_voxels: 1000,
            val_percent: 10,
            affine_tolerance_mm: 1e-3,
            split: None,
        }
    }
}

/// Which case is being processed, and how to name its labels.
#[derive(Clone, Debug)]
pub struct CaseContext<'a> {
    /// Dataset name.
    pub dataset: &'a str,
    /// Task name.
    pub task: &'a str,
    /// Case id.
    pub case_id: &'a str,
    /// Modality (CT gets the clamp).
    pub modality: Modality,
    /// Label value → name and category.
    pub labels: &'a BTreeMap<i32, LabelInfo>,
}

/// The samples of a case and the labels dropped by the filters (value → reason).
#[derive(Debug, Default)]
pub struct CaseSamples {
    /// One per kept label (and channel).
    pub samples: Vec<Sample>,
    /// Labels present in the source but not kept.
    pub dropped: BTreeMap<i32, String>,
    /// Image channels left out (name → reason).
    pub dropped_channels: BTreeMap<String, String>,
    /// The source image's digest per channel ([`crate::image_digest`]), for the leakage check.
    pub image_digests: Vec<String>,
}

/// Volume of one voxel at 1.5 mm.
const VOXEL_MM3: f64 = geometry::TARGET_SPACING * geometry::TARGET_SPACING * geometry::TARGET_SPACING;

/// One image channel of a case: its name (empty for a single-channel image) and volume.
#[derive(Clone, Copy, Debug)]
pub struct Channel<'a> {
    /// `FLAIR`, `t1ce`, ...; empty when the source image has one channel.
    pub name: &'a str,
    /// The channel's volume.
    pub image: &'a Volume,
}

/// Runs the whole of DESIGN §4 on a single-channel case. An `Err` is a quarantine reason.
pub fn process_case(
    image: &Volume,
    label: &Volume,
    ctx: &CaseContext,
    opts: &PreprocessOptions,
) -> Result<CaseSamples> {
    process_channels(&[Channel { name: "", image }], label, ctx, opts)
}

/// DESIGN §4 on a case with one or more image channels: one sample per channel and
/// kept label. The label's steps (resampling, reorientation, masks, size filters) run
/// once and are shared by every channel. A channel whose grid differs from the
/// label's is left out with its reason; when none is left, the first reason
/// quarantines the case.
pub fn process_channels(
    channels: &[Channel],
    label: &Volume,
    ctx: &CaseContext,
    opts: &PreprocessOptions,
) -> Result<CaseSamples> {
    let mut out = CaseSamples {
        image_digests: channels.iter().map(|ch| crate::image_digest::digest(ch.image)).collect(),
        ..CaseSamples::default()
    };
    let mut usable = Vec::new();
    let mut first_error = None;
    for ch in channels {
        match check_pair(ch.image, label, opts) {
            Ok(()) => usable.push(*ch),
            Err(e) if channels.len() > 1 => {
                out.dropped_channels.insert(ch.name.to_string(), format!("left out: {e}"));
                first_error.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    if usable.is_empty() {
        return Err(first_error.unwrap_or_else(|| IngestError::Mismatch("no image channel".into())));
    }
    for ch in &usable {
        check_image(ch.image).map_err(|e| match e {
            IngestError::BadValues { reason, .. } if !ch.name.is_empty() => {
                IngestError::BadValues { file: format!("image channel {}", ch.name), reason }
            }
            e => e,
        })?;
    }
    let present = label_values(label)?;
    if present.is_empty() {
        return Err(IngestError::EmptyLabel(ctx.case_id.into()));
    }

    // Steps 1–2 once per case (and per channel for the images).
    let images: Vec<(&str, &Volume, Canonical<f32>)> =
        usable.iter().map(|ch| (ch.name, ch.image, canonical_image(ch.image))).collect();
    let lab = canonical_label(label)?;
    let mut counts: BTreeMap<i32, u64> = BTreeMap::new();
    for &v in &lab.data {
        if v > 0 {
            *counts.entry(v).or_default() += 1;
        }
    }

    let split = opts.split.unwrap_or_else(|| Split::for_case(ctx.dataset, ctx.case_id, opts.val_percent));
    for c in present {
        let n = counts.get(&c).copied().unwrap_or(0);
        let mm3 = n as f64 * VOXEL_MM3;
        if mm3 < opts.min_mask_mm3 {
            out.dropped.insert(c, format!("mask is {mm3:.0} mm³ at 1.5 mm, below {} mm³", opts.min_mask_mm3));
            continue;
        }
        let (lo, hi) = geometry::bbox(&lab, |v| v == c).expect("label has voxels");
        let begin = geometry::crop_begin(lo, hi, SIDE);
        let mask = geometry::crop(&lab, begin, SIDE, false, |v| v == c);
        let fg = mask.iter().filter(|&&m| m).count() as i64;
        if fg < opts.min_crop_voxels {
            out.dropped
                .insert(c, format!("the 128³ crop keeps {fg} foreground voxels, below {}", opts.min_crop_voxels));
            continue;
        }
        let info = ctx.labels.get(&c).cloned().unwrap_or_else(|| LabelInfo::unnamed(c));
        for (name, source, img) in &images {
            let crop_image = crop_image(img, begin, ctx.modality);
            let meta = SampleMeta {
                dataset: ctx.dataset.into(),
                task: ctx.task.into(),
                case_id: ctx.case_id.into(),
                label_value: c,
                label_name: info.name.clone(),
                category: info.category.clone(),
                modality: ctx.modality.as_str().into(),
                channel: name.to_string(),
                split,
                affine: flatten(&geometry::crop_affine(&img.affine, begin)),
                source_shape: source.shape.map(|n| n as i32),
                source_affine: flatten(&source.affine),
            };
            out.samples.push(Sample::from_volumes(meta, &crop_image, &mask)?);
        }
    }
    Ok(out)
}

/// The image and label must describe the same grid.
pub fn check_pair(image: &Volume, label: &Volume, opts: &PreprocessOptions) -> Result<()> {
    if image.shape != label.shape {
        return Err(IngestError::Mismatch(format!("image shape {:?}, label shape {:?}", image.shape, label.shape)));
    }
    let diff = geometry::max_abs_diff(&image.affine, &label.affine);
    if diff > opts.affine_tolerance_mm {
        return Err(IngestError::Mismatch(format!(
            "affines differ by up to {diff:.4} mm (tolerance {} mm)",
            opts.affine_tolerance_mm
        )));
    }
    Ok(())
}

/// The image's values must be finite, and stay finite in f32 once scaled.
pub fn check_image(image: &Volume) -> Result<()> {
    let (non_finite, lo, hi) =
        with_voxels!(&image.voxels, |d| d.iter().fold((0usize, f64::MAX, f64::MIN), |(n, lo, hi), v| {
            let v = v.to_f64();
            if v.is_finite() { (n, lo.min(v), hi.max(v)) } else { (n + 1, lo, hi) }
        }));
    if non_finite > 0 {
        return Err(IngestError::BadValues { file: "image".into(), reason: format!("{non_finite} NaN/Inf voxels") });
    }
    // Intensities are resampled into f32: a scale factor that carries them past
    // f32's range would turn them into ±Inf silently.
    for raw in [lo, hi] {
        let v = raw * image.slope + image.inter;
        if !(v as f32).is_finite() {
            return Err(IngestError::BadValues {
                file: "image".into(),
                reason: format!(
                    "stored value {raw} scaled by scl_slope {} and scl_inter {} is {v:e}, beyond float32",
                    image.slope, image.inter
                ),
            });
        }
    }
    Ok(())
}

/// Steps 1–2 for an image: 1.5 mm (trilinear), then RAS+.
pub fn canonical_image(image: &Volume) -> Canonical<f32> {
    geometry::to_canonical(&geometry::resample_image(image))
}

/// Steps 1–2 for a label map: 1.5 mm (nearest), then RAS+.
pub fn canonical_label(label: &Volume) -> Result<Canonical<i32>> {
    let grid =
        geometry::resample_label(label).map_err(|reason| IngestError::BadValues { file: "label".into(), reason })?;
    Ok(geometry::to_canonical(&grid))
}

/// Steps 4–5 for the image: the 128³ crop-or-pad starting at `begin`, clamped for CT.
pub fn crop_image(img: &Canonical<f32>, begin: [isize; 3], modality: Modality) -> Vec<f32> {
    let clamp = modality == Modality::CT;
    geometry::crop(img, begin, SIDE, 0.0f32, |v| if clamp { v.clamp(-1000.0, 1000.0) } else { v })
}

/// Row-major flattening.
pub fn flatten(a: &Affine) -> [f64; 16] {
    std::array::from_fn(|i| a[i / 4][i % 4])
}

/// Distinct label values > 0 in a label volume; non-integer values are an error.
pub fn label_values(label: &Volume) -> Result<Vec<i32>> {
    let mut seen = std::collections::BTreeSet::new();
    let bad =
        |v: f64| IngestError::BadValues { file: "label".into(), reason: format!("label value {v} is not an integer") };
    with_voxels!(&label.voxels, |d| {
        // Integer labels: a small set, checked cheaply by remembering the last value.
        let mut last = f64::NAN;
        for &raw in d.iter() {
            let r = raw.to_f64();
            if r == last {
                continue;
            }
            last = r;
            let v = r * label.slope + label.inter;
            if !v.is_finite() || v.fract() != 0.0 || v.abs() > f64::from(i32::MAX) {
                return Err(bad(v));
            }
            if v > 0.0 {
                seen.insert(v as i32);
            }
        }
    });
    Ok(seen.into_iter().collect())
}
