//! Running an ingest: plan → per task, resume from the journal, process the
//! remaining cases on a rayon pool, write shards, commit → publish.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use rayon::prelude::*;
use s3_shards::labels::CaseFate;
use s3_shards::{ShardIndex, ShardMeta, ShardWriter, StoreLocation, StoreOptions, WriterOptions, json, open_store};
use xxhash_rust::xxh3::xxh3_64;

use crate::catalog::{Catalog, DatasetEntry, LabelInfo, TaskEntry, expand_env};
use crate::error::{IngestError, Result};
use crate::journal::{self, CaseRecord, JournalRecord, SampleNote, TaskInfo};
use crate::layout::{CaseRef, LabelSource, list_cases};
use crate::nifti_io::{ReadOptions, Volume, Voxels, read_nifti};
use crate::preprocess::{CaseContext, CaseSamples, PreprocessOptions, process_case};
use crate::source::Source;

/// Everything a run needs besides the catalogue.
#[derive(Clone, Debug)]
pub struct IngestConfig {
    /// Output store URL.
    pub out: String,
    /// S3 settings for output and sources.
    pub store_options: StoreOptions,
    /// Cases processed at once.
    pub jobs: usize,
    /// This worker's index.
    pub worker: u32,
    /// Number of workers.
    pub workers: u32,
    /// Only these datasets (all when None).
    pub datasets: Option<Vec<String>>,
    /// NIfTI limits.
    pub read: ReadOptions,
    /// Filters and split.
    pub preprocess: PreprocessOptions,
    /// Shard writing.
    pub writer: WriterOptions,
    /// Where remote inputs are fetched to.
    pub tmp_dir: PathBuf,
    /// Only plan and report.
    pub dry_run: bool,
}

impl IngestConfig {
    /// Defaults for writing to `out` as a single worker.
    pub fn new(out: impl Into<String>) -> IngestConfig {
        IngestConfig {
            out: out.into(),
            store_options: StoreOptions::default(),
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
            worker: 0,
            workers: 1,
            datasets: None,
            read: ReadOptions::default(),
            preprocess: PreprocessOptions::default(),
            writer: WriterOptions::default(),
            tmp_dir: std::env::temp_dir(),
            dry_run: false,
        }
    }
}

/// Progress of a run, for a progress bar.
#[derive(Clone, Debug)]
pub enum Event {
    /// A task is about to be processed.
    TaskStart {
        /// Dataset.
        dataset: String,
        /// Task.
        task: String,
        /// Cases of this worker.
        cases: usize,
        /// Of which still to do.
        todo: usize,
    },
    /// A case finished.
    CaseDone {
        /// Dataset.
        dataset: String,
        /// Case.
        case_id: String,
        /// Samples written.
        samples: usize,
        /// Bytes of input read.
        input_bytes: u64,
        /// Quarantine reason, if any.
        quarantined: Option<String>,
    },
    /// A dataset or task was skipped as a whole.
    Skipped {
        /// Dataset.
        dataset: String,
        /// Task.
        task: String,
        /// Why.
        reason: String,
    },
    /// The index is being published.
    Publishing,
}

/// Per-dataset outcome of a run (this worker's share, including earlier runs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatasetSummary {
    /// Dataset.
    pub dataset: String,
    /// Cases of this worker.
    pub cases: usize,
    /// Still to do (dry run).
    pub todo: usize,
    /// Ingested cases.
    pub ingested: usize,
    /// Skipped cases.
    pub skipped: usize,
    /// Quarantined cases.
    pub quarantined: usize,
    /// Samples written.
    pub samples: u64,
    /// Shard bytes.
    pub bytes: u64,
    /// Why the dataset (or a task) was skipped whole.
    pub notes: Vec<String>,
}

/// Outcome of a run.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Per dataset, catalogue order.
    pub datasets: Vec<DatasetSummary>,
    /// The published index (plain runs).
    pub index: Option<ShardIndex>,
}

impl Summary {
    /// Quarantined cases over all datasets.
    pub fn quarantined(&self) -> usize {
        self.datasets.iter().map(|d| d.quarantined).sum()
    }
}

/// Whether worker `worker` of `workers` owns a case: a hash of its identity, so the
/// partition does not depend on listing order or on which other cases exist.
pub fn owns(dataset: &str, task: &str, case_id: &str, worker: u32, workers: u32) -> bool {
    workers <= 1 || xxh3_64(format!("{dataset}/{task}/{case_id}").as_bytes()) % u64::from(workers) == u64::from(worker)
}

/// Runs an ingest of `catalog` as described by `cfg`. A plain run (one worker)
/// publishes the index at the end; workers leave that to [`merge`].
pub fn run(catalog: &Catalog, cfg: &IngestConfig, progress: &(dyn Fn(Event) + Sync)) -> Result<Summary> {
    if let Some(names) = &cfg.datasets {
        let unknown: Vec<&String> = names.iter().filter(|n| catalog.get(n).is_none()).collect();
        if !unknown.is_empty() {
            return Err(IngestError::Catalog {
                path: "--datasets".into(),
                reason: format!("unknown datasets {unknown:?}"),
            });
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| IngestError::Io { file: "tokio runtime".into(), error: e })?;
    let out = open_store(&cfg.out, &cfg.store_options)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.jobs.max(1))
        .build()
        .map_err(|e| IngestError::Io { file: "thread pool".into(), error: std::io::Error::other(e) })?;
    let mut summary = Summary::default();
    for d in &catalog.datasets {
        if cfg.datasets.as_ref().is_some_and(|names| !names.contains(&d.name)) {
            continue;
        }
        let mut ds = DatasetSummary { dataset: d.name.clone(), ..Default::default() };
        for t in &d.tasks {
            if let Err(reason) = run_task(&rt, &pool, &out, d, t, cfg, progress, &mut ds) {
                progress(Event::Skipped { dataset: d.name.clone(), task: t.name.clone(), reason: reason.clone() });
                ds.notes.push(format!("{}: {reason}", t.name));
            }
        }
        summary.datasets.push(ds);
    }
    if !cfg.dry_run && cfg.workers <= 1 {
        progress(Event::Publishing);
        summary.index = Some(rt.block_on(merge(&out))?);
    }
    Ok(summary)
}

/// Errors that skip a whole task come back as `Err(reason)`; store failures while
/// writing are fatal and come back inside the string too, after the committed work.
#[allow(clippy::too_many_arguments)]
fn run_task(
    rt: &tokio::runtime::Runtime,
    pool: &rayon::ThreadPool,
    out: &StoreLocation,
    d: &DatasetEntry,
    t: &TaskEntry,
    cfg: &IngestConfig,
    progress: &(dyn Fn(Event) + Sync),
    ds: &mut DatasetSummary,
) -> std::result::Result<(), String> {
    let Some(raw) = &t.source else { return Err("no source configured".into()) };
    let url = expand_env(raw)?;
    let source = Source::open(&url, &cfg.store_options)?;
    let listing = rt.block_on(list_cases(&source, t))?;
    let labels = d.label_map(t, &listing.labels);
    let store = out.store().clone();
    if !cfg.dry_run {
        let info = TaskInfo {
            dataset: d.name.clone(),
            task: t.name.clone(),
            modality: d.modality,
            labels: labels.clone(),
            cases_listed: listing.cases.len(),
        };
        rt.block_on(json::put_json(store.as_ref(), &journal::task_info_path(&d.name, &t.name), &info))
            .map_err(|e| e.to_string())?;
    }
    let mine: Vec<CaseRef> =
        listing.cases.into_iter().filter(|c| owns(&d.name, &t.name, &c.case_id, cfg.worker, cfg.workers)).collect();
    let records = rt.block_on(journal::task_records(store.as_ref(), &d.name, &t.name)).map_err(|e| e.to_string())?;
    let resume = journal::resume_state(&records, cfg.worker, cfg.workers);
    let todo: Vec<&CaseRef> = mine.iter().filter(|c| !resume.done.contains_key(&c.case_id)).collect();
    progress(Event::TaskStart { dataset: d.name.clone(), task: t.name.clone(), cases: mine.len(), todo: todo.len() });
    ds.cases += mine.len();
    ds.todo += todo.len();
    let mut finished: BTreeMap<String, CaseRecord> =
        mine.iter().filter_map(|c| resume.done.get(&c.case_id).map(|r| (c.case_id.clone(), r.clone()))).collect();
    let mut shard_bytes: u64 = records
        .iter()
        .filter(|r| r.worker == cfg.worker && r.workers == cfg.workers)
        .filter_map(|r| r.shard.as_ref().map(|s| s.bytes))
        .sum();
    if cfg.dry_run || todo.is_empty() {
        tally(ds, &finished, shard_bytes);
        return Ok(());
    }
    rt.block_on(remove_leftovers(&store, &d.name, &t.name, resume.next_part, cfg.workers))
        .map_err(|e| e.to_string())?;

    let opts = WriterOptions { first_part: resume.next_part, part_stride: cfg.workers.max(1), ..cfg.writer.clone() };
    let mut writer = ShardWriter::new(store.clone(), &d.name, &t.name, opts).map_err(|e| e.to_string())?;
    let mut commit = Committer { store: store.clone(), d, t, cfg, seq: resume.next_seq, pending: BTreeMap::new() };
    let ctx = TaskCtx { d, t, labels: &labels, source: &source, cfg, handle: rt.handle().clone() };
    let (tx, rx) = std::sync::mpsc::sync_channel::<(String, u64, Result<CaseSamples>)>(cfg.jobs.max(1));
    let result: std::result::Result<(), String> = std::thread::scope(|scope| {
        scope.spawn(|| {
            pool.install(|| {
                todo.par_iter().for_each_with(tx, |tx, case| {
                    let (bytes, outcome) = ctx.process(case);
                    let _ = tx.send((case.case_id.clone(), bytes, outcome));
                })
            })
        });
        for (case_id, input_bytes, outcome) in rx {
            let (record, samples, quarantined) = match outcome {
                Ok(cs) if !cs.samples.is_empty() => {
                    let notes = cs
                        .samples
                        .iter()
                        .map(|s| SampleNote { label: s.meta.label_value, fg_voxels: s.fg_voxels, checksum: s.checksum })
                        .collect();
                    let dropped_labels = cs.dropped.iter().map(|(v, r)| (v.to_string(), r.clone())).collect();
                    let fate = CaseFate::Ingested { samples: cs.samples.len() as u64, dropped_labels };
                    (CaseRecord { fate, samples: notes }, cs.samples, None)
                }
                Ok(cs) => {
                    let why = cs.dropped.iter().map(|(v, r)| format!("label {v}: {r}")).collect::<Vec<_>>().join("; ");
                    (
                        CaseRecord {
                            fate: CaseFate::Skipped { reason: format!("no label passed the size filters ({why})") },
                            samples: vec![],
                        },
                        vec![],
                        None,
                    )
                }
                Err(e) => {
                    let reason = e.to_string();
                    (
                        CaseRecord { fate: CaseFate::Quarantined { reason: reason.clone() }, samples: vec![] },
                        vec![],
                        Some(reason),
                    )
                }
            };
            let n = samples.len();
            commit.pending.insert(case_id.clone(), record);
            let shard = rt.block_on(writer.push_case(samples)).map_err(|e| format!("writing shards: {e}"))?;
            if let Some(shard) = shard {
                shard_bytes += shard.bytes;
                finished.extend(commit.pending.clone());
                rt.block_on(commit.commit(Some(shard))).map_err(|e| e.to_string())?;
            }
            progress(Event::CaseDone { dataset: d.name.clone(), case_id, samples: n, input_bytes, quarantined });
        }
        Ok(())
    });
    result?;
    let last = rt.block_on(writer.finish()).map_err(|e| format!("writing shards: {e}"))?;
    shard_bytes += last.as_ref().map_or(0, |s| s.bytes);
    finished.extend(commit.pending.clone());
    if last.is_some() || !commit.pending.is_empty() {
        rt.block_on(commit.commit(last)).map_err(|e| e.to_string())?;
    }
    tally(ds, &finished, shard_bytes);
    Ok(())
}

fn tally(ds: &mut DatasetSummary, finished: &BTreeMap<String, CaseRecord>, bytes: u64) {
    for r in finished.values() {
        match &r.fate {
            CaseFate::Ingested { samples, .. } => {
                ds.ingested += 1;
                ds.samples += samples;
            }
            CaseFate::Skipped { .. } => ds.skipped += 1,
            CaseFate::Quarantined { .. } => ds.quarantined += 1,
        }
    }
    ds.bytes += bytes;
}

struct Committer<'a> {
    store: Arc<dyn ObjectStore>,
    d: &'a DatasetEntry,
    t: &'a TaskEntry,
    cfg: &'a IngestConfig,
    seq: u32,
    pending: BTreeMap<String, CaseRecord>,
}

impl Committer<'_> {
    async fn commit(&mut self, shard: Option<ShardMeta>) -> Result<()> {
        let rec = JournalRecord {
            dataset: self.d.name.clone(),
            task: self.t.name.clone(),
            worker: self.cfg.worker,
            workers: self.cfg.workers.max(1),
            seq: self.seq,
            shard,
            cases: std::mem::take(&mut self.pending),
        };
        journal::write_record(self.store.as_ref(), &rec).await?;
        self.seq += 1;
        Ok(())
    }
}

/// Deletes this worker's shard files numbered at or above `next_part`: written by a
/// killed run after its last commit, so no record vouches for them.
async fn remove_leftovers(
    store: &Arc<dyn ObjectStore>,
    dataset: &str,
    task: &str,
    next_part: u32,
    workers: u32,
) -> Result<()> {
    let dir = s3_shards::writer::shard_dir(dataset, task);
    let metas: Vec<_> = store.list(Some(&dir)).try_collect().await.map_err(|e| s3_shards::ShardError::Store {
        op: "list",
        path: dir.clone(),
        source: e,
    })?;
    for m in metas {
        if let Some(p) = journal::part_number(m.location.as_ref()) {
            if p >= next_part && p % workers.max(1) == next_part % workers.max(1) {
                tracing::info!(path = %m.location, "removing a shard left by an interrupted run");
                store.delete(&m.location).await.map_err(|e| s3_shards::ShardError::Store {
                    op: "delete",
                    path: m.location.clone(),
                    source: e,
                })?;
            }
        }
    }
    Ok(())
}

struct TaskCtx<'a> {
    d: &'a DatasetEntry,
    t: &'a TaskEntry,
    labels: &'a BTreeMap<i32, LabelInfo>,
    source: &'a Source,
    cfg: &'a IngestConfig,
    handle: tokio::runtime::Handle,
}

impl TaskCtx<'_> {
    /// Reads and preprocesses one case; returns the input bytes read and the outcome.
    fn process(&self, case: &CaseRef) -> (u64, Result<CaseSamples>) {
        let mut bytes = 0u64;
        let outcome = (|| {
            let image = self.read(&case.image, &mut bytes)?;
            let label = match &case.label {
                LabelSource::File(key) => self.read(key, &mut bytes)?,
                LabelSource::Structures(files) => self.merge_structures(files, &mut bytes)?,
                LabelSource::Missing(reason) => return Err(IngestError::Mismatch(reason.clone())),
            };
            let ctx = CaseContext {
                dataset: &self.d.name,
                task: &self.t.name,
                case_id: &case.case_id,
                modality: self.d.modality,
                labels: self.labels,
            };
            process_case(&image, &label, &ctx, &self.cfg.preprocess)
        })();
        (bytes, outcome)
    }

    fn read(&self, key: &str, bytes: &mut u64) -> Result<Volume> {
        let file = self.handle.block_on(self.source.fetch(key, &self.cfg.tmp_dir))?;
        *bytes += std::fs::metadata(file.path()).map(|m| m.len()).unwrap_or(0);
        read_nifti(file.path(), &self.cfg.read)
    }

    /// TotalSegmentator: one binary mask per structure → one label map (later
    /// structures win where masks overlap).
    fn merge_structures(&self, files: &[(i32, String)], bytes: &mut u64) -> Result<Volume> {
        let mut merged: Option<(Volume, Vec<u16>)> = None;
        for (value, key) in files {
            let v = self.read(key, bytes)?;
            let (first, data) = merged.get_or_insert_with(|| {
                let n = v.len();
                (Volume { voxels: Voxels::U8(Vec::new()), ..v.clone_header() }, vec![0u16; n])
            });
            if v.shape != first.shape {
                return Err(IngestError::Mismatch(format!(
                    "segmentation {key} has shape {:?}, expected {:?}",
                    v.shape, first.shape
                )));
            }
            for (n, d) in data.iter_mut().enumerate() {
                if v.value(n) > 0.0 {
                    *d = *value as u16;
                }
            }
        }
        let (mut vol, data) = merged.ok_or_else(|| IngestError::Mismatch("no segmentation files".into()))?;
        vol.voxels = Voxels::U16(data);
        vol.slope = 1.0;
        vol.inter = 0.0;
        Ok(vol)
    }
}

/// Publishes a store from its journal: label manifests, `samples.parquet`, then
/// `index.json`. Run after all workers finished (or by a plain run itself).
/// Refuses to publish a case committed twice.
pub async fn merge(out: &StoreLocation) -> Result<ShardIndex> {
    use s3_shards::labels::{ClassEntry, FgStats, LabelManifest, Quarantined};
    let store = out.store();
    let records = journal::all_records(store.as_ref()).await?;
    let mut shards = Vec::new();
    let mut by_dataset: BTreeMap<String, Vec<&JournalRecord>> = BTreeMap::new();
    let mut seen: BTreeMap<(String, String, String), (u32, u32)> = BTreeMap::new();
    for r in &records {
        for case in r.cases.keys() {
            if let Some(prev) = seen.insert((r.dataset.clone(), r.task.clone(), case.clone()), (r.worker, r.seq)) {
                return Err(IngestError::Source {
                    dataset: r.dataset.clone(),
                    task: r.task.clone(),
                    reason: format!(
                        "case {case} was committed twice (records w{}#{} and w{}#{}); were workers run with different counts?",
                        prev.0, prev.1, r.worker, r.seq
                    ),
                });
            }
        }
        shards.extend(r.shard.clone());
        by_dataset.entry(r.dataset.clone()).or_default().push(r);
    }
    let mut names = Vec::new();
    for (dataset, recs) in &by_dataset {
        let mut tasks: BTreeMap<String, TaskInfo> = BTreeMap::new();
        for r in recs {
            if !tasks.contains_key(&r.task) {
                let info: TaskInfo = json::get_json(store.as_ref(), &journal::task_info_path(dataset, &r.task)).await?;
                tasks.insert(r.task.clone(), info);
            }
        }
        let modality = tasks.values().next().map_or("CT", |t| t.modality.as_str()).to_string();
        let mut classes: BTreeMap<i32, (LabelInfo, Vec<i64>)> = BTreeMap::new();
        for info in tasks.values() {
            for (v, l) in &info.labels {
                classes.entry(*v).or_insert_with(|| (l.clone(), Vec::new()));
            }
        }
        let mut cases: BTreeMap<String, BTreeMap<String, CaseFate>> = BTreeMap::new();
        let mut quarantine = Vec::new();
        for r in recs {
            for (case, rec) in &r.cases {
                for n in &rec.samples {
                    classes
                        .entry(n.label)
                        .or_insert_with(|| (LabelInfo::unnamed(n.label), Vec::new()))
                        .1
                        .push(n.fg_voxels);
                }
                if let CaseFate::Quarantined { reason } = &rec.fate {
                    quarantine.push(Quarantined {
                        task: r.task.clone(),
                        case_id: case.clone(),
                        reason: reason.clone(),
                    });
                }
                cases.entry(r.task.clone()).or_default().insert(case.clone(), rec.fate.clone());
            }
        }
        quarantine.sort_by(|a, b| (&a.task, &a.case_id).cmp(&(&b.task, &b.case_id)));
        let manifest = LabelManifest {
            dataset: dataset.clone(),
            modality: modality.clone(),
            classes: classes
                .into_iter()
                .map(|(value, (info, fg))| ClassEntry {
                    value,
                    name: info.name,
                    category: info.category,
                    modality: modality.clone(),
                    samples: fg.len() as u64,
                    fg_voxels: FgStats::of(&fg),
                })
                .collect(),
            quarantine,
            cases,
        };
        manifest.write(store.as_ref()).await?;
        names.push(dataset.clone());
    }
    let tool = concat!("s3-ingest ", env!("CARGO_PKG_VERSION"));
    Ok(s3_shards::publish(store, tool, shards, &names).await?)
}
