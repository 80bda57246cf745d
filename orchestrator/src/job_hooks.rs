//! The ledger from inside a job: `s3-orch job start|gate|end`, which a batch script
//! runs around its ranks (Slurm). A scheduler that holds the chain (dependencies,
//! requeues) runs the stages without the launcher's terminal, so the jobs record
//! their own attempts: start (which attempt this run of the job is), the stage-2
//! gate (checked when the job starts, since a dependency does not re-arm after a
//! requeue), and end (how it ended, the final checkpoint, whether to requeue);
//! and the logs each node wrote, uploaded into the run folder, since nothing but
//! the object store is shared between the nodes and the launcher.

use std::path::Path;

use s3_shards::StoreOptions;

use crate::error::{OrchError, Result};
use crate::ledger::{Attempt, Ledger, State, now};
use crate::outcome::{close_eval, close_ingest, stage1_checkpoint, training_outcome};
use crate::run_store::{join, object_xxh3, runtime};
use crate::stage::Stage;

/// Which run and stage a hook is about.
#[derive(Clone, Debug)]
pub struct HookTarget {
    /// Root of the run folders.
    pub runs: String,
    /// Run id.
    pub run_id: String,
    /// `ingest`, `stage1`, `stage2` or `eval`.
    pub stage: String,
    /// S3 settings.
    pub options: StoreOptions,
}

impl HookTarget {
    /// The hook's run and stage, with default store settings.
    pub fn new(runs: String, run_id: String, stage: String) -> HookTarget {
        HookTarget { runs, run_id, stage, options: Default::default() }
    }

    fn run_url(&self) -> String {
        join(&self.runs, &self.run_id)
    }
}

pub use s3_shards::exit::REQUEUE;

/// `job start`: the attempt this run of the scheduler job is. The first run (restart
/// 0) is the attempt the launcher recorded at submission; a requeued run (restart
/// N) is a new attempt, and an earlier one still marked running was preempted by
/// the scheduler. Idempotent for the same restart count.
pub fn job_start(t: &HookTarget, job_id: &str, restart: u32, data: Option<&str>) -> Result<u32> {
    let rt = runtime()?;
    let run = s3_shards::open_store(&t.run_url(), &t.options)?;
    let index = match data {
        Some(d) => {
            let loc = s3_shards::open_store(d, &t.options)?;
            Some(format!("{:016x}", rt.block_on(object_xxh3(loc.store().as_ref(), s3_shards::INDEX_KEY))?))
        }
        None => None,
    };
    let (attempt, _) = rt.block_on(Ledger::update(&run, &t.run_id, async |ledger| {
        let rec = ledger.stage_mut(&t.stage);
        let next = rec.attempts.len() as u32 + 1;
        let attempt = match rec.attempts.iter_mut().rev().find(|a| a.job_ids.iter().any(|j| j == job_id)) {
            Some(a) if a.scheduler_restart == Some(restart) => return Ok(a.attempt),
            Some(a) if a.scheduler_restart.is_none() && restart == 0 && a.state == State::Running => {
                a.scheduler_restart = Some(restart);
                a.data_index_xxh3 = a.data_index_xxh3.take().or(index.clone());
                a.attempt
            }
            found => {
                let backend = found.as_ref().map_or("slurm".to_string(), |a| a.backend.clone());
                if let Some(a) = found
                    && a.state == State::Running
                {
                    a.state = State::Preempted;
                    a.error = Some("requeued by the scheduler before it recorded an end".into());
                    a.ended = Some(now());
                }
                let mut a = Attempt::running(next, &backend, vec![job_id.to_string()], index.clone());
                a.scheduler_restart = Some(restart);
                rec.attempts.push(a);
                next
            }
        };
        rec.state = State::Running;
        Ok(attempt)
    }))?;
    Ok(attempt)
}

/// `job gate`: stage 1's final checkpoint as the ledger records it, its hash checked
/// now; `(url, xxh3 hex)`. Also recorded as stage 2's `init`.
pub fn job_gate(t: &HookTarget) -> Result<(String, String)> {
    let rt = runtime()?;
    let run = s3_shards::open_store(&t.run_url(), &t.options)?;
    let ((url, xxh3), _) = rt.block_on(Ledger::update(&run, &t.run_id, async |ledger| {
        let (url, xxh3) = stage1_checkpoint(ledger, &t.options).await?;
        ledger.stage_mut(&t.stage).init = Some(url.clone());
        Ok((url, xxh3))
    }))?;
    Ok((url, format!("{xxh3:016x}")))
}

/// What `job end` needs besides the target.
#[derive(Clone, Debug)]
pub struct JobEnd<'a> {
    /// The scheduler's job id.
    pub job_id: &'a str,
    /// The attempt `job start` returned.
    pub attempt: u32,
    /// The ranks' exit code (srun's: the first failure).
    pub exit_code: i32,
    /// The training stage's file (its epochs tell a finished stage from a budget stop).
    pub stage_file: Option<&'a Path>,
    /// The ingest's output store.
    pub out: Option<&'a str>,
    /// For `eval`: the stage it evaluated.
    pub evaluated: Option<&'a str>,
    /// Where the ranks' logs are (named in the error).
    pub logs: &'a str,
}

/// `job end`: closes the attempt in the ledger; true when the job should requeue
/// itself (exit 75 that no `s3-orch cancel` asked for).
pub fn job_end(t: &HookTarget, end: &JobEnd) -> Result<bool> {
    let rt = runtime()?;
    let run = s3_shards::open_store(&t.run_url(), &t.options)?;
    let codes = vec![Some(end.exit_code)];
    let failure = s3_shards::exit::is_failure(Some(end.exit_code))
        .then(|| format!("the ranks exited with code {} (logs: {})", end.exit_code, end.logs));
    let (requeue, _) = rt.block_on(Ledger::update(&run, &t.run_id, async |ledger| {
        close_attempt(t, end, ledger, codes.clone(), failure.clone()).await
    }))?;
    Ok(requeue)
}

/// `job end`'s change to the ledger: the attempt closed as the ranks ended it; true
/// when the job should requeue itself (a cancel read from the same ledger vetoes it).
async fn close_attempt(
    t: &HookTarget,
    end: &JobEnd<'_>,
    ledger: &mut Ledger,
    codes: Vec<Option<i32>>,
    failure: Option<String>,
) -> Result<bool> {
    {
        let rec = ledger.stage_mut(&t.stage);
        match rec.attempts.last() {
            Some(a) if a.attempt == end.attempt && a.job_ids.iter().any(|j| j == end.job_id) => {}
            _ => {
                return Err(OrchError::StaleAttempt {
                    run: t.run_id.to_string(),
                    stage: t.stage.to_string(),
                    attempt: end.attempt,
                    job: end.job_id.to_string(),
                });
            }
        }
    }
    match Stage::parse(&t.stage) {
        Some(Stage::Ingest) => {
            let out = end.out.ok_or(OrchError::NeedsFlag { flag: "--out", what: "end an ingest job" })?;
            close_ingest(ledger.stage_mut(Stage::Ingest.name()), out, &t.options, failure, codes).await?;
        }
        Some(which) if which.evaluates() => {
            let evaluated = end.evaluated.unwrap_or(Stage::Stage2.name());
            let loc = s3_shards::open_store(&join(&t.run_url(), evaluated), &t.options)?;
            close_eval(ledger, which, evaluated, &loc, failure, codes).await;
        }
        _ => {
            let stage = t.stage.as_str();
            let file =
                end.stage_file.ok_or(OrchError::NeedsFlag { flag: "--stage-file", what: "end a training job" })?;
            let loc = s3_shards::open_store(&join(&t.run_url(), stage), &t.options)?;
            let outcome = training_outcome(&loc, file, &codes, failure, &|_| {}).await?;
            outcome.apply(ledger.stage_mut(stage), codes);
        }
    }
    let rec = ledger.stage_mut(&t.stage);
    Ok(s3_shards::exit::is_preempted(Some(end.exit_code)) && !rec.cancel_requested)
}

/// `job fail`: marks the attempt failed with `reason` if the ledger still says it
/// runs; the watchdog Slurm starts when a job of the attempt ended badly without
/// recording it (killed, out of memory, past its time limit). True when it marked it.
pub fn job_fail(t: &HookTarget, attempt: u32, reason: &str) -> Result<bool> {
    let rt = runtime()?;
    let run = s3_shards::open_store(&t.run_url(), &t.options)?;
    let (marked, _) = rt.block_on(Ledger::update(&run, &t.run_id, async |ledger| {
        let rec = ledger.stage_mut(&t.stage);
        let Some(a) = rec.attempts.last_mut() else { return Ok(false) };
        if a.attempt != attempt || a.state != State::Running {
            return Ok(false);
        }
        a.state = State::Failed;
        a.error = Some(reason.to_string());
        a.ended = Some(now());
        rec.state = State::Failed;
        Ok(true)
    }))?;
    Ok(marked)
}

/// `job upload-logs`: copies log files (a folder's files, or files) into the run
/// folder, `logs/<stage>/attempt-<N>/<name>`, where `s3-orch logs` reads them. Each
/// node runs it for the ranks it ran; a file already in place (a local run folder
/// the node writes into) is left alone. The number of files copied.
pub fn upload_logs(t: &HookTarget, attempt: u32, from: &[std::path::PathBuf]) -> Result<usize> {
    let rt = runtime()?;
    let run = s3_shards::open_store(&t.run_url(), &t.options)?;
    let mut files = Vec::new();
    for p in from {
        let io = |source| OrchError::Io { file: p.display().to_string(), source };
        if p.is_dir() {
            for e in std::fs::read_dir(p).map_err(io)? {
                let path = e.map_err(io)?.path();
                if path.is_file() {
                    files.push(path);
                }
            }
        } else {
            files.push(p.clone());
        }
    }
    files.sort();
    let folder = crate::run_store::logs_key(&t.stage, attempt);
    let mut copied = 0;
    for f in files {
        let Some(name) = f.file_name().map(|n| n.to_string_lossy().into_owned()) else { continue };
        let key = format!("{folder}/{name}");
        if let Some(dir) = run.local_dir()
            && same_file(&dir.join(&key), &f)
        {
            continue;
        }
        let bytes = std::fs::read(&f).map_err(|source| OrchError::Io { file: f.display().to_string(), source })?;
        let path = object_store::path::Path::from(key);
        rt.block_on(object_store::ObjectStoreExt::put(run.store().as_ref(), &path, bytes.into()))
            .map_err(|source| s3_shards::ShardError::Store { op: "put", path: path.clone(), source })?;
        copied += 1;
    }
    Ok(copied)
}

fn same_file(a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}
