//! The Arrow schema of a shard (DESIGN §5) and conversion between samples and record batches.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use arrow::array::{
    Array, ArrayRef, BinaryArray, FixedSizeListArray, Float32Array, Float64Array, Int32Array, Int64Array, RecordBatch,
    StringArray, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use object_store::path::Path;
use serde::Serialize;

use crate::error::{Result, ShardError};
use crate::sample::{IMAGE_BYTES, MASK_BYTES, Sample, SampleMeta, Split, image_from_le_bytes, image_le_bytes};

/// Version of the shard layout, stored in every file's metadata under [`FORMAT_VERSION_KEY`].
/// Version 2 added the `channel` column; version-1 shards still read (channel "").
pub const FORMAT_VERSION: u32 = 2;
/// The oldest layout this build reads.
pub const OLDEST_FORMAT_VERSION: u32 = 1;
/// Parquet/Arrow metadata key holding [`FORMAT_VERSION`].
pub const FORMAT_VERSION_KEY: &str = "sam3d.format_version";

/// Column names, in schema order.
pub mod col {
    #![allow(missing_docs)]
    pub const SAMPLE_ID: &str = "sample_id";
    pub const DATASET: &str = "dataset";
    pub const TASK: &str = "task";
    pub const CASE_ID: &str = "case_id";
    pub const LABEL_VALUE: &str = "label_value";
    pub const LABEL_NAME: &str = "label_name";
    pub const CATEGORY: &str = "category";
    pub const MODALITY: &str = "modality";
    pub const CHANNEL: &str = "channel";
    pub const SPLIT: &str = "split";
    pub const IMAGE: &str = "image";
    pub const IMAGE_SCALE: &str = "image_scale";
    pub const IMAGE_OFFSET: &str = "image_offset";
    pub const MASK: &str = "mask";
    pub const AFFINE: &str = "affine";
    pub const SOURCE_SHAPE: &str = "source_shape";
    pub const SOURCE_AFFINE: &str = "source_affine";
    pub const FG_VOXELS: &str = "fg_voxels";
    pub const CHECKSUM: &str = "checksum";
}

fn fixed_list(item: DataType, n: i32) -> DataType {
    DataType::FixedSizeList(Arc::new(Field::new("item", item, false)), n)
}

/// The shard schema. Every column is non-null.
pub fn shard_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            use DataType::*;
            let f = |name: &str, dt: DataType| Field::new(name, dt, false);
            let fields = vec![
                f(col::SAMPLE_ID, Utf8),
                f(col::DATASET, Utf8),
                f(col::TASK, Utf8),
                f(col::CASE_ID, Utf8),
                f(col::LABEL_VALUE, Int32),
                f(col::LABEL_NAME, Utf8),
                f(col::CATEGORY, Utf8),
                f(col::MODALITY, Utf8),
                f(col::CHANNEL, Utf8),
                f(col::SPLIT, Utf8),
                f(col::IMAGE, Binary),
                f(col::IMAGE_SCALE, Float32),
                f(col::IMAGE_OFFSET, Float32),
                f(col::MASK, Binary),
                f(col::AFFINE, fixed_list(Float64, 16)),
                f(col::SOURCE_SHAPE, fixed_list(Int32, 3)),
                f(col::SOURCE_AFFINE, fixed_list(Float64, 16)),
                f(col::FG_VOXELS, Int64),
                f(col::CHECKSUM, UInt64),
            ];
            let meta = HashMap::from([(FORMAT_VERSION_KEY.to_string(), FORMAT_VERSION.to_string())]);
            Arc::new(Schema::new_with_metadata(fields, meta))
        })
        .clone()
}

fn f64_list(rows: impl Iterator<Item = f64>, n: i32) -> ArrayRef {
    let values = Arc::new(Float64Array::from_iter_values(rows));
    Arc::new(FixedSizeListArray::new(Arc::new(Field::new("item", DataType::Float64, false)), n, values, None))
}

/// Encodes samples as one record batch of [`shard_schema`].
pub fn to_record_batch(samples: &[Sample]) -> Result<RecordBatch> {
    let strs = |f: fn(&Sample) -> &str| -> ArrayRef { Arc::new(StringArray::from_iter_values(samples.iter().map(f))) };
    let ids: Vec<String> = samples.iter().map(Sample::sample_id).collect();
    let images: Vec<Vec<u8>> = samples.iter().map(|s| image_le_bytes(&s.image)).collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(ids.iter())),
        strs(|s| &s.meta.dataset),
        strs(|s| &s.meta.task),
        strs(|s| &s.meta.case_id),
        Arc::new(Int32Array::from_iter_values(samples.iter().map(|s| s.meta.label_value))),
        strs(|s| &s.meta.label_name),
        strs(|s| &s.meta.category),
        strs(|s| &s.meta.modality),
        strs(|s| &s.meta.channel),
        strs(|s| s.meta.split.as_str()),
        Arc::new(BinaryArray::from_iter_values(images.iter())),
        Arc::new(Float32Array::from_iter_values(samples.iter().map(|s| s.image_scale))),
        Arc::new(Float32Array::from_iter_values(samples.iter().map(|s| s.image_offset))),
        Arc::new(BinaryArray::from_iter_values(samples.iter().map(|s| &s.mask))),
        f64_list(samples.iter().flat_map(|s| s.meta.affine), 16),
        Arc::new(FixedSizeListArray::new(
            Arc::new(Field::new("item", DataType::Int32, false)),
            3,
            Arc::new(Int32Array::from_iter_values(samples.iter().flat_map(|s| s.meta.source_shape))),
            None,
        )),
        f64_list(samples.iter().flat_map(|s| s.meta.source_affine), 16),
        Arc::new(Int64Array::from_iter_values(samples.iter().map(|s| s.fg_voxels))),
        Arc::new(UInt64Array::from_iter_values(samples.iter().map(|s| s.checksum))),
    ];
    RecordBatch::try_new(shard_schema(), columns).map_err(|e| ShardError::arrow("building a shard batch", e))
}

/// Everything about a sample except its voxels: what `s3-shards cat` prints and
/// what can be read without fetching the blobs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SampleHeader {
    /// `dataset/task/case/label`
    pub sample_id: String,
    /// Descriptive fields.
    #[serde(flatten)]
    pub meta: SampleMeta,
    /// Dequantisation scale.
    pub image_scale: f32,
    /// Dequantisation offset.
    pub image_offset: f32,
    /// Foreground voxels in the mask.
    pub fg_voxels: i64,
    /// Stored xxh3-64 of image ‖ mask.
    pub checksum: u64,
}

/// Typed access to the columns of a batch, with errors naming the file.
struct Columns<'a> {
    batch: &'a RecordBatch,
    path: &'a Path,
}

impl<'a> Columns<'a> {
    fn get<T: Array + 'static>(&self, name: &str) -> Result<&'a T> {
        let array = self
            .batch
            .column_by_name(name)
            .ok_or_else(|| ShardError::Schema { path: self.path.clone(), reason: format!("missing column {name}") })?;
        array.as_any().downcast_ref::<T>().ok_or_else(|| ShardError::Schema {
            path: self.path.clone(),
            reason: format!("column {name} has type {}", array.data_type()),
        })
    }
    fn fixed<const N: usize, T: Array + 'static>(&self, name: &str) -> Result<&'a T> {
        let list: &FixedSizeListArray = self.get(name)?;
        if list.value_length() as usize != N {
            return Err(ShardError::Schema {
                path: self.path.clone(),
                reason: format!("column {name} has {} items per row, expected {N}", list.value_length()),
            });
        }
        list.values().as_any().downcast_ref::<T>().ok_or_else(|| ShardError::Schema {
            path: self.path.clone(),
            reason: format!("column {name} items have type {}", list.values().data_type()),
        })
    }
}

/// Decodes the non-blob columns of a batch (works on projections without `image`/`mask`).
pub fn headers_from_batch(batch: &RecordBatch, path: &Path) -> Result<Vec<SampleHeader>> {
    let c = Columns { batch, path };
    let sample_id: &StringArray = c.get(col::SAMPLE_ID)?;
    let dataset: &StringArray = c.get(col::DATASET)?;
    let task: &StringArray = c.get(col::TASK)?;
    let case_id: &StringArray = c.get(col::CASE_ID)?;
    let label_value: &Int32Array = c.get(col::LABEL_VALUE)?;
    let label_name: &StringArray = c.get(col::LABEL_NAME)?;
    let category: &StringArray = c.get(col::CATEGORY)?;
    let modality: &StringArray = c.get(col::MODALITY)?;
    // Version-1 shards have no channel column: every sample there has one channel.
    let channel: Option<&StringArray> =
        if batch.column_by_name(col::CHANNEL).is_some() { Some(c.get(col::CHANNEL)?) } else { None };
    let split: &StringArray = c.get(col::SPLIT)?;
    let scale: &Float32Array = c.get(col::IMAGE_SCALE)?;
    let offset: &Float32Array = c.get(col::IMAGE_OFFSET)?;
    let affine: &Float64Array = c.fixed::<16, _>(col::AFFINE)?;
    let source_shape: &Int32Array = c.fixed::<3, _>(col::SOURCE_SHAPE)?;
    let source_affine: &Float64Array = c.fixed::<16, _>(col::SOURCE_AFFINE)?;
    let fg: &Int64Array = c.get(col::FG_VOXELS)?;
    let checksum: &UInt64Array = c.get(col::CHECKSUM)?;
    (0..batch.num_rows())
        .map(|r| {
            let split = Split::parse(split.value(r)).ok_or_else(|| ShardError::InvalidSample {
                sample_id: sample_id.value(r).to_string(),
                reason: format!("split {:?} is neither train nor val", split.value(r)),
            })?;
            let arr16 = |a: &Float64Array| -> [f64; 16] { std::array::from_fn(|i| a.value(r * 16 + i)) };
            Ok(SampleHeader {
                sample_id: sample_id.value(r).to_string(),
                meta: SampleMeta {
                    dataset: dataset.value(r).to_string(),
                    task: task.value(r).to_string(),
                    case_id: case_id.value(r).to_string(),
                    label_value: label_value.value(r),
                    label_name: label_name.value(r).to_string(),
                    category: category.value(r).to_string(),
                    modality: modality.value(r).to_string(),
                    channel: channel.map_or_else(String::new, |c| c.value(r).to_string()),
                    split,
                    affine: arr16(affine),
                    source_shape: std::array::from_fn(|i| source_shape.value(r * 3 + i)),
                    source_affine: arr16(source_affine),
                },
                image_scale: scale.value(r),
                image_offset: offset.value(r),
                fg_voxels: fg.value(r),
                checksum: checksum.value(r),
            })
        })
        .collect()
}

/// Decodes full samples from a batch of [`shard_schema`]. Checksums are not verified
/// here (see [`Sample::computed_checksum`]); blob lengths are.
pub fn samples_from_batch(batch: &RecordBatch, path: &Path) -> Result<Vec<Sample>> {
    let headers = headers_from_batch(batch, path)?;
    let c = Columns { batch, path };
    let image: &BinaryArray = c.get(col::IMAGE)?;
    let mask: &BinaryArray = c.get(col::MASK)?;
    headers
        .into_iter()
        .enumerate()
        .map(|(r, h)| {
            let (img, m) = (image.value(r), mask.value(r));
            if img.len() != IMAGE_BYTES || m.len() != MASK_BYTES {
                return Err(ShardError::InvalidSample {
                    sample_id: h.sample_id,
                    reason: format!(
                        "image is {} bytes and mask {} bytes, expected {IMAGE_BYTES} and {MASK_BYTES}",
                        img.len(),
                        m.len()
                    ),
                });
            }
            Ok(Sample {
                meta: h.meta,
                image: image_from_le_bytes(img),
                image_scale: h.image_scale,
                image_offset: h.image_offset,
                mask: m.to_vec(),
                fg_voxels: h.fg_voxels,
                checksum: h.checksum,
            })
        })
        .collect()
}
