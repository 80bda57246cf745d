//! The ingest journal: how a run resumes after a kill and how workers' outputs merge.
//!
//! Work is committed per shard. After a shard is complete on the store, one record
//! `_ingest/journal/<dataset>/<task>/w<I>of<N>-<seq>.json` names it and every case whose
//! samples it holds (a case never straddles two shards), plus the cases finished
//! without samples since the previous record (quarantined or skipped). A case is done
//! exactly when a record names it. A kill before the record is written loses only
//! uncommitted cases; they are redone and their shard number is reused (the
//! leftover file is overwritten or deleted), so nothing is duplicated.
//!
//! Before processing, each worker also stores the cases it listed as its share
//! (`_ingest/listed/<dataset>/<task>/w<I>of<N>.json`), so `merge` can tell a finished
//! store from one where a worker stopped early or never ran.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use s3_shards::labels::CaseFate;
use s3_shards::{ShardError, ShardMeta, json};
use serde::{Deserialize, Serialize};

use crate::catalog::{LabelInfo, Modality};
use crate::error::IngestError;

/// Root of the journal on the output store.
pub const JOURNAL_ROOT: &str = "_ingest/journal";
/// Root of the per-task descriptions (modality, label map) used by `merge`.
pub const TASKS_ROOT: &str = "_ingest/tasks";
/// Root of the per-worker case listings.
pub const LISTED_ROOT: &str = "_ingest/listed";

/// One sample's contribution to the label manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleNote {
    /// Label value.
    pub label: i32,
    /// Foreground voxels in the crop.
    pub fg_voxels: i64,
    /// Checksum (to compare runs).
    #[serde(with = "s3_shards::index::hex_u64")]
    pub checksum: u64,
    /// The image channel (empty for a single-channel image).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub channel: String,
}

/// A finished case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseRecord {
    /// Ingested, skipped or quarantined, with the reason.
    pub fate: CaseFate,
    /// Its samples.
    #[serde(default)]
    pub samples: Vec<SampleNote>,
}

/// One commit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JournalRecord {
    /// Dataset.
    pub dataset: String,
    /// Task.
    pub task: String,
    /// Worker index.
    pub worker: u32,
    /// Worker count.
    pub workers: u32,
    /// Sequence number of this worker's records for the task.
    pub seq: u32,
    /// The shard committed, if any.
    pub shard: Option<ShardMeta>,
    /// Cases committed, by id.
    pub cases: BTreeMap<String, CaseRecord>,
}

/// What `merge` needs to know about a task besides its records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskInfo {
    /// Dataset.
    pub dataset: String,
    /// Task.
    pub task: String,
    /// Modality.
    pub modality: Modality,
    /// Label map.
    pub labels: BTreeMap<i32, LabelInfo>,
    /// Cases the source holds (all workers together).
    pub cases_listed: usize,
}

/// Key of a task description.
pub fn task_info_path(dataset: &str, task: &str) -> Path {
    Path::from(TASKS_ROOT).join(dataset).join(format!("{task}.json"))
}

fn record_dir(dataset: &str, task: &str) -> Path {
    Path::from(JOURNAL_ROOT).join(dataset).join(task)
}

/// Key of a record.
pub fn record_path(dataset: &str, task: &str, worker: u32, workers: u32, seq: u32) -> Path {
    record_dir(dataset, task).join(format!("w{worker:04}of{workers:04}-{seq:06}.json"))
}

/// Stores a record (one atomic PUT) that must be new: a record is never replaced,
/// since the shard it vouches for may already be published.
pub async fn write_record(store: &dyn ObjectStore, r: &JournalRecord) -> Result<(), IngestError> {
    let path = record_path(&r.dataset, &r.task, r.worker, r.workers, r.seq);
    let mut bytes = serde_json::to_vec_pretty(r).map_err(|source| ShardError::Json { path: path.clone(), source })?;
    bytes.push(b'\n');
    let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
    match store.put_opts(&path, PutPayload::from(bytes), opts).await {
        Ok(_) => Ok(()),
        Err(source @ object_store::Error::AlreadyExists { .. }) => {
            Err(IngestError::Conflict { path: path.to_string(), source })
        }
        Err(source) => Err(ShardError::Store { op: "put", path, source }.into()),
    }
}

/// The cases one worker took as its share of a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerListing {
    /// Dataset.
    pub dataset: String,
    /// Task.
    pub task: String,
    /// Worker index.
    pub worker: u32,
    /// Worker count.
    pub workers: u32,
    /// Case ids, listing order.
    pub cases: Vec<String>,
}

/// Key of a worker's listing.
pub fn listing_path(dataset: &str, task: &str, worker: u32, workers: u32) -> Path {
    Path::from(LISTED_ROOT).join(dataset).join(task).join(format!("w{worker:04}of{workers:04}.json"))
}

/// Stores a worker's listing (replacing its own earlier one: a resumed run relists).
pub async fn write_listing(store: &dyn ObjectStore, l: &WorkerListing) -> Result<(), ShardError> {
    json::put_json(store, &listing_path(&l.dataset, &l.task, l.worker, l.workers), l).await
}

/// Every JSON document under `prefix`, in listing order.
async fn read_all_json<T: serde::de::DeserializeOwned>(
    store: &dyn ObjectStore,
    prefix: &Path,
) -> Result<Vec<T>, ShardError> {
    let metas: Vec<_> = store.list(Some(prefix)).try_collect().await.map_err(|e| ShardError::Store {
        op: "list",
        path: prefix.clone(),
        source: e,
    })?;
    let mut out = Vec::new();
    for m in metas {
        if m.location.as_ref().ends_with(".json") {
            out.push(json::get_json::<T>(store, &m.location).await?);
        }
    }
    Ok(out)
}

/// Every worker listing on the store.
pub async fn all_listings(store: &dyn ObjectStore) -> Result<Vec<WorkerListing>, ShardError> {
    let mut out: Vec<WorkerListing> = read_all_json(store, &Path::from(LISTED_ROOT)).await?;
    out.sort_by(|a, b| (&a.dataset, &a.task, a.workers, a.worker).cmp(&(&b.dataset, &b.task, b.workers, b.worker)));
    Ok(out)
}

/// Every record under `prefix` (a task dir, or the whole journal).
pub async fn read_records(store: &dyn ObjectStore, prefix: &Path) -> Result<Vec<JournalRecord>, ShardError> {
    let mut out: Vec<JournalRecord> = read_all_json(store, prefix).await?;
    out.sort_by(|a, b| (&a.dataset, &a.task, a.worker, a.seq).cmp(&(&b.dataset, &b.task, b.worker, b.seq)));
    Ok(out)
}

/// Records of one task.
pub async fn task_records(
    store: &dyn ObjectStore,
    dataset: &str,
    task: &str,
) -> Result<Vec<JournalRecord>, ShardError> {
    read_records(store, &record_dir(dataset, task)).await
}

/// Every record of every task.
pub async fn all_records(store: &dyn ObjectStore) -> Result<Vec<JournalRecord>, ShardError> {
    read_records(store, &Path::from(JOURNAL_ROOT)).await
}

/// Where a worker stands on a task.
#[derive(Clone, Debug, Default)]
pub struct Resume {
    /// Cases committed by anyone.
    pub done: BTreeMap<String, CaseRecord>,
    /// Next shard number for this worker.
    pub next_part: u32,
    /// Next record number for this worker.
    pub next_seq: u32,
}

/// Reads the task's records and works out where worker `worker` of `workers` resumes.
pub fn resume_state(records: &[JournalRecord], worker: u32, workers: u32) -> Resume {
    let mut r = Resume { next_part: worker, ..Default::default() };
    for rec in records {
        r.done.extend(rec.cases.clone());
        if rec.worker == worker && rec.workers == workers {
            r.next_seq = r.next_seq.max(rec.seq + 1);
            if let Some(part) = rec.shard.as_ref().and_then(|s| part_number(&s.path)) {
                r.next_part = r.next_part.max(part + workers);
            }
        }
    }
    r
}

/// The NNNNN of `.../part-NNNNN.parquet`.
pub fn part_number(path: &str) -> Option<u32> {
    path.rsplit('/').next()?.strip_prefix("part-")?.strip_suffix(".parquet")?.parse().ok()
}
