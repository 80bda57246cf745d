//! Launching the ingest: its workers, then the merge.

use std::path::PathBuf;

use s3_shards::StoreOptions;

use super::Launched;
use super::attempt::{NextAttempt, log_dir_for, next_attempt, record_running};
use crate::backend::Backend;
use crate::error::Result;
use crate::ledger::{Attempt, Ledger};
use crate::outcome::close_ingest;
use crate::plan::{Hooks, IngestPlan, ingest_job, merge_job};
use crate::run_store::{join, runtime};
use crate::stage::Stage;

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

/// Launches (or skips) the ingest of a run: its workers, then the merge.
pub fn launch_ingest(
    spec: &IngestLaunch,
    backend: &dyn Backend,
    dry_run: bool,
    say: &dyn Fn(&str),
) -> Result<Launched> {
    const INGEST: &str = Stage::Ingest.name();
    let rt = runtime()?;
    let run_url = join(&spec.runs, &spec.run_id);
    let Some(NextAttempt { run, mut ledger, attempt }) =
        next_attempt(&run_url, &spec.run_id, &spec.store_options, Stage::Ingest, dry_run, say)?
    else {
        return Ok(Launched::AlreadySucceeded);
    };
    let log_dir = log_dir_for(&run, &spec.log_root, &spec.run_id, INGEST, attempt);
    let mut workers = ingest_job(&spec.plan, &spec.run_id, attempt, log_dir.clone());
    let mut merge =
        (spec.plan.workers > 1).then(|| merge_job(&spec.plan, &spec.run_id, attempt, log_dir.join("merge")));
    let in_job = backend.records_in_job();
    if in_job {
        // The job that publishes records the end: the merge, or the one worker.
        let hooks = Some(Hooks { runs: spec.runs.clone(), out: Some(spec.plan.out.clone()), ..Default::default() });
        match &mut merge {
            Some(m) => {
                workers.hooks = hooks.clone().map(|h| Hooks { uploads_only: true, ..h });
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
    let record = record_running(&rt, &mut ledger, &run, INGEST, running, backend, &submission)?;
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
    let (record, _) = rt.block_on(Ledger::update(&run, &spec.run_id, async |ledger| {
        let rec = ledger.stage_mut(INGEST);
        close_ingest(rec, &spec.plan.out, &spec.store_options, error.clone(), exit_codes.clone()).await?;
        Ok(rec.clone())
    }))?;
    Ok(Launched::Ran(record))
}
