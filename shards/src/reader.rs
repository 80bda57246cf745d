//! Reading shards through Parquet's async reader over `object_store` range requests.
//!
//! Opening a shard fetches only its footer; each row group is then one or a few
//! range requests, so a trainer can pull 16 samples at a time from S3.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use xxhash_rust::xxh3::Xxh3Default;

use crate::error::{Result, ShardError};
use crate::sample::Sample;
use crate::schema::{self, FORMAT_VERSION, FORMAT_VERSION_KEY, SampleHeader, col};

/// `AsyncFileReader` over an object in a store, with its size known up front
/// (one HEAD instead of a suffix request, which some S3 servers lack).
#[derive(Clone)]
struct StoreFile {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
}

fn external(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for StoreFile {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move { self.store.get_range(&self.path, range).await.map_err(external) }.boxed()
    }
    fn get_byte_ranges(&mut self, ranges: Vec<Range<u64>>) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move { self.store.get_ranges(&self.path, &ranges).await.map_err(external) }.boxed()
    }
    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let md = ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .load_and_finish(&mut *self, size)
                .await?;
            Ok(Arc::new(md))
        }
        .boxed()
    }
}

/// An open shard: footer read, row groups fetched on demand.
pub struct ShardReader {
    file: StoreFile,
    meta: ArrowReaderMetadata,
}

impl ShardReader {
    /// Opens `path` in `store`, reading its footer and checking it is a shard of this format.
    pub async fn open(store: Arc<dyn ObjectStore>, path: &Path) -> Result<ShardReader> {
        let head = store.head(path).await.map_err(|e| ShardError::store("head", path, e))?;
        let mut file = StoreFile { store, path: path.clone(), size: head.size };
        let meta = ArrowReaderMetadata::load_async(&mut file, ArrowReaderOptions::new())
            .await
            .map_err(|e| ShardError::parquet(path, e))?;
        let version = meta.schema().metadata().get(FORMAT_VERSION_KEY).cloned().unwrap_or_default();
        if !version.parse::<u32>().is_ok_and(|v| (schema::OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&v)) {
            return Err(ShardError::Schema {
                path: path.clone(),
                reason: format!(
                    "{FORMAT_VERSION_KEY} is {version:?}, this build reads {} to {FORMAT_VERSION}",
                    schema::OLDEST_FORMAT_VERSION
                ),
            });
        }
        Ok(ShardReader { file, meta })
    }

    /// The shard's key.
    pub fn path(&self) -> &Path {
        &self.file.path
    }
    /// File size in bytes.
    pub fn size(&self) -> u64 {
        self.file.size
    }
    /// Total samples.
    pub fn num_rows(&self) -> u64 {
        self.meta.metadata().file_metadata().num_rows() as u64
    }
    /// Number of row groups.
    pub fn num_row_groups(&self) -> usize {
        self.meta.metadata().num_row_groups()
    }
    /// Rows in each row group, in order.
    pub fn row_group_rows(&self) -> Vec<u64> {
        self.meta.metadata().row_groups().iter().map(|g| g.num_rows() as u64).collect()
    }

    /// First row of each row group.
    fn locate(&self, row: u64) -> Option<(usize, usize)> {
        let mut start = 0;
        for (g, n) in self.row_group_rows().into_iter().enumerate() {
            if row < start + n {
                return Some((g, (row - start) as usize));
            }
            start += n;
        }
        None
    }

    async fn batches(
        &self,
        groups: Vec<usize>,
        projection: Option<ProjectionMask>,
    ) -> Result<Vec<arrow::array::RecordBatch>> {
        let mut b = ParquetRecordBatchStreamBuilder::new_with_metadata(self.file.clone(), self.meta.clone())
            .with_row_groups(groups)
            .with_batch_size(64);
        if let Some(p) = projection {
            b = b.with_projection(p);
        }
        let stream = b.build().map_err(|e| ShardError::parquet(self.path(), e))?;
        stream.try_collect().await.map_err(|e| ShardError::parquet(self.path(), e))
    }

    /// Decodes row group `group`, checking each sample's checksum separately: the outer
    /// error is a failure to read the group at all, an inner one a single bad sample.
    pub async fn read_row_group_each(&self, group: usize) -> Result<Vec<Result<Sample>>> {
        let first_row: u64 = self.row_group_rows()[..group.min(self.num_row_groups())].iter().sum();
        let mut out = Vec::new();
        for batch in self.batches(vec![group], None).await? {
            for s in schema::samples_from_batch(&batch, self.path())? {
                let row = (first_row + out.len() as u64) as usize;
                out.push(check(s, self.path(), row));
            }
        }
        Ok(out)
    }

    /// Decodes and verifies row group `group`; the first bad sample is the error.
    pub async fn read_row_group(&self, group: usize) -> Result<Vec<Sample>> {
        self.read_row_group_each(group).await?.into_iter().collect()
    }

    /// Decodes and verifies the whole shard.
    pub async fn read_all(&self) -> Result<Vec<Sample>> {
        let mut out = Vec::with_capacity(self.num_rows() as usize);
        for g in 0..self.num_row_groups() {
            out.extend(self.read_row_group(g).await?);
        }
        Ok(out)
    }

    /// Reads and verifies the sample at `row`, fetching only its row group.
    pub async fn read_row(&self, row: u64) -> Result<Sample> {
        let (group, offset) = self
            .locate(row)
            .ok_or_else(|| ShardError::NotFound(format!("row {row} in {} ({} rows)", self.path(), self.num_rows())))?;
        self.read_row_group_each(group).await?.into_iter().nth(offset).expect("row located in group")
    }

    /// Everything but the voxel blobs, for every row (blob columns are not fetched).
    pub async fn headers(&self) -> Result<Vec<SampleHeader>> {
        let descr = self.meta.metadata().file_metadata().schema_descr();
        let names = schema::shard_schema().fields().iter().map(|f| f.name().clone()).collect::<Vec<_>>();
        let keep = names.iter().map(String::as_str).filter(|n| *n != col::IMAGE && *n != col::MASK);
        let mask = ProjectionMask::columns(descr, keep);
        let mut out = Vec::new();
        for batch in self.batches((0..self.num_row_groups()).collect(), Some(mask)).await? {
            out.extend(schema::headers_from_batch(&batch, self.path())?);
        }
        Ok(out)
    }
}

fn check(s: Sample, shard: &Path, row: usize) -> Result<Sample> {
    let computed = s.computed_checksum();
    if computed != s.checksum {
        return Err(ShardError::ChecksumMismatch {
            sample_id: s.sample_id(),
            shard: shard.clone(),
            row,
            stored: s.checksum,
            computed,
        });
    }
    Ok(s)
}

/// Streams an object and returns its size and xxh3-64 (what the index records per shard).
pub async fn hash_object(store: &dyn ObjectStore, path: &Path) -> Result<(u64, u64)> {
    let mut stream = store.get(path).await.map_err(|e| ShardError::store("get", path, e))?.into_stream();
    let mut h = Xxh3Default::new();
    let mut n = 0u64;
    while let Some(chunk) = stream.try_next().await.map_err(|e| ShardError::store("get", path, e))? {
        h.update(&chunk);
        n += chunk.len() as u64;
    }
    Ok((n, h.digest()))
}
