//! Inference on a source volume (DESIGN §8), shared by `s3-train predict` and the
//! source-geometry evaluation: the ingest's reading and preprocessing (1.5 mm,
//! RAS+, the 128³ crop, the CT clamp) and the loader's z-normalisation, the click
//! passes with every point so far and the previous low-res logits, and the 128³
//! prediction pasted back onto the source grid.

use burn::prelude::*;
use s3_ingest::catalog::Modality;
use s3_ingest::geometry::{self, Affine, Canonical};
use s3_ingest::nifti_io::Volume;
use s3_ingest::paste_back::Footprint;
use s3_ingest::preprocess;

use crate::clicks::Click;
use crate::config::SamConfig;
use crate::error::{Result, TrainError};
use crate::loader::znormalize;
use crate::model::Sam;
use crate::stage::ClickMemory;
use crate::step::ClickLoop;

/// A click on the source volume: voxel indices along the file's array axes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SourceClick {
    /// Voxel indices (i, j, k) of the source array.
    pub at: [f64; 3],
    /// Foreground (true) or background.
    pub positive: bool,
}

impl std::str::FromStr for SourceClick {
    type Err = String;
    /// `i,j,k` (foreground) or `i,j,k:1` / `i,j,k:0`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (at, label) = s.split_once(':').unwrap_or((s, "1"));
        let positive = match label {
            "1" => true,
            "0" => false,
            l => return Err(format!("click {s:?}: the label after ':' is {l:?}; 1 (foreground) or 0 (background)")),
        };
        let v: Vec<f64> = at
            .split(',')
            .map(|x| x.trim().parse::<f64>().map_err(|_| format!("click {s:?}: {x:?} is not a voxel index")))
            .collect::<Result<_, _>>()?;
        let at: [f64; 3] = v.try_into().map_err(|_| format!("click {s:?}: three voxel indices i,j,k are needed"))?;
        if at.iter().any(|x| !x.is_finite() || *x < 0.0) {
            return Err(format!("click {s:?}: voxel indices must be finite and ≥ 0"));
        }
        Ok(SourceClick { at, positive })
    }
}

/// A case prepared once for inference: the image on the 1.5 mm RAS+ grid.
pub struct PreparedImage<'a> {
    source: &'a Volume,
    canonical: Canonical<f32>,
    modality: Modality,
}

impl<'a> PreparedImage<'a> {
    /// Checks and resamples `image` as the ingest does.
    pub fn new(image: &'a Volume, modality: Modality) -> Result<PreparedImage<'a>> {
        preprocess::check_image(image).map_err(input("image"))?;
        Ok(PreparedImage { source: image, canonical: preprocess::canonical_image(image), modality })
    }

    /// The 128³ crop whose centre rule is torchio's for the box `[lo, hi)` of the
    /// 1.5 mm RAS+ grid (ingest's crop about a mask's bounding box).
    pub fn crop_about(&self, lo: [usize; 3], hi: [usize; 3]) -> Result<CropInput> {
        let side = s3_shards::SIDE;
        let begin = geometry::crop_begin(lo, hi, side);
        let mut image = preprocess::crop_image(&self.canonical, begin, self.modality);
        znormalize(&mut image);
        let crop_affine = geometry::crop_affine(&self.canonical.affine, begin);
        let footprint = Footprint::new(&crop_affine, side, self.source.shape, &self.source.affine)
            .ok_or_else(|| TrainError::Predict("the image's affine is singular".into()))?;
        Ok(CropInput { image, begin, crop_affine, footprint })
    }

    /// A source voxel index as a continuous index of the 1.5 mm RAS+ grid.
    pub fn to_canonical(&self, at: [f64; 3]) -> [f64; 3] {
        let world = geometry::apply(&self.source.affine, at);
        let inv = geometry::inverse(&self.canonical.affine).expect("a resampled grid is regular");
        geometry::apply(&inv, world)
    }

    /// The image as read, on its own grid.
    pub fn source(&self) -> &'a Volume {
        self.source
    }

    /// The 1.5 mm RAS+ grid's shape.
    pub fn canonical_shape(&self) -> [usize; 3] {
        self.canonical.shape
    }
}

fn input(what: &'static str) -> impl Fn(s3_ingest::IngestError) -> TrainError {
    move |e| TrainError::Input { what: what.into(), source: Box::new(e) }
}

/// The model's input and where it lies on the source.
pub struct CropInput {
    /// 128³ z-normalised intensities, C order.
    pub image: Vec<f32>,
    /// Start of the crop on the 1.5 mm RAS+ grid.
    pub begin: [isize; 3],
    /// The crop's voxel → world affine.
    pub crop_affine: Affine,
    /// Where the crop's voxels land on the source grid.
    pub footprint: Footprint,
}

impl CropInput {
    /// The crop's image embedding.
    pub fn embed(&self, model: &Sam, cfg: &SamConfig, device: &Device) -> Tensor<5> {
        let s = cfg.img_size;
        model
            .image_encoder
            .forward(Tensor::<5>::from_data(TensorData::new(self.image.clone(), [1, 1, s, s, s]), device))
    }

    /// A crop prediction (`logits`, 128³) on the whole source grid: 1 foreground, 0 not.
    pub fn paste(&self, logits: &[f32]) -> Vec<u8> {
        self.footprint.paste(|k| logits[k] > 0.0)
    }

    /// A crop prediction written as `value` into a label map on the source grid, over
    /// what is there (see [`Footprint::paste_over`]).
    pub fn paste_over(&self, logits: &[f32], map: &mut [u8], value: u8) {
        self.footprint.paste_over(map, value, |k| logits[k] > 0.0)
    }

    /// Dice on the whole source volume of a crop prediction against a source label:
    /// `truth(n)` for source voxel `n`, `truth_total` its count over the whole volume.
    pub fn source_dice(&self, logits: &[f32], truth: impl Fn(usize) -> bool, truth_total: usize) -> f64 {
        let (mut inter, mut pred) = (0usize, 0usize);
        self.footprint.for_each(|s, k| {
            if logits[k] > 0.0 {
                pred += 1;
                inter += usize::from(truth(s));
            }
        });
        if pred + truth_total == 0 { 1.0 } else { 2.0 * inter as f64 / (pred + truth_total) as f64 }
    }
}

/// The result of [`predict_clicks`].
pub struct Predicted {
    /// The crop the model saw.
    pub input: CropInput,
    /// The 128³ logits after the last click.
    pub logits: Vec<f32>,
    /// The clicks as the model saw them (crop indices).
    pub clicks: Vec<Click>,
}

/// The model on the user's clicks: the crop about the first, one pass per click,
/// each with every click so far and the previous low-res logits (the reference's
/// inference). A click outside the crop is refused: the model never sees it.
pub fn predict_clicks(
    model: &Sam,
    cfg: &SamConfig,
    image: &PreparedImage,
    clicks: &[SourceClick],
    device: &Device,
) -> Result<Predicted> {
    let first = clicks.first().ok_or_else(|| TrainError::Predict("no click given".into()))?;
    let shape = image.canonical_shape();
    let on_grid = |c: &SourceClick| image.to_canonical(c.at).map(|x| (x + 0.5).floor());
    let p = on_grid(first);
    if (0..3).any(|a| p[a] < 0.0 || p[a] >= shape[a] as f64) {
        return Err(TrainError::Predict(format!("the first click {:?} lies outside the image", first.at)));
    }
    let lo = p.map(|x| x as usize);
    let input = image.crop_about(lo, lo.map(|x| x + 1))?;
    let side = cfg.img_size as f64;
    let mut seen = Vec::new();
    for (n, c) in clicks.iter().enumerate() {
        let q = on_grid(c);
        let at: [f64; 3] = std::array::from_fn(|a| q[a] - input.begin[a] as f64);
        if at.iter().any(|&x| !(0.0..side).contains(&x)) {
            return Err(TrainError::Predict(format!(
                "click {} at {:?} lies outside the 128³ crop about the first click (±96 mm at 1.5 mm)",
                n + 1,
                c.at
            )));
        }
        seen.push(Click { at: at.map(|x| x as f32), label: if c.positive { 1.0 } else { 0.0 } });
    }
    let emb = input.embed(model, cfg, device);
    let mut loop_ = ClickLoop::new(&["predict"], 0, cfg, ClickMemory::All, device);
    let mut low = None;
    for c in &seen {
        loop_.push(0, *c);
        low = Some(loop_.decode(model, emb.clone(), true, device));
    }
    loop_.predict_from_low(&low.expect("at least one click"));
    Ok(Predicted { logits: loop_.prediction(0).to_vec(), input, clicks: seen })
}

/// Source voxels per label value, in one pass over the label (a case's classes share it).
pub fn class_voxels(label: &Volume) -> std::collections::BTreeMap<i32, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for n in 0..label.len() {
        let v = label.value(n);
        // Non-integer values cannot match a class; `label_values` has rejected them.
        if v.fract() == 0.0 && v.abs() <= f64::from(i32::MAX) {
            *counts.entry(v as i32).or_default() += 1;
        }
    }
    counts
}

/// One structure of a labelled case, for the click protocol: the label's class
/// `value`, its crop as the ingest makes it, the crop's mask and the source truth.
pub struct Structure<'a> {
    /// The crop about the label's bounding box.
    pub input: CropInput,
    /// The crop's mask (0/1), C order.
    pub mask: Vec<f32>,
    label: &'a Volume,
    value: f64,
    truth_total: usize,
}

impl<'a> Structure<'a> {
    /// Class `value` of `label` (on the image's grid; `canonical` is its 1.5 mm RAS+
    /// form, `voxels` its source voxels of the class, from [`class_voxels`]). `None`
    /// when the class vanishes at 1.5 mm (smaller than a voxel there).
    pub fn new(
        image: &PreparedImage,
        label: &'a Volume,
        canonical: &Canonical<i32>,
        value: i32,
        voxels: usize,
    ) -> Result<Option<Structure<'a>>> {
        let Some((lo, hi)) = geometry::bbox(canonical, |v| v == value) else { return Ok(None) };
        let input = image.crop_about(lo, hi)?;
        let mask = geometry::crop(canonical, input.begin, s3_shards::SIDE, 0.0f32, |v| f32::from(u8::from(v == value)));
        Ok(Some(Structure { input, mask, label, value: f64::from(value), truth_total: voxels }))
    }

    /// Dice on the whole source volume of a crop prediction against this class.
    pub fn source_dice(&self, logits: &[f32]) -> f64 {
        self.input.source_dice(logits, |n| self.label.value(n) == self.value, self.truth_total)
    }

    /// Source voxels of this class.
    pub fn voxels(&self) -> usize {
        self.truth_total
    }

    /// The click protocol (first click uniform in the mask, later ones in the error
    /// region, every click so far shown): the source Dice after each of `clicks`
    /// passes, and the final 128³ logits.
    pub fn run_clicks(
        &self,
        model: &Sam,
        cfg: &SamConfig,
        id: &str,
        seed: u64,
        clicks: usize,
        device: &Device,
    ) -> (Vec<f64>, Vec<f32>) {
        let emb = self.input.embed(model, cfg, device);
        let mut loop_ = ClickLoop::new(&[id], seed, cfg, ClickMemory::All, device);
        let mut dice = Vec::with_capacity(clicks);
        for _ in 0..clicks {
            let low = loop_.pass(model, emb.clone(), &[self.mask.as_slice()], true, device);
            loop_.predict_from_low(&low);
            dice.push(self.source_dice(loop_.prediction(0)));
        }
        (dice, loop_.prediction(0).to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clicks_parse_with_and_without_a_label() {
        let c: SourceClick = "10,20,30".parse().unwrap();
        assert_eq!(c, SourceClick { at: [10.0, 20.0, 30.0], positive: true });
        let c: SourceClick = "1, 2,3:0".parse().unwrap();
        assert!(!c.positive && c.at == [1.0, 2.0, 3.0]);
        for bad in ["1,2", "1,2,3:2", "a,b,c", "1,2,-3"] {
            assert!(bad.parse::<SourceClick>().is_err(), "{bad}");
        }
    }
}
