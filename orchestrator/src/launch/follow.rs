//! Following a run after its launch: the ledger checked against the schedulers,
//! waiting for a submitted stage, a rank's log, cancelling.

use std::path::PathBuf;

use object_store::ObjectStoreExt;
use object_store::path::Path as ObjPath;
use s3_shards::{StoreOptions, open_store};

use super::attempt::{job_gone, log_dir_for, open_run};
use crate::error::{OrchError, Result};
use crate::ledger::{Ledger, State};
use crate::run_store::{join, runtime};

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
            .ok_or_else(|| OrchError::NoStage { run: run_id.to_string(), stage: stage.to_string() })?;
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
    let key = ObjPath::from(crate::ledger::LEDGER);
    match rt.block_on(store.head(&key)) {
        Ok(_) => {}
        Err(object_store::Error::NotFound { .. }) => {
            return Err(OrchError::NoRun { run: run_id.to_string(), runs: runs.to_string() });
        }
        // A store that does not answer is not a run that does not exist.
        Err(e) => return Err(s3_shards::ShardError::store("head", &key, e).into()),
    }
    let ledger = rt.block_on(Ledger::load_or_new(store, run_id))?;
    // Each scheduler is asked once; the marks go in a conditional update, where a
    // hook that records the end meanwhile wins.
    let mut gone = Vec::new();
    for s in &ledger.stages {
        if let Some(a) = s.attempts.last()
            && job_gone(a)?
        {
            gone.push((s.name.clone(), a.attempt));
        }
    }
    if gone.is_empty() {
        return Ok(ledger);
    }
    let (_, ledger) = rt.block_on(Ledger::update(&run, run_id, async |ledger| {
        for s in &mut ledger.stages {
            if s.attempts.last().is_some_and(|a| gone.contains(&(s.name.clone(), a.attempt)))
                && let Some(attempt) = s.fail_vanished()
            {
                say(&format!("{} attempt {attempt}: its job is gone without a result; marked failed", s.name));
            }
        }
        Ok(())
    }))?;
    Ok(ledger)
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
    let (run, attempt) = log_attempt(runs, run_id, stage, attempt, options)?;
    Ok(log_dir_for(&run, log_root, run_id, stage, attempt).join(format!("rank-{rank}.log")))
}

/// The run folder and the attempt (the newest by default) whose logs are asked for.
fn log_attempt(
    runs: &str,
    run_id: &str,
    stage: &str,
    attempt: Option<u32>,
    options: &StoreOptions,
) -> Result<(s3_shards::StoreLocation, u32)> {
    let rt = runtime()?;
    let run = open_run(&join(runs, run_id), options, true)?;
    let ledger = rt.block_on(Ledger::load_or_new(run.store().as_ref(), run_id))?;
    let record =
        ledger.stage(stage).ok_or_else(|| OrchError::NoStage { run: run_id.to_string(), stage: stage.to_string() })?;
    let attempt = match attempt {
        Some(a) if record.attempts.iter().any(|x| x.attempt == a) => a,
        Some(a) => {
            return Err(OrchError::NoAttempt { run: run_id.to_string(), stage: stage.to_string(), attempt: a });
        }
        None => record.attempts.last().map_or(1, |a| a.attempt),
    };
    Ok((run, attempt))
}

/// Stops the running attempts of a run (SIGTERM: the ranks checkpoint and exit 75,
/// so a relaunch continues); returns the stages it signalled.
pub fn cancel(runs: &str, run_id: &str, options: &StoreOptions) -> Result<Vec<String>> {
    status(runs, run_id, options, &|_| {})?;
    let rt = runtime()?;
    let run = open_store(&join(runs, run_id), options)?;
    // Recorded first, in a conditional update: a job that records its own end must not
    // requeue this stop, and its record must not erase the request.
    let (running, _) = rt.block_on(Ledger::update(&run, run_id, async |ledger| {
        let running: Vec<(String, String, Vec<String>)> = ledger
            .stages
            .iter()
            .filter_map(|s| {
                let a = s.attempts.last()?;
                (a.state == State::Running).then(|| (s.name.clone(), a.backend.clone(), a.job_ids.clone()))
            })
            .collect();
        for (name, ..) in &running {
            ledger.stage_mut(name).cancel_requested = true;
        }
        Ok(running)
    }))?;
    if running.is_empty() {
        return Ok(Vec::new());
    }
    for (_, backend, ids) in &running {
        crate::backend::by_name(backend)?.cancel(&crate::backend::Submission { ids: ids.clone() })?;
    }
    Ok(running.into_iter().map(|(name, ..)| name).collect())
}

/// Where a rank's log is: run, stage, attempt (the newest by default) and rank.
#[derive(Clone, Copy, Debug)]
pub struct LogAt<'a> {
    /// Root of the run folders.
    pub runs: &'a str,
    /// Run id.
    pub run: &'a str,
    /// Stage.
    pub stage: &'a str,
    /// Attempt (default: the newest).
    pub attempt: Option<u32>,
    /// Rank.
    pub rank: usize,
}

/// Copies a rank's log to `out`; with `follow`, goes on copying until the stage is no
/// longer running.
pub fn copy_log(
    at: &LogAt,
    log_root: &std::path::Path,
    follow: bool,
    out: &mut dyn std::io::Write,
    options: &StoreOptions,
) -> Result<()> {
    let (run, attempt) = log_attempt(at.runs, at.run, at.stage, at.attempt, options)?;
    let path = log_dir_for(&run, log_root, at.run, at.stage, attempt).join(format!("rank-{}.log", at.rank));
    if !path.exists() && run.local_dir().is_none() {
        // Jobs that share nothing with this machine upload their logs into the run.
        return copy_stored_log(at, &run, attempt, follow, out, options);
    }
    let io = |source| OrchError::Io { file: path.display().to_string(), source };
    let mut file = std::fs::File::open(&path).map_err(io)?;
    std::io::copy(&mut file, out).map_err(io)?;
    while follow {
        std::thread::sleep(std::time::Duration::from_millis(500));
        std::io::copy(&mut file, out).map_err(io)?;
        let ledger = status(at.runs, at.run, options, &|_| {})?;
        if ledger.stage(at.stage).is_none_or(|s| s.state != State::Running) {
            std::io::copy(&mut file, out).map_err(io)?;
            break;
        }
    }
    Ok(())
}

/// A rank's log as uploaded into the run folder (`job upload-logs`); with `follow`,
/// what is new in it until the stage is no longer running.
fn copy_stored_log(
    at: &LogAt,
    run: &s3_shards::StoreLocation,
    attempt: u32,
    follow: bool,
    out: &mut dyn std::io::Write,
    options: &StoreOptions,
) -> Result<()> {
    let rt = runtime()?;
    let key = format!("{}/rank-{}.log", crate::run_store::logs_key(at.stage, attempt), at.rank);
    let path = ObjPath::from(key.as_str());
    let mut written = 0usize;
    loop {
        let running = follow
            && status(at.runs, at.run, options, &|_| {})?.stage(at.stage).is_some_and(|s| s.state == State::Running);
        match rt.block_on(async { run.store().get(&path).await?.bytes().await }) {
            Ok(bytes) => {
                if bytes.len() > written {
                    out.write_all(&bytes[written..])
                        .map_err(|source| OrchError::Io { file: "standard output".into(), source })?;
                    written = bytes.len();
                }
            }
            Err(object_store::Error::NotFound { .. }) if running => {}
            Err(object_store::Error::NotFound { .. }) => {
                return Err(OrchError::NotFound {
                    what: "log",
                    path: join(run.url(), &key),
                    hint: "a job uploads its ranks' logs into the run folder when they end",
                });
            }
            Err(source) => return Err(s3_shards::ShardError::Store { op: "get", path, source }.into()),
        }
        if !running {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
}

/// Waits until no stage of the run is running or queued (a preempted stage whose
/// job the scheduler requeued is still to come); returns the ledger then.
pub fn wait_run(runs: &str, run: &str, options: &StoreOptions, say: &dyn Fn(&str)) -> Result<Ledger> {
    let ledger = status(runs, run, options, say)?;
    for s in &ledger.stages {
        wait_stage(runs, run, &s.name, options, std::time::Duration::from_secs(2), say)?;
    }
    status(runs, run, options, say)
}

/// A stage's end in one line, and the exit code the launch ends with (0, or 75 when
/// preempted); a failure is the error to report.
pub fn stage_end(run_id: &str, record: &crate::ledger::StageRecord) -> std::result::Result<(String, u8), String> {
    let Some(a) = record.attempts.last() else { return Err(format!("run {run_id}: {} has no attempt", record.name)) };
    match record.state {
        State::Succeeded => Ok((
            format!(
                "run {run_id}: {} succeeded{}{}",
                record.name,
                a.last_step.map_or(String::new(), |s| format!(" at step {s}")),
                record.final_checkpoint.as_ref().map_or(String::new(), |c| format!("; final checkpoint {}", c.url))
            ),
            s3_shards::exit::OK,
        )),
        State::Preempted => Ok((
            format!("run {run_id}: {} preempted after a checkpoint; launch again to continue", record.name),
            s3_shards::exit::PREEMPTED,
        )),
        _ => Err(format!(
            "run {run_id}: {} attempt {} failed: {}; launch again to resume",
            record.name,
            a.attempt,
            a.error.as_deref().unwrap_or("unknown")
        )),
    }
}
