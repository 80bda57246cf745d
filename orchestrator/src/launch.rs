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
use crate::plan::{Hooks, IngestPlan, Job, TrainPlan, eval_job, ingest_job, merge_job, train_job};

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
    /// Nodes (pods) the ranks spread over.
    pub nodes: usize,
    /// Extra environment of every rank.
    pub env: std::collections::BTreeMap<String, String>,
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
    /// Submitted to a scheduler that holds the chain; its record as submitted
    /// ([`wait_stage`] follows it).
    Submitted(crate::ledger::StageRecord),
}

/// `<root>/<name>` for a path or URL.
pub fn join(root: &str, name: &str) -> String {
    format!("{}/{}", root.trim_end_matches('/'), name)
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
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
pub(crate) async fn latest_checkpoint(run: &StoreLocation) -> Result<Option<(u64, String, String, u64)>> {
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
pub(crate) async fn stage1_checkpoint(ledger: &Ledger, options: &StoreOptions) -> Result<(String, u64)> {
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
fn refuse_if_running(ledger: &mut Ledger, stage: &str) -> Result<()> {
    let run = ledger.run.clone();
    let Some(rec) = ledger.stages.iter_mut().find(|s| s.name == stage) else { return Ok(()) };
    let Some(a) = rec.attempts.last_mut() else { return Ok(()) };
    if a.state != State::Running {
        return Ok(());
    }
    // The attempt's own scheduler knows, whichever backend this launch uses.
    if crate::backend::by_name(&a.backend)?.is_running(&crate::backend::Submission { ids: a.job_ids.clone() }) {
        return Err(OrchError::Refused(format!(
            "run {run}: {stage} attempt {} is still running on {} (jobs {}); wait for it, or `s3-orch cancel` it first",
            a.attempt,
            a.backend,
            a.job_ids.join(", ")
        )));
    }
    a.state = State::Failed;
    a.error = Some("the job ended without the launcher recording a result".into());
    a.ended = Some(now());
    rec.state = State::Failed;
    Ok(())
}

/// The epoch count of a stage file (to tell a finished stage from one its step or
/// time budget stopped).
pub(crate) fn stage_epochs(stage_file: &std::path::Path) -> Result<u64> {
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
pub(crate) fn job_token(run_id: &str, stage: &str, attempt: u32) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let seed = format!("{run_id}/{stage}/{attempt}/{}/{nanos}", std::process::id());
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(seed.as_bytes()))
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|source| OrchError::Process { what: "finding a free port".into(), source })?;
    l.local_addr().map(|a| a.port()).map_err(|source| OrchError::Process { what: "finding a free port".into(), source })
}

/// Records a submitted attempt as the stage's running one (a new attempt clears an
/// old cancel request). A ledger that cannot be saved cancels the job: an attempt
/// nobody recorded would run unseen.
fn record_running(
    rt: &tokio::runtime::Runtime,
    ledger: &mut Ledger,
    run: &StoreLocation,
    stage: &str,
    attempt: Attempt,
    backend: &dyn Backend,
    submission: &crate::backend::Submission,
) -> Result<crate::ledger::StageRecord> {
    let rec = ledger.stage_mut(stage);
    rec.state = State::Running;
    rec.cancel_requested = false;
    rec.attempts.push(attempt);
    let record = rec.clone();
    if let Err(e) = rt.block_on(ledger.save(run.store().as_ref())) {
        let _ = backend.cancel(submission);
        return Err(e);
    }
    Ok(record)
}

/// The previous stage of the chain: the one a stage's scheduler job waits for.
fn previous(stage: &str) -> Option<&'static str> {
    match stage {
        "stage1" => Some("ingest"),
        "stage2" => Some("stage1"),
        "eval" => Some("stage2"),
        _ => None,
    }
}

/// The scheduler jobs of `stage`'s newest attempt if it is still running on `backend`:
/// what a job of the next stage starts after.
fn running_jobs(ledger: &Ledger, stage: &str, backend: &dyn Backend) -> Option<Vec<String>> {
    let a = ledger.stage(stage)?.attempts.last()?;
    (a.state == State::Running && a.backend == backend.name()).then(|| a.job_ids.clone())
}

/// Launches (or resumes, or skips) a training stage and waits for it; on a backend
/// whose jobs record themselves it submits and returns (after the previous stage's
/// job when that one still runs).
pub fn launch_stage(spec: &StageLaunch, backend: &dyn Backend, dry_run: bool, say: &dyn Fn(&str)) -> Result<Launched> {
    let rt = runtime()?;
    let run_url = join(&spec.runs, &spec.run_id);
    let run = open_run(&run_url, &spec.store_options, dry_run)?;
    let mut ledger = rt.block_on(Ledger::load_or_new(run.store().as_ref(), &spec.run_id))?;
    if ledger.stage(&spec.stage).is_some_and(|s| s.state == State::Succeeded) {
        say(&format!("run {}: {} already succeeded; nothing to do", spec.run_id, spec.stage));
        return Ok(Launched::AlreadySucceeded);
    }
    refuse_if_running(&mut ledger, &spec.stage)?;
    let in_job = backend.records_in_job();
    let after = if in_job { previous(&spec.stage).and_then(|p| running_jobs(&ledger, p, backend)) } else { None };
    let init = if spec.stage != "stage2" || in_job {
        // A job that records itself checks the gate when it starts (`s3-orch job gate`).
        if in_job && spec.stage == "stage2" && after.is_none() && !dry_run {
            rt.block_on(stage1_checkpoint(&ledger, &spec.store_options))?;
        }
        None
    } else {
        match rt.block_on(stage1_checkpoint(&ledger, &spec.store_options)) {
            Ok((url, xxh3)) => Some((url, format!("{xxh3:016x}"))),
            // A dry run shows stage 2 before stage 1 has run: its init is a placeholder.
            Err(OrchError::Refused(_)) if dry_run => {
                Some(("<stage 1's final checkpoint>".to_string(), "<its xxh3>".to_string()))
            }
            Err(e) => return Err(e),
        }
    };
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
        nodes: spec.nodes,
        device: spec.device.clone(),
        env: spec.env.clone(),
    };
    let hooks = in_job.then(|| Hooks {
        runs: spec.runs.clone(),
        stage_file: Some(spec.stage_file.clone()),
        data: Some(spec.data.clone()),
        gate: spec.stage == "stage2",
        ..Default::default()
    });
    let with_chain = |mut job: Job| {
        job.after = after.clone().unwrap_or_default();
        job.hooks = hooks.clone();
        if in_job {
            // The job names its attempt when it starts (a requeue is the next one).
            job.log_dir = job.log_dir.parent().map(PathBuf::from).unwrap_or(job.log_dir);
        }
        job
    };
    if dry_run {
        let job = with_chain(train_job(&plan, &spec.run_id, &spec.stage, attempt, 0, None, log_dir));
        return Ok(Launched::DryRun(backend.render(&job)));
    }
    let data = open_store(&spec.data, &spec.store_options)?;
    let index_xxh3 = match rt.block_on(object_xxh3(data.store().as_ref(), s3_shards::INDEX_KEY)) {
        Ok(x) => Some(format!("{x:016x}")),
        // The ingest this job starts after publishes it.
        Err(_) if after.is_some() => None,
        Err(e) => {
            return Err(OrchError::Refused(format!(
                "no published data at {} ({e}); run s3-orch launch ingest first",
                data.url()
            )));
        }
    };
    let token = job_token(&spec.run_id, &spec.stage, attempt);
    let job =
        with_chain(train_job(&plan, &spec.run_id, &spec.stage, attempt, free_port()?, Some(&token), log_dir.clone()));
    say(&format!(
        "run {}: {} attempt {attempt} on {} ({} rank(s){}); logs in {}",
        spec.run_id,
        spec.stage,
        backend.name(),
        job.ranks.len(),
        if job.after.is_empty() { String::new() } else { format!(", after job {}", job.after.join(",")) },
        job.log_dir.display()
    ));
    let submission = backend.submit(&job)?;
    ledger.stage_mut(&spec.stage).init = init.as_ref().map(|(url, _)| url.clone());
    let running = Attempt::running(attempt, backend.name(), submission.ids.clone(), index_xxh3);
    let record = record_running(&rt, &mut ledger, &run, &spec.stage, running, backend, &submission)?;
    if in_job {
        return Ok(Launched::Submitted(record));
    }
    let end = backend.wait(&job, &submission)?;
    let blame = end.failed_rank.map(|rank| {
        format!(
            "rank {rank} exited with {} (log: {})",
            end.exit_codes[rank].map_or("a signal".to_string(), |c| format!("code {c}")),
            log_dir.join(format!("rank-{rank}.log")).display()
        )
    });
    let stage_loc = open_store(&stage_run, &spec.store_options)?;
    let mut outcome = rt.block_on(training_outcome(&stage_loc, &spec.stage_file, &end.exit_codes, blame, say))?;
    // `s3-orch cancel` (another process) wrote the ledger while this attempt ran:
    // read it again, so its request is not overwritten and counts.
    ledger = rt.block_on(Ledger::load_or_new(run.store().as_ref(), &spec.run_id))?;
    let rec = ledger.stage_mut(&spec.stage);
    if rec.cancel_requested {
        outcome.cancelled();
    }
    outcome.apply(rec, end.exit_codes.clone());
    let record = rec.clone();
    rt.block_on(ledger.save(run.store().as_ref()))?;
    Ok(Launched::Ran(record))
}

/// How a training attempt ended, from its exit codes and what it left in its run folder.
#[derive(Debug)]
pub(crate) struct Outcome {
    state: State,
    error: Option<String>,
    last_step: Option<u64>,
    config_digest: Option<String>,
    final_checkpoint: Option<CheckpointRef>,
    metrics: std::collections::BTreeMap<String, f64>,
}

impl Outcome {
    /// A stop `s3-orch cancel` asked for is a preemption, not a failure, even where
    /// the scheduler's stop took the ranks' exit codes with it (Kubernetes deletes the
    /// pods): the stage resumes from its last checkpoint on the next launch.
    pub(crate) fn cancelled(&mut self) {
        if self.state == State::Failed && self.last_step.is_some() {
            self.state = State::Preempted;
            self.error = Some(format!(
                "cancelled by s3-orch cancel ({}); launch again to continue",
                self.error.take().unwrap_or_default()
            ));
        }
    }

    /// Closes the stage's newest attempt with it.
    pub(crate) fn apply(self, rec: &mut crate::ledger::StageRecord, exit_codes: Vec<Option<i32>>) {
        if let Some(a) = rec.attempts.last_mut() {
            (a.state, a.error, a.last_step, a.config_digest) =
                (self.state, self.error, self.last_step, self.config_digest);
            a.metrics = self.metrics;
            a.ended = Some(now());
            a.exit_codes = exit_codes;
        }
        rec.state = self.state;
        rec.final_checkpoint = self.final_checkpoint;
    }
}

/// `failure`: the blamed rank's error when one failed. Exit 75 is a preemption; exit
/// 0 is success only if the stage reached its last epoch (a step or time budget
/// stops earlier, and that checkpoint is no final one for stage 2 to start from).
pub(crate) async fn training_outcome(
    stage_loc: &StoreLocation,
    stage_file: &std::path::Path,
    exit_codes: &[Option<i32>],
    failure: Option<String>,
    say: &dyn Fn(&str),
) -> Result<Outcome> {
    let latest = latest_checkpoint(stage_loc).await?;
    let (state, error) = if let Some(e) = failure {
        (State::Failed, Some(e))
    } else if exit_codes.contains(&Some(crate::backend::local::PREEMPTED)) {
        (State::Preempted, None)
    } else {
        let epochs = stage_epochs(stage_file)?;
        match &latest {
            Some((.., epoch)) if *epoch >= epochs => (State::Succeeded, None),
            Some((step, .., epoch)) => (
                State::Preempted,
                Some(format!(
                    "stopped by its step or time budget at step {step}, epoch {epoch} of {epochs}; launch again to continue"
                )),
            ),
            None => (State::Failed, Some("the ranks exited 0 but left no checkpoint".into())),
        }
    };
    let final_checkpoint = match (state, &latest) {
        (State::Succeeded, Some((_, dir, ..))) => {
            let key = format!("{dir}/weights.safetensors");
            let xxh3 = object_xxh3(stage_loc.store().as_ref(), &key).await?;
            Some(CheckpointRef { url: join(stage_loc.url(), &key), xxh3 })
        }
        _ => None,
    };
    let metrics = crate::stage_metrics::last_step(stage_loc.store().as_ref()).await.unwrap_or_else(|e| {
        say(&format!("no metrics to record ({e})"));
        Default::default()
    });
    Ok(Outcome {
        state,
        error,
        last_step: latest.as_ref().map(|l| l.0),
        config_digest: latest.as_ref().map(|l| l.2.clone()),
        final_checkpoint,
        metrics,
    })
}

/// The pipeline's last step: `s3-train eval` of a succeeded training stage (`spec.stage`,
/// normally stage 2) with its final weights, recorded as the ledger's `eval` stage
/// with Dice at each click count.
pub fn launch_eval(spec: &StageLaunch, backend: &dyn Backend, dry_run: bool, say: &dyn Fn(&str)) -> Result<Launched> {
    let rt = runtime()?;
    let run_url = join(&spec.runs, &spec.run_id);
    let run = open_run(&run_url, &spec.store_options, dry_run)?;
    let mut ledger = rt.block_on(Ledger::load_or_new(run.store().as_ref(), &spec.run_id))?;
    if ledger.stage("eval").is_some_and(|s| s.state == State::Succeeded) {
        say(&format!("run {}: eval already succeeded; nothing to do", spec.run_id));
        return Ok(Launched::AlreadySucceeded);
    }
    refuse_if_running(&mut ledger, "eval")?;
    let attempt = ledger.stage("eval").map_or(0, |s| s.attempts.len() as u32) + 1;
    let stage_run = join(&run_url, &spec.stage);
    let log_dir = log_dir_for(&run, &spec.log_root, &spec.run_id, "eval", attempt);
    let plan = TrainPlan {
        train_bin: spec.train_bin.clone(),
        stage_file: spec.stage_file.clone(),
        data: spec.data.clone(),
        run_dir: stage_run.clone(),
        init: None,
        catalog: None,
        ranks: 1,
        nodes: 1,
        device: spec.device.clone(),
        env: spec.env.clone(),
    };
    let mut job = eval_job(&plan, &spec.run_id, attempt, log_dir.clone());
    let in_job = backend.records_in_job();
    let after = if in_job { running_jobs(&ledger, &spec.stage, backend) } else { None };
    if in_job {
        job.after = after.clone().unwrap_or_default();
        job.hooks = Some(Hooks { runs: spec.runs.clone(), evaluated: Some(spec.stage.clone()), ..Default::default() });
        job.log_dir = job.log_dir.parent().map(PathBuf::from).unwrap_or(job.log_dir);
    }
    if dry_run {
        return Ok(Launched::DryRun(backend.render(&job)));
    }
    if after.is_none() && ledger.stage(&spec.stage).is_none_or(|s| s.state != State::Succeeded) {
        return Err(OrchError::Refused(format!(
            "run {}: eval reads {}'s final weights, and {} has not succeeded",
            spec.run_id, spec.stage, spec.stage
        )));
    }
    say(&format!(
        "run {}: eval of {} on {}; log in {}",
        spec.run_id,
        spec.stage,
        backend.name(),
        job.log_dir.display()
    ));
    let submission = backend.submit(&job)?;
    let running = Attempt::running(attempt, backend.name(), submission.ids.clone(), None);
    let record = record_running(&rt, &mut ledger, &run, "eval", running, backend, &submission)?;
    if in_job {
        return Ok(Launched::Submitted(record));
    }
    let end = backend.wait(&job, &submission)?;
    let stage_loc = open_store(&stage_run, &spec.store_options)?;
    let failure = end.failed_rank.map(|_| {
        format!(
            "eval exited with {} (log: {})",
            end.exit_codes[0].map_or("a signal".to_string(), |c| format!("code {c}")),
            log_dir.join("rank-0.log").display()
        )
    });
    rt.block_on(close_eval(&mut ledger, &spec.stage, &stage_loc, failure, end.exit_codes.clone()));
    let rec = ledger.stage_mut("eval");
    let record = rec.clone();
    rt.block_on(ledger.save(run.store().as_ref()))?;
    Ok(Launched::Ran(record))
}

/// Closes the `eval` stage's newest attempt: Dice at each click count from the
/// evaluated stage's `eval/val.json`, or failed with `failure`.
pub(crate) async fn close_eval(
    ledger: &mut Ledger,
    evaluated: &str,
    stage_loc: &StoreLocation,
    failure: Option<String>,
    exit_codes: Vec<Option<i32>>,
) {
    let (state, error, metrics) = match failure {
        Some(e) => (State::Failed, Some(e), Default::default()),
        None => match crate::stage_metrics::eval_dice(stage_loc.store().as_ref()).await {
            Ok(m) => (State::Succeeded, None, m),
            Err(e) => {
                (State::Failed, Some(format!("eval exited 0 but its report cannot be read: {e}")), Default::default())
            }
        },
    };
    let init = ledger.stage(evaluated).and_then(|s| s.final_checkpoint.as_ref()).map(|c| c.url.clone());
    let rec = ledger.stage_mut("eval");
    if let Some(a) = rec.attempts.last_mut() {
        (a.state, a.error, a.metrics) = (state, error, metrics);
        a.ended = Some(now());
        a.exit_codes = exit_codes;
    }
    rec.state = state;
    rec.init = init;
}

/// Follows a stage submitted to a scheduler that holds the chain until its newest
/// attempt ended and no job of it is queued any more (a requeued job is followed
/// into its next attempt); an attempt whose job left the queue without recording an
/// end is marked failed.
pub fn wait_stage(
    runs: &str,
    run_id: &str,
    stage: &str,
    options: &StoreOptions,
    poll: std::time::Duration,
    say: &dyn Fn(&str),
) -> Result<crate::ledger::StageRecord> {
    let mut last_seen = None;
    loop {
        let ledger = status(runs, run_id, options, say)?;
        let rec = ledger
            .stage(stage)
            .cloned()
            .ok_or_else(|| OrchError::Refused(format!("run {run_id} has no stage {stage} in its ledger")))?;
        let now_seen = rec.attempts.last().map(|a| (a.attempt, a.state));
        if now_seen != last_seen {
            if let Some((n, st)) = now_seen {
                say(&format!("run {run_id}: {stage} attempt {n} {}", st.name()));
            }
            last_seen = now_seen;
        }
        let queued = rec.attempts.last().is_some_and(|a| {
            crate::backend::by_name(&a.backend)
                .map(|b| b.is_running(&crate::backend::Submission { ids: a.job_ids.clone() }))
                .unwrap_or(false)
        });
        if rec.state != State::Running && !queued {
            return Ok(rec);
        }
        std::thread::sleep(poll);
    }
}

/// `status`: the ledger, with running attempts checked against the scheduler; an
/// attempt whose processes are gone is marked failed (and said so).
pub fn status(runs: &str, run_id: &str, options: &StoreOptions, say: &dyn Fn(&str)) -> Result<Ledger> {
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
            && !crate::backend::by_name(&a.backend)?.is_running(&crate::backend::Submission { ids: a.job_ids.clone() })
        {
            say(&format!("{name} attempt {}: its job is gone without a result; marked failed", a.attempt));
            a.state = State::Failed;
            a.error = Some("its job ended without recording a result (killed, or a job it waited for failed)".into());
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

pub(crate) fn log_dir_for(
    run: &StoreLocation,
    log_root: &std::path::Path,
    run_id: &str,
    stage: &str,
    attempt: u32,
) -> PathBuf {
    match run.url().strip_prefix("file://") {
        Some(dir) => PathBuf::from(dir).join("logs").join(stage).join(format!("attempt-{attempt}")),
        None => log_root.join(run_id).join(stage).join(format!("attempt-{attempt}")),
    }
}

/// The run folder's store. A dry run touches nothing: a local run folder that does
/// not exist yet is not created (opening a local store creates its directory), and
/// stands for an empty run.
pub(crate) fn open_run(url: &str, options: &StoreOptions, dry_run: bool) -> Result<StoreLocation> {
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
    refuse_if_running(&mut ledger, "ingest")?;
    let attempt = ledger.stage("ingest").map_or(0, |s| s.attempts.len() as u32) + 1;
    let log_dir = log_dir_for(&run, &spec.log_root, &spec.run_id, "ingest", attempt);
    let mut workers = ingest_job(&spec.plan, &spec.run_id, attempt, log_dir.clone());
    let mut merge =
        (spec.plan.workers > 1).then(|| merge_job(&spec.plan, &spec.run_id, attempt, log_dir.join("merge")));
    let in_job = backend.records_in_job();
    if in_job {
        // The job that publishes records the end: the merge, or the one worker.
        let hooks = Some(Hooks { runs: spec.runs.clone(), out: Some(spec.plan.out.clone()), ..Default::default() });
        match &mut merge {
            Some(m) => {
                m.hooks = hooks;
                // Known once the array is submitted.
                m.after = vec!["<the worker array's job id>".into()];
            }
            None => workers.hooks = hooks,
        }
    }
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
    let mut submission = backend.submit(&workers)?;
    if in_job && let Some(m) = &mut merge {
        m.after = submission.ids.clone();
        match backend.submit(m) {
            Ok(s) => submission.ids.extend(s.ids),
            Err(e) => {
                let _ = backend.cancel(&submission);
                return Err(e);
            }
        }
    }
    let running = Attempt::running(attempt, backend.name(), submission.ids.clone(), None);
    let record = record_running(&rt, &mut ledger, &run, "ingest", running, backend, &submission)?;
    if in_job {
        return Ok(Launched::Submitted(record));
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
    let rec = ledger.stage_mut("ingest");
    rt.block_on(close_ingest(rec, &spec.plan.out, &spec.store_options, error, exit_codes))?;
    let record = rec.clone();
    rt.block_on(ledger.save(run.store().as_ref()))?;
    Ok(Launched::Ran(record))
}

/// Closes the ingest's newest attempt: succeeded with the published index's xxh3,
/// or failed with `error`.
pub(crate) async fn close_ingest(
    rec: &mut crate::ledger::StageRecord,
    out: &str,
    options: &StoreOptions,
    error: Option<String>,
    exit_codes: Vec<Option<i32>>,
) -> Result<()> {
    let (error, index) = match error {
        None => {
            let out = open_store(out, options)?;
            match object_xxh3(out.store().as_ref(), s3_shards::INDEX_KEY).await {
                Ok(x) => (None, Some(format!("{x:016x}"))),
                Err(e) => (Some(format!("the ingest exited 0 but published no index ({e})")), None),
            }
        }
        e => (e, None),
    };
    if let Some(a) = rec.attempts.last_mut() {
        a.state = if error.is_some() { State::Failed } else { State::Succeeded };
        a.error = error;
        a.ended = Some(now());
        a.exit_codes = exit_codes;
        a.data_index_xxh3 = index;
        rec.state = a.state;
    }
    Ok(())
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
pub fn cancel(runs: &str, run_id: &str, options: &StoreOptions) -> Result<Vec<String>> {
    let mut ledger = status(runs, run_id, options, &|_| {})?;
    let running: Vec<(String, String, Vec<String>)> = ledger
        .stages
        .iter()
        .filter_map(|s| {
            let a = s.attempts.last()?;
            (a.state == State::Running).then(|| (s.name.clone(), a.backend.clone(), a.job_ids.clone()))
        })
        .collect();
    if running.is_empty() {
        return Ok(Vec::new());
    }
    // Recorded first: a job that records its own end must not requeue this stop.
    for (name, ..) in &running {
        ledger.stage_mut(name).cancel_requested = true;
    }
    let rt = runtime()?;
    let run = open_store(&join(runs, run_id), options)?;
    rt.block_on(ledger.save(run.store().as_ref()))?;
    for (_, backend, ids) in &running {
        crate::backend::by_name(backend)?.cancel(&crate::backend::Submission { ids: ids.clone() })?;
    }
    Ok(running.into_iter().map(|(name, ..)| name).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(state: State, last_step: Option<u64>) -> Outcome {
        Outcome {
            state,
            error: Some("rank 1 exited with a signal".into()),
            last_step,
            config_digest: None,
            final_checkpoint: None,
            metrics: Default::default(),
        }
    }

    #[test]
    fn a_cancelled_attempt_with_a_checkpoint_is_a_preemption() {
        let mut o = outcome(State::Failed, Some(4));
        o.cancelled();
        assert_eq!(o.state, State::Preempted);
        assert!(o.error.as_deref().unwrap().contains("cancelled by s3-orch cancel"), "{o:?}");
        // Without a checkpoint there is nothing to continue from: it stays failed.
        let mut o = outcome(State::Failed, None);
        o.cancelled();
        assert_eq!(o.state, State::Failed);
        // A success is not turned into anything else.
        let mut o = outcome(State::Succeeded, Some(9));
        o.cancelled();
        assert_eq!(o.state, State::Succeeded);
    }
}
