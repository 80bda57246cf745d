//! What every launch does around its job: refuse a second running attempt, record
//! the attempt before it runs, name its logs, open the run folder (or not, for a
//! dry run).

use std::path::PathBuf;

use object_store::ObjectStore;
use s3_shards::{StoreLocation, StoreOptions, open_store};

use super::Launched;
use crate::backend::Backend;
use crate::error::{OrchError, Result};
use crate::ledger::{Attempt, Ledger, State};
use crate::run_store::runtime;
use crate::stage::Stage;

/// A stage about to get its next attempt: the run folder, its ledger (a stale running
/// attempt already marked failed) and the attempt's number.
pub(crate) struct NextAttempt {
    /// The run folder (an empty stand-in for a dry run's new local folder).
    pub run: StoreLocation,
    /// The run's ledger.
    pub ledger: Ledger,
    /// The number the new attempt gets (1-based).
    pub attempt: u32,
}

/// Every launch's first steps: open the run folder and its ledger; `None` (said) when
/// the stage already succeeded; refused while its newest attempt still runs.
pub(crate) fn next_attempt(
    run_url: &str,
    run_id: &str,
    options: &StoreOptions,
    stage: Stage,
    dry_run: bool,
    say: &dyn Fn(&str),
) -> Result<Option<NextAttempt>> {
    let run = open_run(run_url, options, dry_run)?;
    let mut ledger = if dry_run {
        dry_run_ledger(&run, run_url, run_id, options, say)?
    } else {
        runtime()?.block_on(Ledger::load_or_new(run.store().as_ref(), run_id))?
    };
    if ledger.stage(stage.name()).is_some_and(|s| s.state == State::Succeeded) {
        say(&format!("run {run_id}: {stage} already succeeded; nothing to do"));
        return Ok(None);
    }
    refuse_if_running(&mut ledger, stage.name())?;
    let attempt = ledger.stage(stage.name()).map_or(0, |s| s.attempts.len() as u32) + 1;
    Ok(Some(NextAttempt { run, ledger, attempt }))
}

/// A dry run's ledger: read when the store answers at once, else (unreachable, or
/// no credentials to ask with) an empty one, said: the preview needs nothing.
fn dry_run_ledger(
    run: &StoreLocation,
    run_url: &str,
    run_id: &str,
    options: &StoreOptions,
    say: &dyn Fn(&str),
) -> Result<Ledger> {
    let empty = || Ledger { run: run_id.to_string(), stages: Vec::new() };
    let remote = run.local_dir().is_none() && !run.url().starts_with("memory://");
    if remote && !options.has_credentials() {
        say(&format!(
            "dry run: the ledger of {} was not read (no store credentials in the environment); assuming a new run, attempt 1",
            run.url()
        ));
        return Ok(empty());
    }
    let quick =
        if remote { open_store(run_url, &options.fail_fast(std::time::Duration::from_secs(5)))? } else { run.clone() };
    match runtime()?.block_on(Ledger::load_or_new(quick.store().as_ref(), run_id)) {
        Ok(l) => Ok(l),
        Err(e) => {
            say(&format!(
                "dry run: the ledger of {} was not read ({}); assuming a new run, attempt 1",
                run.url(),
                s3_shards::verify::error_chain(&e)
            ));
            Ok(empty())
        }
    }
}

/// Whether a stage file names its own `datasets.catalog`.
pub(crate) fn names_catalog(stage_file: &std::path::Path) -> Result<bool> {
    let text = std::fs::read_to_string(stage_file)
        .map_err(|source| OrchError::Io { file: stage_file.display().to_string(), source })?;
    let v: toml::Value =
        toml::from_str(&text).map_err(|source| OrchError::Parse { file: stage_file.display().to_string(), source })?;
    Ok(v.get("datasets").and_then(|d| d.get("catalog")).is_some())
}

/// Two attempts of a stage at once would write the same checkpoints: refused while
/// the newest attempt's processes still run; one whose processes are gone without a
/// result (the launcher died) is marked failed.
pub(crate) fn refuse_if_running(ledger: &mut Ledger, stage: &str) -> Result<()> {
    let run = ledger.run.clone();
    let Some(rec) = ledger.stages.iter_mut().find(|s| s.name == stage) else { return Ok(()) };
    let Some(a) = rec.attempts.last() else { return Ok(()) };
    if a.state != State::Running {
        return Ok(());
    }
    if !job_gone(a)? {
        return Err(OrchError::StillRunning {
            run,
            stage: stage.to_string(),
            attempt: a.attempt,
            backend: a.backend.clone(),
            jobs: a.job_ids.clone(),
        });
    }
    rec.fail_vanished();
    Ok(())
}

/// Whether an attempt the ledger marks running has no job left: its own scheduler
/// is asked, whichever backend this launch uses.
pub(crate) fn job_gone(a: &Attempt) -> Result<bool> {
    Ok(a.state == State::Running
        && !crate::backend::by_name(&a.backend)?.is_running(&crate::backend::Submission { ids: a.job_ids.clone() }))
}

/// Launches again while the attempt was preempted (a rank exited 75, or Kubernetes
/// disrupted a pod) and nobody cancelled it, at most `max_retries` more times: each
/// attempt resumes from the last checkpoint. A real failure ends it at once.
pub(crate) fn retrying(
    max_retries: u32,
    say: &dyn Fn(&str),
    mut launch: impl FnMut() -> Result<Launched>,
) -> Result<Launched> {
    let mut retries = 0;
    loop {
        let launched = launch()?;
        let Launched::Ran(rec) = &launched else { return Ok(launched) };
        let Some(a) = rec.attempts.last() else { return Ok(launched) };
        let preempted = rec.state == State::Preempted
            && !rec.cancel_requested
            && a.exit_codes.iter().any(|c| s3_shards::exit::is_preempted(*c));
        if !preempted || retries >= max_retries {
            if preempted && max_retries > 0 {
                say(&format!("{} attempt {} was preempted; no retries left ({max_retries})", rec.name, a.attempt));
            }
            return Ok(launched);
        }
        retries += 1;
        say(&format!(
            "{} attempt {} was preempted; attempt {} resumes from its last checkpoint (retry {retries} of {max_retries})",
            rec.name,
            a.attempt,
            a.attempt + 1
        ));
    }
}

/// A token no other job shares (the collective turns away processes without it).
pub(crate) fn job_token(run_id: &str, stage: &str, attempt: u32) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let seed = format!("{run_id}/{stage}/{attempt}/{}/{nanos}", std::process::id());
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(seed.as_bytes()))
}

pub(crate) fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|source| OrchError::Process { what: "finding a free port".into(), source })?;
    l.local_addr().map(|a| a.port()).map_err(|source| OrchError::Process { what: "finding a free port".into(), source })
}

/// Records a submitted attempt as the stage's running one (a new attempt clears an
/// old cancel request; an older attempt still marked running, which
/// [`refuse_if_running`] found gone, is marked failed). A ledger that cannot be
/// written cancels the job: an attempt nobody recorded would run unseen. `ledger`
/// becomes the ledger as written.
pub(crate) fn record_running(
    rt: &tokio::runtime::Runtime,
    ledger: &mut Ledger,
    run: &StoreLocation,
    stage: &str,
    attempt: Attempt,
    backend: &dyn Backend,
    submission: &crate::backend::Submission,
) -> Result<crate::ledger::StageRecord> {
    let init = ledger.stage(stage).and_then(|s| s.init.clone());
    let written = rt.block_on(Ledger::update(run, &ledger.run.clone(), async |l| {
        let rec = l.stage_mut(stage);
        rec.fail_vanished();
        rec.state = State::Running;
        rec.cancel_requested = false;
        rec.init = init.clone().or(rec.init.take());
        rec.attempts.push(attempt.clone());
        Ok(rec.clone())
    }));
    match written {
        Ok((record, now_written)) => {
            *ledger = now_written;
            Ok(record)
        }
        Err(e) => {
            let _ = backend.cancel(submission);
            Err(e)
        }
    }
}

/// The scheduler jobs of `stage`'s newest attempt if it is still running on `backend`:
/// what a job of the next stage starts after.
pub(crate) fn running_jobs(ledger: &Ledger, stage: &str, backend: &dyn Backend) -> Option<Vec<String>> {
    let a = ledger.stage(stage)?.attempts.last()?;
    (a.state == State::Running && a.backend == backend.name()).then(|| a.job_ids.clone())
}

pub(crate) fn log_dir_for(
    run: &StoreLocation,
    log_root: &std::path::Path,
    run_id: &str,
    stage: &str,
    attempt: u32,
) -> PathBuf {
    match run.local_dir() {
        Some(dir) => dir.join(crate::run_store::logs_key(stage, attempt)),
        None => log_root.join(run_id).join(stage).join(format!("attempt-{attempt}")),
    }
}

/// The run folder's store. A dry run touches nothing: a local run folder that does
/// not exist yet is not created (opening a local store creates its directory), and
/// stands for an empty run.
pub(crate) fn open_run(url: &str, options: &StoreOptions, dry_run: bool) -> Result<StoreLocation> {
    let local = s3_shards::store::local_path(url);
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
