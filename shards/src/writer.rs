//! Writing samples into zstd Parquet shards on a store.
//!
//! Each shard is streamed to the store through `object_store`'s buffered writer: a
//! file under the upload buffer size is one PUT, a larger one a multipart upload.
//! Both become visible under their final key only when complete (S3 publishes a
//! multipart object at `CompleteMultipartUpload`; the local store renames a staged
//! file; the memory store inserts whole), so a reader never sees a partial shard.
//! A failed upload is aborted so no parts are left behind.

use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use object_store::ObjectStore;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use parquet::arrow::AsyncArrowWriter;
use parquet::arrow::async_writer::AsyncFileWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use xxhash_rust::xxh3::Xxh3Default;

use crate::error::{Result, ShardError};
use crate::hex_u64;
use crate::sample::Sample;
use crate::schema::{self, col};

/// How shards are written.
#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// zstd level (1–22); 3 balances speed and size for CT crops.
    pub zstd_level: i32,
    /// Rows per row group: the unit a reader fetches with one range request.
    pub row_group_rows: usize,
    /// Start a new file once this many bytes are written.
    pub target_file_bytes: u64,
    /// Bytes buffered before an upload turns multipart; also the part size.
    pub upload_part_bytes: usize,
    /// Number of the first file (`part-NNNNN.parquet`).
    pub first_part: u32,
    /// Step between file numbers: worker `i` of `n` writes parts `i, i+n, i+2n, ...`
    /// (first_part `i`, stride `n`) so workers never collide.
    pub part_stride: u32,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            zstd_level: 3,
            row_group_rows: 16,
            target_file_bytes: 256 << 20,
            upload_part_bytes: 16 << 20,
            first_part: 0,
            part_stride: 1,
        }
    }
}

/// A finished shard, as recorded in the index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMeta {
    /// Key relative to the store root, e.g. `shards/AMOS22/default/part-00000.parquet`.
    pub path: String,
    /// Dataset of every row.
    pub dataset: String,
    /// Task of every row.
    pub task: String,
    /// Number of samples.
    pub rows: u64,
    /// File size.
    pub bytes: u64,
    /// xxh3-64 of the whole file, as 16 hex digits.
    #[serde(with = "hex_u64")]
    pub xxh3: u64,
}

/// Where the shards of a dataset task live: `shards/<dataset>/<task>/`.
pub fn shard_dir(dataset: &str, task: &str) -> Path {
    Path::from("shards").join(dataset).join(task)
}

/// The key of file number `part` of a task.
pub fn shard_path(dataset: &str, task: &str, part: u32) -> Path {
    shard_dir(dataset, task).join(format!("part-{part:05}.parquet"))
}

/// The Parquet writer properties of a shard.
pub fn writer_properties(opts: &WriterOptions) -> Result<WriterProperties> {
    let level = ZstdLevel::try_new(opts.zstd_level).map_err(|e| ShardError::parquet(&Path::from("-"), e))?;
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_max_row_group_row_count(Some(opts.row_group_rows.max(1)))
        .set_created_by(format!("s3-shards {}", env!("CARGO_PKG_VERSION")));
    // Blobs are unique per row: dictionaries and min/max statistics only cost time and bytes.
    for blob in [col::IMAGE, col::MASK] {
        b = b
            .set_column_dictionary_enabled(ColumnPath::from(blob), false)
            .set_column_statistics_enabled(ColumnPath::from(blob), EnabledStatistics::None);
    }
    Ok(b.build())
}

/// Streams bytes to a `BufWriter` upload while hashing them.
struct HashingUpload {
    inner: BufWriter,
    hasher: Xxh3Default,
    bytes: u64,
    /// Shutdown began: the upload then cleans up after itself on failure, and
    /// `BufWriter::abort` would panic ("Already shut down").
    completing: bool,
}

impl AsyncFileWriter for HashingUpload {
    fn write(&mut self, bs: Bytes) -> BoxFuture<'_, parquet::errors::Result<()>> {
        self.hasher.update(&bs);
        self.bytes += bs.len() as u64;
        async move { self.inner.put(bs).await.map_err(|e| ParquetError::External(Box::new(e))) }.boxed()
    }
    fn complete(&mut self) -> BoxFuture<'_, parquet::errors::Result<()>> {
        self.completing = true;
        async move { self.inner.shutdown().await.map_err(|e| ParquetError::External(Box::new(e))) }.boxed()
    }
}

struct OpenShard {
    path: Path,
    writer: AsyncArrowWriter<HashingUpload>,
    rows: u64,
}

/// Accumulates the samples of one dataset task and writes them as a sequence of shards.
///
/// ```no_run
/// # async fn f(store: std::sync::Arc<dyn object_store::ObjectStore>, samples: Vec<s3_shards::Sample>) -> s3_shards::Result<()> {
/// let mut w = s3_shards::ShardWriter::new(store, "AMOS22", "default", Default::default())?;
/// for s in samples { w.push(s).await?; }
/// let shards = w.finish().await?;
/// # Ok(()) }
/// ```
pub struct ShardWriter {
    store: Arc<dyn ObjectStore>,
    dataset: String,
    task: String,
    opts: WriterOptions,
    props: WriterProperties,
    next_part: u32,
    pending: Vec<Sample>,
    current: Option<OpenShard>,
}

impl ShardWriter {
    /// A writer for `shards/<dataset>/<task>/` in `store`.
    pub fn new(store: Arc<dyn ObjectStore>, dataset: &str, task: &str, opts: WriterOptions) -> Result<Self> {
        let props = writer_properties(&opts)?;
        Ok(ShardWriter {
            store,
            dataset: dataset.into(),
            task: task.into(),
            next_part: opts.first_part,
            opts,
            props,
            pending: Vec::new(),
            current: None,
        })
    }

    /// Adds a sample. Returns the metadata of a shard if this sample completed one.
    ///
    /// The sample must belong to this writer's dataset/task and carry a correct checksum:
    /// a wrong checksum here would make every later read fail, so it is refused now.
    pub async fn push(&mut self, sample: Sample) -> Result<Option<ShardMeta>> {
        self.push_inner(sample).await?;
        self.roll_if_full().await
    }

    /// Adds all samples of one case; a file is only closed after the last of them, so a
    /// case never straddles two files (what lets ingest commit whole cases per shard).
    pub async fn push_case(&mut self, samples: Vec<Sample>) -> Result<Option<ShardMeta>> {
        for s in samples {
            self.push_inner(s).await?;
        }
        self.roll_if_full().await
    }

    async fn push_inner(&mut self, sample: Sample) -> Result<()> {
        sample.validate()?;
        if sample.meta.dataset != self.dataset || sample.meta.task != self.task {
            return Err(ShardError::InvalidSample {
                sample_id: sample.sample_id(),
                reason: format!("written to the shards of {}/{}", self.dataset, self.task),
            });
        }
        let computed = sample.computed_checksum();
        if computed != sample.checksum {
            return Err(ShardError::InvalidSample {
                sample_id: sample.sample_id(),
                reason: format!("checksum {:016x} does not match its data ({computed:016x})", sample.checksum),
            });
        }
        self.pending.push(sample);
        if self.pending.len() >= self.opts.row_group_rows.max(1) {
            self.flush_group().await?;
        }
        Ok(())
    }

    /// Closes the open file if it has reached the target size.
    async fn roll_if_full(&mut self) -> Result<Option<ShardMeta>> {
        let written = self.current.as_ref().map_or(0, |s| s.writer.bytes_written() as u64);
        if written >= self.opts.target_file_bytes {
            self.flush_group().await?;
            return self.close_current().await;
        }
        Ok(None)
    }

    /// Writes pending samples as one row group.
    async fn flush_group(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = schema::to_record_batch(&self.pending)?;
        let rows = self.pending.len() as u64;
        self.pending.clear();
        if self.current.is_none() {
            self.current = Some(self.open()?);
        }
        let shard = self.current.as_mut().expect("opened above");
        let res = async {
            shard.writer.write(&batch).await?;
            shard.writer.flush().await
        }
        .await;
        if let Err(e) = res {
            let path = shard.path.clone();
            self.abort().await;
            return Err(ShardError::parquet(&path, e));
        }
        shard.rows += rows;
        Ok(())
    }

    fn open(&mut self) -> Result<OpenShard> {
        let path = shard_path(&self.dataset, &self.task, self.next_part);
        self.next_part += self.opts.part_stride.max(1);
        let upload = HashingUpload {
            inner: BufWriter::with_capacity(self.store.clone(), path.clone(), self.opts.upload_part_bytes.max(5 << 20)),
            hasher: Xxh3Default::new(),
            bytes: 0,
            completing: false,
        };
        let writer = AsyncArrowWriter::try_new(upload, schema::shard_schema(), Some(self.props.clone()))
            .map_err(|e| ShardError::parquet(&path, e))?;
        Ok(OpenShard { path, writer, rows: 0 })
    }

    async fn close_current(&mut self) -> Result<Option<ShardMeta>> {
        let Some(mut shard) = self.current.take() else {
            return Ok(None);
        };
        if let Err(e) = shard.writer.finish().await {
            let mut upload = shard.writer.into_inner();
            if !upload.completing {
                let _ = upload.inner.abort().await;
            }
            return Err(ShardError::parquet(&shard.path, e));
        }
        let upload = shard.writer.into_inner();
        tracing::debug!(path = %shard.path, rows = shard.rows, bytes = upload.bytes, "shard written");
        Ok(Some(ShardMeta {
            path: shard.path.to_string(),
            dataset: self.dataset.clone(),
            task: self.task.clone(),
            rows: shard.rows,
            bytes: upload.bytes,
            xxh3: upload.hasher.digest(),
        }))
    }

    /// Writes everything still buffered and closes the open file.
    /// Returns the shard it closed, if any.
    pub async fn finish(mut self) -> Result<Option<ShardMeta>> {
        self.flush_group().await?;
        self.close_current().await
    }

    /// Abandons the open file: its upload is aborted and nothing appears under its key.
    pub async fn abort(&mut self) {
        self.pending.clear();
        if let Some(shard) = self.current.take() {
            let _ = shard.writer.into_inner().inner.abort().await;
        }
    }

    /// Number of the next file this writer would open.
    pub fn next_part(&self) -> u32 {
        self.next_part
    }
}

/// Writes `samples` of one dataset task and returns every shard written.
pub async fn write_samples(
    store: Arc<dyn ObjectStore>,
    dataset: &str,
    task: &str,
    samples: impl IntoIterator<Item = Sample>,
    opts: WriterOptions,
) -> Result<Vec<ShardMeta>> {
    let mut w = ShardWriter::new(store, dataset, task, opts)?;
    let mut out = Vec::new();
    for s in samples {
        out.extend(w.push(s).await?);
    }
    out.extend(w.finish().await?);
    Ok(out)
}
