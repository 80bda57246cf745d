//! One training sample: a 128³ crop of one label of one case.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{Xxh3Default, xxh3_64};

use crate::error::{Result, ShardError};
use crate::{mask, quantize};

/// Edge length of every stored crop.
pub const SIDE: usize = 128;
/// Voxels in one crop (128³).
pub const VOXELS: usize = SIDE * SIDE * SIDE;
/// Bytes of the `image` blob (little-endian int16).
pub const IMAGE_BYTES: usize = VOXELS * 2;
/// Bytes of the `mask` blob (one bit per voxel).
pub const MASK_BYTES: usize = VOXELS / 8;

/// Train/validation split of a case; all labels of a case share it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Training data.
    Train,
    /// Held-out validation data.
    Val,
    /// An evaluation set's case (a benchmarks catalogue): never trained on.
    Test,
}

impl Split {
    /// `train`, `val` or `test`, as stored in the `split` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
    /// Parses the `split` column.
    pub fn parse(s: &str) -> Option<Split> {
        match s {
            "train" => Some(Split::Train),
            "val" => Some(Split::Val),
            "test" => Some(Split::Test),
            _ => None,
        }
    }
    /// The split of a case: `xxh3_64("dataset/case") mod 100 < val_percent` is validation.
    /// Depending only on dataset and case keeps a case's labels together and makes
    /// the split stable across re-ingests and worker partitions.
    pub fn for_case(dataset: &str, case_id: &str, val_percent: u32) -> Split {
        if xxh3_64(format!("{dataset}/{case_id}").as_bytes()) % 100 < u64::from(val_percent) {
            Split::Val
        } else {
            Split::Train
        }
    }
}

/// Descriptive fields of a sample (everything but the voxel data).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleMeta {
    /// Dataset name from the catalogue.
    pub dataset: String,
    /// Task (sub-source) name, `default` when a dataset has one.
    pub task: String,
    /// Case identifier within the task.
    pub case_id: String,
    /// Label value in the source label map.
    pub label_value: i32,
    /// Label name.
    pub label_name: String,
    /// Table-2 category of the label.
    pub category: String,
    /// CT, MR, US or PET.
    pub modality: String,
    /// The image channel this sample was cut from (`FLAIR`, `t1ce`, ...); empty when
    /// the source image has one channel.
    #[serde(default)]
    pub channel: String,
    /// Train or val.
    pub split: Split,
    /// Row-major 4×4 affine of the crop (RAS+, 1.5 mm).
    pub affine: [f64; 16],
    /// Shape of the source volume before resampling.
    pub source_shape: [i32; 3],
    /// Row-major 4×4 affine of the source volume.
    pub source_affine: [f64; 16],
}

impl SampleMeta {
    /// `dataset/task/case/label`, or `dataset/task/case/channel/label` for a sample of
    /// one channel of a multi-channel image.
    pub fn sample_id(&self) -> String {
        channel_sample_id(&self.dataset, &self.task, &self.case_id, &self.channel, self.label_value)
    }
}

/// The id of a sample cut from `channel` (empty: a single-channel image).
pub fn channel_sample_id(dataset: &str, task: &str, case_id: &str, channel: &str, label_value: i32) -> String {
    if channel.is_empty() {
        sample_id(dataset, task, case_id, label_value)
    } else {
        format!("{dataset}/{task}/{case_id}/{channel}/{label_value}")
    }
}

/// `dataset/task/case/label`, the id of a sample.
pub fn sample_id(dataset: &str, task: &str, case_id: &str, label_value: i32) -> String {
    format!("{dataset}/{task}/{case_id}/{label_value}")
}

/// A stored sample: metadata, int16 image with its dequantisation, bit-packed mask.
///
/// Arrays are in C order of the RAS+ array `[i][j][k]` (k fastest).
#[derive(Clone, PartialEq)]
pub struct Sample {
    /// Descriptive fields.
    pub meta: SampleMeta,
    /// 128³ quantised intensities.
    pub image: Vec<i16>,
    /// value = q · scale + offset
    pub image_scale: f32,
    /// value = q · scale + offset
    pub image_offset: f32,
    /// 128³ bits, LSB first.
    pub mask: Vec<u8>,
    /// Number of mask voxels set.
    pub fg_voxels: i64,
    /// xxh3-64 of image bytes ‖ mask bytes.
    pub checksum: u64,
}

impl std::fmt::Debug for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sample")
            .field("sample_id", &self.meta.sample_id())
            .field("image_scale", &self.image_scale)
            .field("image_offset", &self.image_offset)
            .field("fg_voxels", &self.fg_voxels)
            .field("checksum", &format_args!("{:016x}", self.checksum))
            .finish_non_exhaustive()
    }
}

impl Sample {
    /// Builds a sample from float intensities and a boolean mask (both 128³, C order):
    /// quantises the image, packs the mask, counts foreground, computes the checksum.
    pub fn from_volumes(meta: SampleMeta, image: &[f32], mask: &[bool]) -> Result<Sample> {
        if mask.len() != VOXELS {
            return Err(ShardError::InvalidSample {
                sample_id: meta.sample_id(),
                reason: format!("mask has {} voxels, expected {VOXELS}", mask.len()),
            });
        }
        let q = quantize::quantize(image)?;
        let fg_voxels = mask.iter().filter(|&&m| m).count() as i64;
        let mask = mask::pack(mask);
        let checksum = checksum(&q.values, &mask);
        Ok(Sample { meta, image: q.values, image_scale: q.scale, image_offset: q.offset, mask, fg_voxels, checksum })
    }

    /// The sample id, `dataset/task/case/label`.
    pub fn sample_id(&self) -> String {
        self.meta.sample_id()
    }

    /// Intensities as f32 (`q · scale + offset`).
    pub fn image_f32(&self) -> Vec<f32> {
        quantize::dequantize(&self.image, self.image_scale, self.image_offset)
    }

    /// The mask as one bool per voxel.
    pub fn mask_bools(&self) -> Vec<bool> {
        mask::unpack(&self.mask, VOXELS)
    }

    /// Recomputes the checksum over the stored bytes.
    pub fn computed_checksum(&self) -> u64 {
        checksum(&self.image, &self.mask)
    }

    /// Checks blob sizes and that the stored checksum matches the data.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| ShardError::InvalidSample { sample_id: self.sample_id(), reason };
        if self.image.len() != VOXELS {
            return Err(bad(format!("image has {} voxels, expected {VOXELS}", self.image.len())));
        }
        if self.mask.len() != MASK_BYTES {
            return Err(bad(format!("mask has {} bytes, expected {MASK_BYTES}", self.mask.len())));
        }
        if !(self.image_scale.is_finite() && self.image_scale > 0.0 && self.image_offset.is_finite()) {
            return Err(bad(format!("bad dequantisation scale {} offset {}", self.image_scale, self.image_offset)));
        }
        Ok(())
    }
}

/// xxh3-64 of the image as little-endian int16 bytes followed by the packed mask bytes.
pub fn checksum(image: &[i16], mask: &[u8]) -> u64 {
    let mut h = Xxh3Default::new();
    // On little-endian machines the int16s in memory are the stored bytes: hash them
    // in place rather than through a 4 MiB copy per sample.
    if cfg!(target_endian = "little") {
        h.update(bytemuck::cast_slice(image));
    } else {
        h.update(&image_le_bytes(image));
    }
    h.update(mask);
    h.digest()
}

/// The image as its stored little-endian bytes.
pub fn image_le_bytes(image: &[i16]) -> Vec<u8> {
    image.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Decodes little-endian int16 bytes.
pub fn image_from_le_bytes(bytes: &[u8]) -> Vec<i16> {
    let whole = &bytes[..bytes.len() / 2 * 2];
    if cfg!(target_endian = "little") {
        // One copy (the bytes may not be 2-aligned, so no cast in place).
        bytemuck::pod_collect_to_vec(whole)
    } else {
        whole.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_per_case_and_roughly_proportional() {
        let val = (0..2000).filter(|i| Split::for_case("DS", &format!("case{i}"), 10) == Split::Val).count();
        assert!((120..=280).contains(&val), "{val} of 2000 in val at 10 %");
        assert_eq!(Split::for_case("DS", "c1", 0), Split::Train);
        assert_eq!(Split::for_case("DS", "c1", 100), Split::Val);
    }

    #[test]
    fn checksum_covers_image_then_mask() {
        let img = vec![1i16, -2, 300];
        let m = vec![0b1010_0001u8];
        let mut bytes = image_le_bytes(&img);
        bytes.extend_from_slice(&m);
        assert_eq!(checksum(&img, &m), xxh3_64(&bytes));
        assert_ne!(checksum(&img, &[0b1010_0000]), checksum(&img, &m));
    }

    #[test]
    fn le_bytes_round_trip() {
        let v = vec![i16::MIN, -1, 0, 1, i16::MAX];
        assert_eq!(image_from_le_bytes(&image_le_bytes(&v)), v);
        assert_eq!(image_le_bytes(&[0x0102]), vec![0x02, 0x01]);
    }
}
