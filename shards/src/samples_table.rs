//! `samples.parquet`: one row per sample without the voxel blobs — what a sampler
//! plans epochs from without opening any shard.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::error::{Result, ShardError};
use crate::index::FileRef;
use crate::json::get_bytes;
use crate::reader::ShardReader;
use crate::sample::Split;
use crate::writer::ShardMeta;

/// Key of the sample table at the store root.
pub const SAMPLES_KEY: &str = "samples.parquet";

/// One sample's entry in the table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleRow {
    /// `dataset/task/case/label`
    pub sample_id: String,
    /// Shard key.
    pub shard: String,
    /// Row within the shard.
    pub row: i64,
    /// Dataset.
    pub dataset: String,
    /// Task.
    pub task: String,
    /// Case.
    pub case_id: String,
    /// Label value.
    pub label: i32,
    /// Label name.
    pub label_name: String,
    /// Table-2 category.
    pub category: String,
    /// Train or val.
    pub split: Split,
    /// Foreground voxels.
    pub fg_voxels: i64,
}

/// The table's schema.
pub fn samples_schema() -> SchemaRef {
    use DataType::*;
    let f = |n: &str, t: DataType| Field::new(n, t, false);
    Arc::new(Schema::new(vec![
        f("sample_id", Utf8),
        f("shard", Utf8),
        f("row", Int64),
        f("dataset", Utf8),
        f("task", Utf8),
        f("case_id", Utf8),
        f("label", Int32),
        f("label_name", Utf8),
        f("category", Utf8),
        f("split", Utf8),
        f("fg_voxels", Int64),
    ]))
}

/// Builds the rows of `shards` by reading each shard's non-blob columns.
pub async fn rows_from_shards(store: &Arc<dyn ObjectStore>, shards: &[ShardMeta]) -> Result<Vec<SampleRow>> {
    let mut rows = Vec::new();
    for meta in shards {
        let reader = ShardReader::open(store.clone(), &Path::from(meta.path.as_str())).await?;
        for (i, h) in reader.headers().await?.into_iter().enumerate() {
            rows.push(SampleRow {
                sample_id: h.sample_id,
                shard: meta.path.clone(),
                row: i as i64,
                dataset: h.meta.dataset,
                task: h.meta.task,
                case_id: h.meta.case_id,
                label: h.meta.label_value,
                label_name: h.meta.label_name,
                category: h.meta.category,
                split: h.meta.split,
                fg_voxels: h.fg_voxels,
            });
        }
    }
    Ok(rows)
}

/// Encodes `rows` as Parquet (zstd) in memory.
pub fn encode(rows: &[SampleRow]) -> Result<Vec<u8>> {
    let s = |f: fn(&SampleRow) -> &str| -> ArrayRef { Arc::new(StringArray::from_iter_values(rows.iter().map(f))) };
    let cols: Vec<ArrayRef> = vec![
        s(|r| &r.sample_id),
        s(|r| &r.shard),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.row))),
        s(|r| &r.dataset),
        s(|r| &r.task),
        s(|r| &r.case_id),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.label))),
        s(|r| &r.label_name),
        s(|r| &r.category),
        s(|r| r.split.as_str()),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.fg_voxels))),
    ];
    let batch =
        RecordBatch::try_new(samples_schema(), cols).map_err(|e| ShardError::arrow("building samples table", e))?;
    let props = WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::default())).build();
    let path = Path::from(SAMPLES_KEY);
    let mut buf = Vec::new();
    let mut w =
        ArrowWriter::try_new(&mut buf, samples_schema(), Some(props)).map_err(|e| ShardError::parquet(&path, e))?;
    w.write(&batch).map_err(|e| ShardError::parquet(&path, e))?;
    w.close().map_err(|e| ShardError::parquet(&path, e))?;
    Ok(buf)
}

/// Writes `samples.parquet` (one PUT) and returns its reference for the index.
pub async fn write(store: &dyn ObjectStore, rows: &[SampleRow]) -> Result<FileRef> {
    let bytes = encode(rows)?;
    let path = Path::from(SAMPLES_KEY);
    let r =
        FileRef { path: SAMPLES_KEY.into(), rows: rows.len() as u64, bytes: bytes.len() as u64, xxh3: xxh3_64(&bytes) };
    store.put(&path, PutPayload::from(bytes)).await.map_err(|e| ShardError::store("put", &path, e))?;
    Ok(r)
}

/// Reads `samples.parquet`.
pub async fn read(store: &dyn ObjectStore) -> Result<Vec<SampleRow>> {
    let path = Path::from(SAMPLES_KEY);
    decode(get_bytes(store, &path).await?, &path)
}

/// Decodes the table from its bytes.
pub fn decode(bytes: Bytes, path: &Path) -> Result<Vec<SampleRow>> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(|e| ShardError::parquet(path, e))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| ShardError::arrow(format!("reading {path}"), e))?;
        let get = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| ShardError::Schema { path: path.clone(), reason: format!("missing column {name}") })
        };
        fn typed<'a, T: Array + 'static>(a: &'a ArrayRef, path: &Path, name: &str) -> Result<&'a T> {
            a.as_any().downcast_ref::<T>().ok_or_else(|| ShardError::Schema {
                path: path.clone(),
                reason: format!("column {name} has type {}", a.data_type()),
            })
        }
        let (c_id, c_shard, c_row, c_ds, c_task, c_case, c_label, c_name, c_cat, c_split, c_fg) = (
            get("sample_id")?,
            get("shard")?,
            get("row")?,
            get("dataset")?,
            get("task")?,
            get("case_id")?,
            get("label")?,
            get("label_name")?,
            get("category")?,
            get("split")?,
            get("fg_voxels")?,
        );
        let str_col = |a, n| typed::<StringArray>(a, path, n);
        let (id, shard, ds, task, case, name, cat, split) = (
            str_col(c_id, "sample_id")?,
            str_col(c_shard, "shard")?,
            str_col(c_ds, "dataset")?,
            str_col(c_task, "task")?,
            str_col(c_case, "case_id")?,
            str_col(c_name, "label_name")?,
            str_col(c_cat, "category")?,
            str_col(c_split, "split")?,
        );
        let row = typed::<Int64Array>(c_row, path, "row")?;
        let label = typed::<Int32Array>(c_label, path, "label")?;
        let fg = typed::<Int64Array>(c_fg, path, "fg_voxels")?;
        for r in 0..batch.num_rows() {
            out.push(SampleRow {
                sample_id: id.value(r).into(),
                shard: shard.value(r).into(),
                row: row.value(r),
                dataset: ds.value(r).into(),
                task: task.value(r).into(),
                case_id: case.value(r).into(),
                label: label.value(r),
                label_name: name.value(r).into(),
                category: cat.value(r).into(),
                split: Split::parse(split.value(r)).ok_or_else(|| ShardError::Schema {
                    path: path.clone(),
                    reason: format!("row {r}: split {:?}", split.value(r)),
                })?,
                fg_voxels: fg.value(r),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let rows: Vec<SampleRow> = (0..40)
            .map(|i| SampleRow {
                sample_id: format!("D/t/c{i}/{}", i % 3 + 1),
                shard: format!("shards/D/t/part-{:05}.parquet", i / 16),
                row: i % 16,
                dataset: "D".into(),
                task: "t".into(),
                case_id: format!("c{i}"),
                label: (i % 3 + 1) as i32,
                label_name: "liver".into(),
                category: "abdomen&thorax".into(),
                split: if i % 10 == 0 { Split::Val } else { Split::Train },
                fg_voxels: i * 1000,
            })
            .collect();
        let bytes = encode(&rows).unwrap();
        assert_eq!(decode(Bytes::from(bytes), &Path::from(SAMPLES_KEY)).unwrap(), rows);
    }
}
