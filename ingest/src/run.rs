//! Running an ingest: plan → per task, resume from the journal, process the
//! remaining cases on a rayon pool, write shards, commit → publish.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use s3_shards::labels::CaseFate;
use s3_shards::{ShardIndex, ShardMeta, ShardWriter, StoreLocation, StoreOptions, WriterOptions, json, open_store};
use xxhash_rust::xxh3::xxh3_64;

use crate::case_io::CaseReader;
use crate::catalog::{Catalog, DatasetEntry, LabelInfo, TaskEntry, expand_env};
use crate::error::{IngestError, MissingCase, Result};
use crate::journal::{self, CaseRecord, JournalRecord, SampleNote, TaskInfo, WorkerListing};
use crate::layout::{CaseRef, ListError, Listing, list_cases};
use crate::nifti_io::ReadOptions;
use crate::preprocess::{CaseContext, CaseSamples, Channel, PreprocessOptions, process_channels};
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
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
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
    /// Why the dataset (or a task) was skipped whole, and other remarks.
    pub notes: Vec<String>,
    /// Layout mismatches: a source that exists but whose layout finds no case, or
    /// far fewer cases than it holds images. Loud, and fatal under `--strict`.
    pub problems: Vec<String>,
    /// Tasks whose source is absent (the user does not have the dataset).
    pub absent: usize,
    /// Tasks the catalogue says cannot be read as downloaded.
    pub unreadable: usize,
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
    /// Layout mismatches over all datasets.
    pub fn problems(&self) -> usize {
        self.datasets.iter().map(|d| d.problems.len()).sum()
    }
}

/// Whether worker `worker` of `workers` owns a case: a hash of its identity, so the
/// partition does not depend on listing order or on which other cases exist.
pub fn owns(dataset: &str, task: &str, case_id: &str, worker: u32, workers: u32) -> bool {
    workers <= 1 || xxh3_64(format!("{dataset}/{task}/{case_id}").as_bytes()) % u64::from(workers) == u64::from(worker)
}

/// Runs an ingest of `catalog` as described by `cfg`. A plain run (one worker)
/// publishes the index at the end; workers leave that to [`merge`].
///
/// A task whose source cannot be listed is skipped with a note; a failure to write
/// the output store ends the run with [`IngestError::Output`] before anything new is
/// published, keeping what was committed for a re-run to resume from.
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
    // An evaluation catalogue's cases are test cases, whatever the val rule says.
    let evaluation;
    let cfg = if catalog.is_evaluation() {
        evaluation = IngestConfig {
            preprocess: PreprocessOptions { split: Some(s3_shards::Split::Test), ..cfg.preprocess.clone() },
            ..cfg.clone()
        };
        &evaluation
    } else {
        cfg
    };
    let rt = s3_shards::io_runtime::io_runtime()?;
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
        let (mut audits, mut listed) = (Vec::new(), 0usize);
        for t in &d.tasks {
            let (a, l) = (&mut audits, &mut listed);
            let end = run_task(&rt, &pool, &out, d, t, cfg, progress, &mut ds, a, l)?;
            let note = |why: &str| format!("{}: {why}", t.name);
            ds.absent += usize::from(matches!(end, TaskEnd::Absent(_)));
            match end {
                TaskEnd::Done => {}
                TaskEnd::Absent(why) | TaskEnd::Skipped(why) => ds.notes.push(note(&why)),
                TaskEnd::Unreadable(why) => {
                    ds.unreadable += 1;
                    ds.notes.push(note(&format!("cannot be read as downloaded: {why}")));
                }
                // Only a mismatch is news while the run goes on; the rest is in the summary.
                TaskEnd::Mismatch(reason) => {
                    ds.problems.push(note(&reason));
                    progress(Event::Skipped { dataset: d.name.clone(), task: t.name.clone(), reason });
                }
            }
        }
        audit_dataset(&mut ds, &audits, listed);
        summary.datasets.push(ds);
    }
    if !cfg.dry_run && cfg.workers <= 1 {
        progress(Event::Publishing);
        summary.index = Some(rt.block_on(merge(&out))?);
    }
    Ok(summary)
}

/// How a task ended, when the run goes on.
enum TaskEnd {
    Done,
    /// No source configured.
    Skipped(String),
    /// The source is absent: the user does not have this dataset.
    Absent(String),
    /// The catalogue says the download cannot be read as it is.
    Unreadable(String),
    /// The source exists but its layout does not match the catalogue's description.
    Mismatch(String),
}

/// Processes one task. Source problems skip it; output-store problems are `Err`.
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
    audits: &mut Vec<Listing>,
    listed: &mut usize,
) -> Result<TaskEnd> {
    let Some(raw) = &t.source else { return Ok(TaskEnd::Skipped("no source configured".into())) };
    if let Some(why) = &t.unreadable {
        return Ok(TaskEnd::Unreadable(why.clone()));
    }
    let url = match expand_env(raw) {
        Ok(url) => url,
        Err(reason) => return Ok(TaskEnd::Mismatch(reason)),
    };
    let listing = match Source::open(&url, &cfg.store_options) {
        Ok(source) => match rt.block_on(list_cases(&source, &d.name, t)) {
            Ok(listing) => (source, listing),
            // A store that failed while listing is an outage, not a reason to publish
            // without the dataset.
            Err(e) => match source.take_outage() {
                Some(outage) => return Err(outage),
                None => {
                    return Ok(match e {
                        ListError::NotPresent(r) => TaskEnd::Absent(r),
                        ListError::Unreadable(r) => TaskEnd::Unreadable(r),
                        ListError::Mismatch(r) | ListError::Source(r) => TaskEnd::Mismatch(r),
                    });
                }
            },
        },
        Err(reason) => return Ok(TaskEnd::Absent(reason)),
    };
    let (source, listing) = listing;
    audits.push(Listing { cases: Vec::new(), labels: BTreeMap::new(), ..listing.clone() });
    *listed += listing.cases.len();
    let cases_listed = listing.cases.len();
    let labels = d.label_map(t, &listing.labels);
    let store = out.store().clone();
    let workers = cfg.workers.max(1);
    let fatal = |source: s3_shards::ShardError| IngestError::Output {
        dataset: d.name.clone(),
        task: t.name.clone(),
        source: Box::new(source),
    };
    let records = rt.block_on(journal::task_records(store.as_ref(), &d.name, &t.name)).map_err(fatal)?;
    // Shard numbers and leftovers are worked out per N: under another N this worker
    // would number its files over committed ones (and delete them as leftovers).
    if let Some(r) = records.iter().find(|r| r.workers.max(1) != workers) {
        return Err(IngestError::WorkerCount {
            dataset: d.name.clone(),
            task: t.name.clone(),
            journal: r.workers,
            requested: workers,
        });
    }
    let mine: Vec<CaseRef> =
        listing.cases.into_iter().filter(|c| owns(&d.name, &t.name, &c.case_id, cfg.worker, workers)).collect();
    if !cfg.dry_run {
        let info = TaskInfo {
            dataset: d.name.clone(),
            task: t.name.clone(),
            modality: t.modality.unwrap_or(d.modality),
            labels: labels.clone(),
            cases_listed,
        };
        rt.block_on(json::put_json(store.as_ref(), &journal::task_info_path(&d.name, &t.name), &info))
            .map_err(fatal)?;
        let listed = WorkerListing {
            dataset: d.name.clone(),
            task: t.name.clone(),
            worker: cfg.worker,
            workers,
            cases: mine.iter().map(|c| c.case_id.clone()).collect(),
        };
        rt.block_on(journal::write_listing(store.as_ref(), &listed)).map_err(fatal)?;
    }
    let resume = journal::resume_state(&records, cfg.worker, workers);
    let todo: Vec<&CaseRef> = mine.iter().filter(|c| !resume.done.contains_key(&c.case_id)).collect();
    progress(Event::TaskStart { dataset: d.name.clone(), task: t.name.clone(), cases: mine.len(), todo: todo.len() });
    ds.cases += mine.len();
    ds.todo += todo.len();
    let mut finished: BTreeMap<String, CaseRecord> =
        mine.iter().filter_map(|c| resume.done.get(&c.case_id).map(|r| (c.case_id.clone(), r.clone()))).collect();
    let mut shard_bytes: u64 =
        records.iter().filter(|r| r.worker == cfg.worker).filter_map(|r| r.shard.as_ref().map(|s| s.bytes)).sum();
    if cfg.dry_run || todo.is_empty() {
        tally(ds, &finished, shard_bytes);
        return Ok(TaskEnd::Done);
    }
    rt.block_on(remove_leftovers(&store, &d.name, &t.name, resume.next_part, workers)).map_err(fatal)?;

    let opts = WriterOptions { first_part: resume.next_part, part_stride: workers, ..cfg.writer.clone() };
    let mut writer = ShardWriter::new(store.clone(), &d.name, &t.name, opts).map_err(fatal)?;
    let mut commit = Committer { store: store.clone(), d, t, cfg, seq: resume.next_seq, pending: BTreeMap::new() };
    let ctx = TaskCtx { d, t, labels: &labels, source: &source, cfg, handle: rt.handle().clone() };
    let jobs = cfg.jobs.max(1);
    // Cases are written in listing order whatever order they finish in, so the shards
    // are the same bytes for any --jobs; a window of 2 x jobs keeps every job busy
    // while the writer works, and bounds the samples held in memory.
    let written = crate::ordered::map_in_order(
        &todo,
        jobs,
        2 * jobs,
        |case| ctx.process_guarded(pool, case),
        |case, (input_bytes, outcome)| {
            // A source that cannot be read ends the run rather than quarantine a good case.
            let outcome = match outcome {
                Err(e @ IngestError::SourceUnavailable { .. }) => return Err(e),
                o => o,
            };
            let (record, samples, quarantined) = match &case.skip {
                Some(reason) => {
                    (CaseRecord { fate: CaseFate::Skipped { reason: reason.clone() }, samples: vec![] }, vec![], None)
                }
                None => case_record(outcome),
            };
            let n = samples.len();
            commit.pending.insert(case.case_id.clone(), record);
            if let Some(shard) = rt.block_on(writer.push_case(samples)).map_err(fatal)? {
                shard_bytes += shard.bytes;
                finished.extend(commit.pending.clone());
                rt.block_on(commit.commit(Some(shard)))?;
            }
            let case_id = case.case_id.clone();
            progress(Event::CaseDone { dataset: d.name.clone(), case_id, samples: n, input_bytes, quarantined });
            Ok::<(), IngestError>(())
        },
    );
    if let Err(e) = written {
        // The open shard was never committed: abort its upload so nothing appears under its key.
        rt.block_on(writer.abort());
        return Err(e);
    }
    let last = rt.block_on(writer.finish()).map_err(fatal)?;
    shard_bytes += last.as_ref().map_or(0, |s| s.bytes);
    finished.extend(commit.pending.clone());
    if last.is_some() || !commit.pending.is_empty() {
        rt.block_on(commit.commit(last))?;
    }
    tally(ds, &finished, shard_bytes);
    Ok(TaskEnd::Done)
}

/// A layout that matched far fewer cases than the folders hold images: more image
/// files that no task uses (and none `ignore`s) than cases found.
pub fn unused_problem(cases: usize, unused: &[String]) -> Option<String> {
    let n = unused.len();
    (n > cases).then(|| {
        format!(
            "the layout matches {cases} case(s), but {n} image files under its folders are used by none (first: {}); \
             fix the catalogue entry or `ignore` them",
            unused[0]
        )
    })
}

/// The dataset-level verdict on files no task used: a problem, a note, or nothing.
fn audit_dataset(ds: &mut DatasetSummary, audits: &[Listing], listed: usize) {
    let unused = crate::layout::unused_by_all(audits);
    if let Some(problem) = unused_problem(listed, &unused) {
        ds.problems.push(problem);
    } else if let Some(first) = unused.first() {
        ds.notes.push(format!("{} image file(s) no case uses (first: {first})", unused.len()));
    }
}

/// The journal entry of a processed case, its samples, and the quarantine reason if any.
fn case_record(outcome: Result<CaseSamples>) -> (CaseRecord, Vec<s3_shards::Sample>, Option<String>) {
    match outcome {
        Ok(cs) if !cs.samples.is_empty() => {
            let notes = cs
                .samples
                .iter()
                .map(|s| SampleNote {
                    label: s.meta.label_value,
                    fg_voxels: s.fg_voxels,
                    checksum: s.checksum,
                    channel: s.meta.channel.clone(),
                })
                .collect();
            let dropped_labels = cs.dropped.iter().map(|(v, r)| (v.to_string(), r.clone())).collect();
            let fate = CaseFate::Ingested {
                samples: cs.samples.len() as u64,
                dropped_labels,
                dropped_channels: cs.dropped_channels.clone(),
                image_xxh3: cs.image_digests.clone(),
            };
            (CaseRecord { fate, samples: notes }, cs.samples, None)
        }
        Ok(cs) => {
            let why = cs.dropped.iter().map(|(v, r)| format!("label {v}: {r}")).collect::<Vec<_>>().join("; ");
            let fate = CaseFate::Skipped { reason: format!("no label passed the size filters ({why})") };
            (CaseRecord { fate, samples: vec![] }, vec![], None)
        }
        Err(e) => {
            let reason = e.to_string();
            (
                CaseRecord { fate: CaseFate::Quarantined { reason: reason.clone() }, samples: vec![] },
                vec![],
                Some(reason),
            )
        }
    }
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
        journal::write_record(self.store.as_ref(), &rec).await.map_err(|e| match e {
            IngestError::Shards(source) => IngestError::Output {
                dataset: self.d.name.clone(),
                task: self.t.name.clone(),
                source: Box::new(source),
            },
            e => e,
        })?;
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
) -> Result<(), s3_shards::ShardError> {
    let dir = s3_shards::writer::shard_dir(dataset, task);
    let metas: Vec<_> = store.list(Some(&dir)).try_collect().await.map_err(|e| s3_shards::ShardError::Store {
        op: "list",
        path: dir.clone(),
        source: e,
    })?;
    for m in metas {
        if let Some(p) = journal::part_number(m.location.as_ref())
            && p >= next_part
            && p % workers.max(1) == next_part % workers.max(1)
        {
            tracing::info!(path = %m.location, "removing a shard left by an interrupted run");
            store.delete(&m.location).await.map_err(|e| s3_shards::ShardError::Store {
                op: "delete",
                path: m.location.clone(),
                source: e,
            })?;
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
    /// [`TaskCtx::process`] on the pool, with a panic turned into the case's
    /// quarantine reason: a bug met on one input must not take the other cases down.
    fn process_guarded(&self, pool: &rayon::ThreadPool, case: &CaseRef) -> (u64, Result<CaseSamples>) {
        if case.skip.is_some() {
            return (0, Ok(CaseSamples::default()));
        }
        let work = || pool.install(|| self.process(case));
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|payload| {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            tracing::error!(case = %case.case_id, "processing panicked: {message}");
            (0, Err(IngestError::Panicked(message)))
        })
    }

    /// Reads and preprocesses one case; returns the input bytes read and the outcome.
    fn process(&self, case: &CaseRef) -> (u64, Result<CaseSamples>) {
        let mut bytes = 0u64;
        let outcome = (|| {
            #[cfg(test)]
            tests::maybe_panic(&case.case_id);
            let reader = CaseReader {
                source: self.source,
                tmp_dir: &self.cfg.tmp_dir,
                read: &self.cfg.read,
                handle: &self.handle,
            };
            let case_volumes = reader.read_case_channels(case)?;
            bytes = case_volumes.bytes;
            let ctx = CaseContext {
                dataset: &self.d.name,
                task: &self.t.name,
                case_id: &case.case_id,
                modality: case.modality.unwrap_or(self.d.modality),
                labels: self.labels,
            };
            let channels: Vec<Channel> =
                case_volumes.channels.iter().map(|(name, image)| Channel { name, image }).collect();
            process_channels(&channels, &case_volumes.label, &ctx, &self.cfg.preprocess)
        })();
        (bytes, outcome)
    }
}

/// Publishes a store from its journal: label manifests, `samples.parquet`, then
/// `index.json`. Run after all workers finished (or by a plain run itself).
/// Refuses to publish a case committed twice, and a store where a case some worker
/// listed has no fate or a worker of the partition never listed its share.
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
    let missing = unaccounted(store.as_ref(), &records, &seen).await?;
    if !missing.is_empty() {
        return Err(IngestError::Incomplete { missing });
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
        let mut per_channel: BTreeMap<i32, BTreeMap<String, u64>> = BTreeMap::new();
        let mut quarantine = Vec::new();
        for r in recs {
            for (case, rec) in &r.cases {
                for n in &rec.samples {
                    let class = classes.entry(n.label).or_insert_with(|| (LabelInfo::unnamed(n.label), Vec::new()));
                    class.1.push(n.fg_voxels);
                    if !n.channel.is_empty() {
                        *per_channel.entry(n.label).or_default().entry(n.channel.clone()).or_default() += 1;
                    }
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
                    channels: per_channel.remove(&value).unwrap_or_default(),
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

/// The cases that workers listed and no record accounts for, and the workers of a
/// partition that never listed their share (their cases are unknown, so also missing).
async fn unaccounted(
    store: &dyn ObjectStore,
    records: &[JournalRecord],
    committed: &BTreeMap<(String, String, String), (u32, u32)>,
) -> Result<Vec<MissingCase>> {
    let listings = journal::all_listings(store).await?;
    let mut missing = Vec::new();
    let mut listed = BTreeSet::new();
    for l in &listings {
        listed.insert((l.dataset.as_str(), l.task.as_str(), l.worker, l.workers));
        for c in &l.cases {
            if !committed.contains_key(&(l.dataset.clone(), l.task.clone(), c.clone())) {
                missing.push(MissingCase {
                    dataset: l.dataset.clone(),
                    task: l.task.clone(),
                    case_id: Some(c.clone()),
                    worker: l.worker,
                    workers: l.workers,
                });
            }
        }
    }
    // The partition of a task is the N its records were committed under; a task
    // with nothing committed yet is partitioned as its listings say.
    let mut partitions: BTreeMap<(&str, &str), BTreeSet<u32>> = BTreeMap::new();
    for r in records {
        partitions.entry((r.dataset.as_str(), r.task.as_str())).or_default().insert(r.workers.max(1));
    }
    for l in &listings {
        if !records.iter().any(|r| r.dataset == l.dataset && r.task == l.task) {
            partitions.entry((l.dataset.as_str(), l.task.as_str())).or_default().insert(l.workers.max(1));
        }
    }
    for ((dataset, task), counts) in partitions {
        for workers in counts {
            for worker in 0..workers {
                if !listed.contains(&(dataset, task, worker, workers)) {
                    missing.push(MissingCase {
                        dataset: dataset.into(),
                        task: task.into(),
                        case_id: None,
                        worker,
                        workers,
                    });
                }
            }
        }
    }
    missing.sort();
    missing.dedup();
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// The case whose processing panics, for the test below; `process` asks before
    /// each case. A test-only hook: no input is known to panic (that would be a bug).
    static PANIC_CASE: Mutex<Option<String>> = Mutex::new(None);

    pub(super) fn maybe_panic(case_id: &str) {
        let target = PANIC_CASE.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if target.as_deref() == Some(case_id) {
            panic!("injected failure in {case_id}");
        }
    }

    #[test]
    fn a_panicking_case_is_quarantined_and_the_run_goes_on() {
        let tmp = tempfile::tempdir().unwrap();
        let manifest = crate::synth::write_corpus(&tmp.path().join("raw"), 4, 2).unwrap();
        let catalog = Catalog::load(&manifest).unwrap();
        *PANIC_CASE.lock().unwrap() = Some("case002".into());
        let out = tmp.path().join("out");
        let cfg = IngestConfig { jobs: 2, ..IngestConfig::new(out.to_str().unwrap()) };
        let summary = run(&catalog, &cfg, &|_| {});
        *PANIC_CASE.lock().unwrap() = None;
        let summary = summary.unwrap();
        assert!(summary.index.is_some(), "the run published");
        // case002 of both phantom datasets panicked; every other case was ingested.
        assert_eq!(summary.quarantined(), 2);
        assert_eq!(summary.datasets.iter().map(|d| d.ingested).sum::<usize>(), 6);
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("labels/PhantomCT.json")).unwrap()).unwrap();
        let q = &manifest["quarantine"][0];
        assert_eq!(q["case_id"], "case002");
        assert!(q["reason"].as_str().unwrap().contains("panicked: injected failure in case002"), "{q}");
    }
}
