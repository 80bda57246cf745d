//! Launching a training stage (stage 1 or 2).

use std::path::PathBuf;

use s3_shards::{StoreOptions, open_store};

use super::Launched;
use super::attempt::{
    NextAttempt, free_port, job_token, log_dir_for, names_catalog, next_attempt, record_running, retrying, running_jobs,
};
use crate::backend::Backend;
use crate::error::{OrchError, Result};
use crate::ledger::{Attempt, Ledger};
use crate::outcome::{stage1_checkpoint, training_outcome};
use crate::plan::{Hooks, Job, TrainPlan, train_job};
use crate::run_store::{join, object_xxh3, runtime};
use crate::stage::Stage;

/// A training stage to launch.
#[derive(Clone, Debug)]
pub struct StageLaunch {
    /// Root of the run folders (`<runs>/<run-id>/`).
    pub runs: String,
    /// Run id.
    pub run_id: String,
    /// [`Stage::Stage1`] or [`Stage::Stage2`] (for [`super::launch_eval`], the stage evaluated).
    pub stage: Stage,
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
    /// Attempts started by themselves after a preempted one (see [`crate::settings::Settings::max_retries`]).
    pub max_retries: u32,
    /// For [`super::launch_eval`]: a benchmarks catalogue to score instead of the val split.
    pub benchmarks: Option<PathBuf>,
}

/// Launches (or resumes, or skips) a training stage and waits for it; on a backend
/// whose jobs record themselves it submits and returns (after the previous stage's
/// job when that one still runs). A preempted attempt is followed by the next, up to
/// `spec.max_retries` times.
pub fn launch_stage(spec: &StageLaunch, backend: &dyn Backend, dry_run: bool, say: &dyn Fn(&str)) -> Result<Launched> {
    retrying(spec.max_retries, say, || launch_attempt(spec, backend, dry_run, say))
}

fn launch_attempt(spec: &StageLaunch, backend: &dyn Backend, dry_run: bool, say: &dyn Fn(&str)) -> Result<Launched> {
    let rt = runtime()?;
    let run_url = join(&spec.runs, &spec.run_id);
    let Some(NextAttempt { run, mut ledger, attempt }) =
        next_attempt(&run_url, &spec.run_id, &spec.store_options, spec.stage, dry_run, say)?
    else {
        return Ok(Launched::AlreadySucceeded);
    };
    let in_job = backend.records_in_job();
    let previous = spec.stage.previous();
    let after = if in_job { previous.and_then(|p| running_jobs(&ledger, p.name(), backend)) } else { None };
    let stage2 = spec.stage == Stage::Stage2;
    let init = if !stage2 || in_job {
        // A job that records itself checks the gate when it starts (`s3-orch job gate`).
        if in_job && stage2 && after.is_none() && !dry_run {
            rt.block_on(stage1_checkpoint(&ledger, &spec.store_options))?;
        }
        None
    } else {
        match rt.block_on(stage1_checkpoint(&ledger, &spec.store_options)) {
            Ok((url, xxh3)) => Some((url, format!("{xxh3:016x}"))),
            // A dry run shows stage 2 before stage 1 has run: its init is a placeholder.
            Err(OrchError::Gate(_)) if dry_run => {
                Some(("<stage 1's final checkpoint>".to_string(), "<its xxh3>".to_string()))
            }
            Err(e) => return Err(e),
        }
    };
    let stage_run = join(&run_url, spec.stage.name());
    let log_dir = log_dir_for(&run, &spec.log_root, &spec.run_id, spec.stage.name(), attempt);
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
        gate: stage2,
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
        let job = with_chain(train_job(&plan, &spec.run_id, spec.stage, attempt, 0, None, log_dir));
        return Ok(Launched::DryRun(backend.render(&job)));
    }
    let data = open_store(&spec.data, &spec.store_options)?;
    let index_xxh3 = match rt.block_on(object_xxh3(data.store().as_ref(), s3_shards::INDEX_KEY)) {
        Ok(x) => Some(format!("{x:016x}")),
        // The ingest this job starts after publishes it.
        Err(_) if after.is_some() => None,
        Err(e) => {
            return Err(OrchError::NoData { url: data.url().to_string(), source: Box::new(e) });
        }
    };
    let token = job_token(&spec.run_id, spec.stage.name(), attempt);
    let job =
        with_chain(train_job(&plan, &spec.run_id, spec.stage, attempt, free_port()?, Some(&token), log_dir.clone()));
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
    ledger.stage_mut(spec.stage.name()).init = init.as_ref().map(|(url, _)| url.clone());
    let running = Attempt::running(attempt, backend.name(), submission.ids.clone(), index_xxh3);
    let record = record_running(&rt, &mut ledger, &run, spec.stage.name(), running, backend, &submission)?;
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
    let outcome = rt.block_on(training_outcome(&stage_loc, &spec.stage_file, &end.exit_codes, blame, say))?;
    // `s3-orch cancel` (another process) may have written the ledger while this
    // attempt ran: the update applies the end to the ledger as it is now, so the
    // request is not overwritten and counts.
    let (record, _) = rt.block_on(Ledger::update(&run, &spec.run_id, async |ledger| {
        let rec = ledger.stage_mut(spec.stage.name());
        let mut outcome = outcome.clone();
        if rec.cancel_requested {
            outcome.cancelled();
        }
        outcome.apply(rec, end.exit_codes.clone());
        Ok(rec.clone())
    }))?;
    Ok(Launched::Ran(record))
}
