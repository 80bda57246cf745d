//! Launching a stage (DESIGN §10): idempotent (a succeeded stage is skipped, a
//! failed or preempted one continues from its checkpoint as the next attempt),
//! stage 2 gated on a stage-1 final checkpoint that the ledger records and whose
//! hash verifies, every attempt recorded in the ledger before and after it runs.

use std::path::PathBuf;

use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};
use s3_shards::{StoreLocation, StoreOptions, json, open_store};
use serde::Deserialize;
use xxhash_rust::xxh3::Xxh3;

use crate::backend::Backend;
use crate::error::{OrchError, Result};
use crate::ledger::{Attempt, CheckpointRef, Ledger, State, now};
use crate::plan::{IngestPlan, TrainPlan, ingest_job, merge_job, train_job};

/// A training stage to launch.
#[derive(Clone, Debug)]
pub struct StageLaunch {
    /// Root of the run folders (`<runs>/<run-id>/`).
    pub runs: String,
    /// Run id.
    pub run_id: String,
    /// `stage1` or `stage2`.
    pub stage: String,
    /// Its stage file.
    pub stage_file: PathBuf,
    /// Published shards.
    pub data: String,
    /// Ranks.
    pub ranks: usize,
    /// `s3-train`.
    pub train_bin: PathBuf,
    /// `--device` of the ranks.
    pub device: String,
    /// The catalogue the data was ingested from: its pretrain/finetune flags drive
    /// the stage's selection unless the stage file names its own `datasets.catalog`.
    pub catalog: Option<PathBuf>,
    /// Where rank logs go when the run folder is not a local directory.
    pub log_root: PathBuf,
    /// S3 settings.
    pub store_options: StoreOptions,
}

/// Whether a stage file names its own `datasets.catalog`.
fn names_catalog(stage_file: &std::path::Path) -> Result<bool> {
    let text = std::fs::read_to_string(stage_file)
        .map_err(|source| OrchError::Io { file: stage_file.display().to_string(), source })?;
    let v: toml::Value =
        toml::from_str(&text).map_err(|e| OrchError::Config(format!("{}: {e}", stage_file.display())))?;
    Ok(v.get("datasets").and_then(|d| d.get("catalog")).is_some())
}

/// What a launch did.
#[derive(Debug)]
pub enum Launched {
    /// The stage had succeeded already; nothing was started.
    AlreadySucceeded,
    /// `--dry-run`: what would be submitted.
    DryRun(String),
    /// The attempt ran; its stage record after it.
    Ran(crate::ledger::StageRecord),
}

/// `<root>/<name>` for a path or URL.
pub fn join(root: &str, name: &str) -> String {
    format!("{}/{}", root.trim_end_matches('/'), name)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|source| OrchError::Process { what: "starting the I/O runtime".into(), source })
}

/// xxh3 of a whole object, streamed.
pub async fn object_xxh3(store: &dyn ObjectStore, key: &str) -> Result<u64> {
    let path = ObjPath::from(key);
    let got = store.get(&path).await.map_err(|e| match e {
        object_store::Error::NotFound { .. } => s3_shards::ShardError::NotFound(key.to_string()),
        e => s3_shards::ShardError::Store { op: "get", path: path.clone(), source: e },
    })?;
    let mut h = Xxh3::new();
    let mut stream = got.into_stream();
    while let Some(chunk) = stream.try_next().await.map_err(|e| s3_shards::ShardError::Store {
        op: "get",
        path: path.clone(),
        source: e,
    })? {
        h.update(&chunk);
    }
    Ok(h.digest())
}

#[derive(Deserialize)]
struct Latest {
    step: u64,
    dir: String,
}

#[derive(Deserialize)]
struct CheckpointIdentity {
    config_digest: String,
}

#[derive(Deserialize)]
struct SamplerPosition {
    epoch: u64,
}

#[derive(Deserialize)]
struct CheckpointState {
    identity: CheckpointIdentity,
    sampler: SamplerPosition,
}

/// The stage run's latest checkpoint: step, folder, config digest, epoch reached.
async fn latest_checkpoint(run: &StoreLocation) -> Result<Option<(u64, String, String, u64)>> {
    let store = run.store().as_ref();
    let latest: Latest = match json::get_json(store, &ObjPath::from("checkpoints/latest.json")).await {
        Ok(l) => l,
        Err(s3_shards::ShardError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let state: CheckpointState = json::get_json(store, &ObjPath::from(format!("{}/state.json", latest.dir))).await?;
    Ok(Some((latest.step, latest.dir, state.identity.config_digest, state.sampler.epoch)))
}

/// Stage 2's gate: stage 1 succeeded and its final checkpoint is the one recorded.
async fn stage1_checkpoint(ledger: &Ledger, options: &StoreOptions) -> Result<(String, u64)> {
    let s1 = ledger.stage("stage1").filter(|s| s.state == State::Succeeded).ok_or_else(|| {
        OrchError::Refused(format!(
            "run {}: stage 2 starts from stage 1's final checkpoint, and stage 1 has not succeeded \
             (launch stage1 --run {} first)",
            ledger.run, ledger.run
        ))
    })?;
    let ckpt = s1.final_checkpoint.clone().ok_or_else(|| {
        OrchError::Refused(format!("run {}: the ledger records no final stage-1 checkpoint", ledger.run))
    })?;
    let (dir, name) = ckpt
        .url
        .rsplit_once('/')
        .ok_or_else(|| OrchError::Refused(format!("stage-1 checkpoint URL {} has no file name", ckpt.url)))?;
    let loc = open_store(dir, options)?;
    let found = object_xxh3(loc.store().as_ref(), name)
        .await
        .map_err(|e| OrchError::Refused(format!("stage 1's final checkpoint {} cannot be read: {e}", ckpt.url)))?;
    if found != ckpt.xxh3 {
        return Err(OrchError::Refused(format!(
            "stage 1's final checkpoint {} has xxh3 {found:016x}, the ledger recorded {:016x}: it changed since \
             stage 1 ended; not starting stage 2 from it",
            ckpt.url, ckpt.xxh3
        )));
    }
    Ok((ckpt.url, ckpt.xxh3))
}

/// Two attempts of a stage at once would write the same checkpoints: refused while
/// the newest attempt's processes still run; one whose processes are gone without a
/// result (the launcher died) is marked failed.
fn refuse_if_running(ledger: &mut Ledger, stage: &str, backend: &dyn Backend) -> Result<()> {
    let run = ledger.run.clone();
    let Some(rec) = ledger.stages.iter_mut().find(|s| s.name == stage) else { return Ok(()) };
    let Some(a) = rec.attempts.last_mut() else { return Ok(()) };
    if a.state != State::Running || a.backend != backend.name() {
        return Ok(());
    }
    if backend.is_running(&crate::backend::Submission { ids: a.job_ids.clone() }) {
        return Err(OrchError::Refused(format!(
            "run {run}: {stage} attempt {} is still running (processes {}); wait for it, or `s3-orch cancel` it first",
            a.attempt,
            a.job_ids.join(", ")
        )));
    }
    a.state = State::Failed;
    a.error = Some("the processes ended without the launcher recording a result".into());
    a.ended = Some(now());
    rec.state = State::Failed;
    Ok(())
}

/// The epoch count of a stage file (to tell a finished stage from one its step or
/// time budget stopped).
fn stage_epochs(stage_file: &std::path::Path) -> Result<u64> {
    let text = std::fs::read_to_string(stage_file)
        .map_err(|source| OrchError::Io { file: stage_file.display().to_string(), source })?;
    let v: toml::Value =
        toml::from_str(&text).map_err(|e| OrchError::Config(format!("{}: {e}", stage_file.display())))?;
    v.get("epochs")
        .and_then(toml::Value::as_integer)
        .and_then(|e| u64::try_from(e).ok())
        .ok_or_else(|| OrchError::Config(format!("{}: no epochs", stage_file.display())))
}

/// A token no other job shares (the collective turns away processes without it).
fn job_token(run_id: &str, stage: &str, attempt: u32) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let seed = format!("{run_id}/{stage}/{attempt}/{}/{nanos}", std::process::id());
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(seed.as_bytes()))
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|source| OrchError::Process { what: "finding a free port".into(), source })?;
    l.local_addr().map(|a| a.port()).map_err(|source| OrchError::Process { what: "finding a free port".into(), source })
}

/// Launches (or resumes, or skips) a training stage and waits for it.
pub fn launch_stage(spec: &StageLaunch, backend: &dyn Backend, dry_run: bool, say: &dyn Fn(&str)) -> Result<Launched> {
    let rt = runtime()?;
    let run_url = join(&spec.runs, &spec.run_id);
    let run = open_run(&run_url, &spec.store_options, dry_run)?;
    let mut ledger = rt.block_on(Ledger::load_or_new(run.store().as_ref(), &spec.run_id))?;
    if ledger.stage(&spec.stage).is_some_and(|s| s.state == State::Succeeded) {
        say(&format!("run {}: {} already succeeded; nothing to do", spec.run_id, spec.stage));
        return Ok(Launched::AlreadySucceeded);
    }
    refuse_if_running(&mut ledger, &spec.stage, backend)?;
    let init =
        if spec.stage == "stage2" { Some(rt.block_on(stage1_checkpoint(&ledger, &spec.store_options))?) } else { None };
    let attempt = ledger.stage(&spec.stage).map_or(0, |s| s.attempts.len() as u32) + 1;
    let stage_run = join(&run_url, &spec.stage);
    let log_dir = log_dir_for(&run, &spec.log_root, &spec.run_id, &spec.stage, attempt);
    let plan = TrainPlan {
        train_bin: spec.train_bin.clone(),
        stage_file: spec.stage_file.clone(),
        data: spec.data.clone(),
        run_dir: stage_run.clone(),
        init: init.clone(),
        catalog: match &spec.catalog {
            Some(c) if !names_catalog(&spec.stage_file)? => Some(c.clone()),
            _ => None,
        },
        ranks: spec.ranks,
        device: spec.device.clone(),
    };
    if dry_run {
        let job = train_job(&plan, &spec.run_id, &spec.stage, attempt, 0, None, log_dir);
        return Ok(Launched::DryRun(backend.render(&job)));
    }
    let data = open_store(&spec.data, &spec.store_options)?;
    let index_xxh3 = rt.block_on(object_xxh3(data.store().as_ref(), s3_shards::INDEX_KEY)).map_err(|e| {
        OrchError::Refused(format!("no published data at {} ({e}); run s3-orch launch ingest first", data.url()))
    })?;
    let token = job_token(&spec.run_id, &spec.stage, attempt);
    let job = train_job(&plan, &spec.run_id, &spec.stage, attempt, free_port()?, Some(&token), log_dir.clone());
    say(&format!(
        "run {}: {} attempt {attempt} on {} ({} rank(s)); logs in {}",
        spec.run_id,
        spec.stage,
        backend.name(),
        job.ranks.len(),
        log_dir.display()
    ));
    let submission = backend.submit(&job)?;
    {
        let rec = ledger.stage_mut(&spec.stage);
        rec.state = State::Running;
        rec.init = init.as_ref().map(|(url, _)| url.clone());
        rec.attempts.push(Attempt::running(
            attempt,
            backend.name(),
            submission.ids.clone(),
            Some(format!("{index_xxh3:016x}")),
        ));
    }
    if let Err(e) = rt.block_on(ledger.save(run.store().as_ref())) {
        let _ = backend.cancel(&submission);
        return Err(e);
    }
    let end = backend.wait(&job, &submission)?;
    let stage_loc = open_store(&stage_run, &spec.store_options)?;
    let latest = rt.block_on(latest_checkpoint(&stage_loc))?;
    let state = if let Some(rank) = end.failed_rank {
        State::Failed.with_error(format!(
            "rank {rank} exited with {} (log: {})",
            end.exit_codes[rank].map_or("a signal".to_string(), |c| format!("code {c}")),
            log_dir.join(format!("rank-{rank}.log")).display()
        ))
    } else if end.exit_codes.contains(&Some(crate::backend::local::PREEMPTED)) {
        (State::Preempted, None)
    } else {
        // Exit 0 after a step or time budget (max_steps, max_minutes) is not the end
        // of the stage: its checkpoint is no final one for stage 2 to start from.
        let epochs = stage_epochs(&spec.stage_file)?;
        match &latest {
            Some((.., epoch)) if *epoch >= epochs => (State::Succeeded, None),
            Some((step, .., epoch)) => (
                State::Preempted,
                Some(format!(
                    "stopped by its step or time budget at step {step}, epoch {epoch} of {epochs}; launch again to continue"
                )),
            ),
            None => State::Failed.with_error("the ranks exited 0 but left no checkpoint".into()),
        }
    };
    let final_checkpoint = match (&state.0, &latest) {
        (State::Succeeded, Some((_, dir, ..))) => {
            let key = format!("{dir}/weights.safetensors");
            let xxh3 = rt.block_on(object_xxh3(stage_loc.store().as_ref(), &key))?;
            Some(CheckpointRef { url: join(stage_loc.url(), &key), xxh3 })
        }
        _ => None,
    };
    let rec = ledger.stage_mut(&spec.stage);
    let a = rec.attempts.last_mut().expect("pushed above");
    (a.state, a.error) = state.clone();
    a.ended = Some(now());
    a.exit_codes = end.exit_codes.clone();
    a.last_step = latest.as_ref().map(|l| l.0);
    a.config_digest = latest.as_ref().map(|l| l.2.clone());
    rec.state = state.0;
    rec.final_checkpoint = final_checkpoint;
    let record = rec.clone();
    rt.block_on(ledger.save(run.store().as_ref()))?;
    Ok(Launched::Ran(record))
}

impl State {
    fn with_error(self, e: String) -> (State, Option<String>) {
        (self, Some(e))
    }
}

/// `status`: the ledger, with running attempts checked against the scheduler; an
/// attempt whose processes are gone is marked failed (and said so).
pub fn status(
    runs: &str,
    run_id: &str,
    options: &StoreOptions,
    backend: &dyn Backend,
    say: &dyn Fn(&str),
) -> Result<Ledger> {
    let rt = runtime()?;
    let run = open_store(&join(runs, run_id), options)?;
    let store = run.store().as_ref();
    let exists = rt.block_on(store.head(&ObjPath::from(crate::ledger::LEDGER))).is_ok();
    if !exists {
        return Err(OrchError::Refused(format!("no run {run_id} under {runs} (no ledger.json)")));
    }
    let mut ledger = rt.block_on(Ledger::load_or_new(store, run_id))?;
    let mut changed = false;
    for s in &mut ledger.stages {
        let name = s.name.clone();
        if let Some(a) = s.attempts.last_mut()
            && a.state == State::Running
            && a.backend == backend.name()
            && !backend.is_running(&crate::backend::Submission { ids: a.job_ids.clone() })
        {
            say(&format!("{name} attempt {}: its processes are gone without a result; marked failed", a.attempt));
            a.state = State::Failed;
            a.error = Some("the processes ended without the launcher recording a result".into());
            a.ended = Some(now());
            s.state = State::Failed;
            changed = true;
        }
    }
    if changed {
        rt.block_on(ledger.save(store))?;
    }
    Ok(ledger)
}

/// An ingest to launch: N workers, then the merge.
#[derive(Clone, Debug)]
pub struct IngestLaunch {
    /// Root of the run folders.
    pub runs: String,
    /// Run id.
    pub run_id: String,
    /// What to run.
    pub plan: IngestPlan,
    /// Where worker logs go when the run folder is not a local directory.
    pub log_root: PathBuf,
    /// S3 settings.
    pub store_options: StoreOptions,
}

fn log_dir_for(run: &StoreLocation, log_root: &std::path::Path, run_id: &str, stage: &str, attempt: u32) -> PathBuf {
    match run.url().strip_prefix("file://") {
        Some(dir) => PathBuf::from(dir).join("logs").join(stage).join(format!("attempt-{attempt}")),
        None => log_root.join(run_id).join(stage).join(format!("attempt-{attempt}")),
    }
}

/// The run folder's store. A dry run touches nothing: a local run folder that does
/// not exist yet is not created (opening a local store creates its directory), and
/// stands for an empty run.
fn open_run(url: &str, options: &StoreOptions, dry_run: bool) -> Result<StoreLocation> {
    let local =
        if url.contains("://") { url.strip_prefix("file://").map(PathBuf::from) } else { Some(PathBuf::from(url)) };
    if dry_run
        && let Some(dir) = local
        && !dir.exists()
    {
        let abs =
            std::path::absolute(&dir).map_err(|source| OrchError::Io { file: dir.display().to_string(), source })?;
        let empty: std::sync::Arc<dyn ObjectStore> = std::sync::Arc::new(object_store::memory::InMemory::new());
        return Ok(StoreLocation::from_store(format!("file://{}", abs.display()), empty));
    }
    Ok(open_store(url, options)?)
}

/// Launches (or skips) the ingest of a run: its workers, then the merge.
pub fn launch_ingest(
    spec: &IngestLaunch,
    backend: &dyn Backend,
    dry_run: bool,
    say: &dyn Fn(&str),
) -> Result<Launched> {
    let rt = runtime()?;
    let run = open_run(&join(&spec.runs, &spec.run_id), &spec.store_options, dry_run)?;
    let mut ledger = rt.block_on(Ledger::load_or_new(run.store().as_ref(), &spec.run_id))?;
    if ledger.stage("ingest").is_some_and(|s| s.state == State::Succeeded) {
        say(&format!("run {}: ingest already succeeded; nothing to do", spec.run_id));
        return Ok(Launched::AlreadySucceeded);
    }
    refuse_if_running(&mut ledger, "ingest", backend)?;
    let attempt = ledger.stage("ingest").map_or(0, |s| s.attempts.len() as u32) + 1;
    let log_dir = log_dir_for(&run, &spec.log_root, &spec.run_id, "ingest", attempt);
    let workers = ingest_job(&spec.plan, &spec.run_id, attempt, log_dir.clone());
    let merge = (spec.plan.workers > 1).then(|| merge_job(&spec.plan, &spec.run_id, attempt, log_dir.join("merge")));
    if dry_run {
        let mut text = backend.render(&workers);
        if let Some(m) = &merge {
            text.push_str("# then, once every worker succeeded:\n");
            text.push_str(&backend.render(m));
        }
        return Ok(Launched::DryRun(text));
    }
    say(&format!(
        "run {}: ingest attempt {attempt} on {} ({} worker(s)); logs in {}",
        spec.run_id,
        backend.name(),
        workers.ranks.len(),
        log_dir.display()
    ));
    let submission = backend.submit(&workers)?;
    {
        let rec = ledger.stage_mut("ingest");
        rec.state = State::Running;
        rec.attempts.push(Attempt::running(attempt, backend.name(), submission.ids.clone(), None));
    }
    if let Err(e) = rt.block_on(ledger.save(run.store().as_ref())) {
        let _ = backend.cancel(&submission);
        return Err(e);
    }
    let end = backend.wait(&workers, &submission)?;
    let mut exit_codes = end.exit_codes.clone();
    let mut error = end.failed_rank.map(|w| {
        format!(
            "worker {w} exited with {} (log: {})",
            end.exit_codes[w].map_or("a signal".to_string(), |c| format!("code {c}")),
            log_dir.join(format!("rank-{w}.log")).display()
        )
    });
    if error.is_none()
        && let Some(m) = &merge
    {
        let sub = backend.submit(m)?;
        let e = backend.wait(m, &sub)?;
        exit_codes.extend(e.exit_codes.iter().copied());
        if e.failed_rank.is_some() {
            error = Some(format!(
                "merge exited with {} (log: {})",
                e.exit_codes[0].map_or("a signal".to_string(), |c| format!("code {c}")),
                m.log_dir.join("rank-0.log").display()
            ));
        }
    }
    let index = match error {
        None => {
            let out = open_store(&spec.plan.out, &spec.store_options)?;
            Some(rt.block_on(object_xxh3(out.store().as_ref(), s3_shards::INDEX_KEY))?)
        }
        Some(_) => None,
    };
    let rec = ledger.stage_mut("ingest");
    let a = rec.attempts.last_mut().expect("pushed above");
    a.state = if error.is_some() { State::Failed } else { State::Succeeded };
    a.error = error;
    a.ended = Some(now());
    a.exit_codes = exit_codes;
    a.data_index_xxh3 = index.map(|x| format!("{x:016x}"));
    rec.state = a.state;
    let record = rec.clone();
    rt.block_on(ledger.save(run.store().as_ref()))?;
    Ok(Launched::Ran(record))
}

/// The log file of one rank of an attempt (the newest attempt by default) of a run
/// whose run folder is a local directory, or under `log_root` otherwise.
pub fn log_path(
    runs: &str,
    run_id: &str,
    stage: &str,
    attempt: Option<u32>,
    rank: usize,
    log_root: &std::path::Path,
    options: &StoreOptions,
) -> Result<PathBuf> {
    let rt = runtime()?;
    let run = open_run(&join(runs, run_id), options, true)?;
    let ledger = rt.block_on(Ledger::load_or_new(run.store().as_ref(), run_id))?;
    let record = ledger
        .stage(stage)
        .ok_or_else(|| OrchError::Refused(format!("run {run_id} has no stage {stage} in its ledger")))?;
    let attempt = match attempt {
        Some(a) if record.attempts.iter().any(|x| x.attempt == a) => a,
        Some(a) => return Err(OrchError::Refused(format!("{stage} of run {run_id} has no attempt {a}"))),
        None => record.attempts.last().map_or(1, |a| a.attempt),
    };
    Ok(log_dir_for(&run, log_root, run_id, stage, attempt).join(format!("rank-{rank}.log")))
}

/// Stops the running attempts of a run (SIGTERM: the ranks checkpoint and exit 75,
/// so a relaunch continues); returns the stages it signalled.
pub fn cancel(runs: &str, run_id: &str, options: &StoreOptions, backend: &dyn Backend) -> Result<Vec<String>> {
    let ledger = status(runs, run_id, options, backend, &|_| {})?;
    let mut signalled = Vec::new();
    for s in &ledger.stages {
        if let Some(a) = s.attempts.last()
            && a.state == State::Running
            && a.backend == backend.name()
        {
            backend.cancel(&crate::backend::Submission { ids: a.job_ids.clone() })?;
            signalled.push(s.name.clone());
        }
    }
    Ok(signalled)
}
