//! Launching the pipeline's last step, the evaluation of a trained stage.

use std::path::PathBuf;

use s3_shards::open_store;

use super::Launched;
use super::StageLaunch;
use super::attempt::{NextAttempt, log_dir_for, next_attempt, record_running, retrying, running_jobs};
use crate::backend::Backend;
use crate::error::{OrchError, Result};
use crate::ledger::{Attempt, Ledger, State};
use crate::outcome::close_eval;
use crate::plan::{Hooks, TrainPlan, eval_job};
use crate::run_store::{join, runtime};
use crate::stage::Stage;

/// The pipeline's last step: `s3-train eval` of a succeeded training stage (`spec.stage`,
/// normally stage 2) with its final weights, recorded as the ledger's `eval` stage
/// with Dice at each click count; with `spec.benchmarks`, the source protocol on that
/// catalogue (its leakage check included), recorded as `benchmarks`. A preempted
/// attempt is followed by the next, up to `spec.max_retries` times.
pub fn launch_eval(spec: &StageLaunch, backend: &dyn Backend, dry_run: bool, say: &dyn Fn(&str)) -> Result<Launched> {
    retrying(spec.max_retries, say, || eval_attempt(spec, backend, dry_run, say))
}

fn eval_attempt(spec: &StageLaunch, backend: &dyn Backend, dry_run: bool, say: &dyn Fn(&str)) -> Result<Launched> {
    let which = if spec.benchmarks.is_some() { Stage::Benchmarks } else { Stage::Eval };
    let rt = runtime()?;
    let run_url = join(&spec.runs, &spec.run_id);
    let Some(NextAttempt { run, mut ledger, attempt }) =
        next_attempt(&run_url, &spec.run_id, &spec.store_options, which, dry_run, say)?
    else {
        return Ok(Launched::AlreadySucceeded);
    };
    let stage_run = join(&run_url, spec.stage.name());
    let log_dir = log_dir_for(&run, &spec.log_root, &spec.run_id, which.name(), attempt);
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
    let mut job = eval_job(&plan, &spec.run_id, attempt, log_dir.clone(), spec.benchmarks.as_deref());
    let in_job = backend.records_in_job();
    let after = if in_job { running_jobs(&ledger, spec.stage.name(), backend) } else { None };
    if in_job {
        job.after = after.clone().unwrap_or_default();
        job.hooks = Some(Hooks {
            runs: spec.runs.clone(),
            evaluated: Some(spec.stage.name().to_string()),
            ..Default::default()
        });
        job.log_dir = job.log_dir.parent().map(PathBuf::from).unwrap_or(job.log_dir);
    }
    if dry_run {
        return Ok(Launched::DryRun(backend.render(&job)));
    }
    if after.is_none() && ledger.stage(spec.stage.name()).is_none_or(|s| s.state != State::Succeeded) {
        return Err(OrchError::NothingToEvaluate { run: spec.run_id.clone(), stage: spec.stage.to_string() });
    }
    say(&format!(
        "run {}: {which} of {} on {}; log in {}",
        spec.run_id,
        spec.stage,
        backend.name(),
        job.log_dir.display()
    ));
    let submission = backend.submit(&job)?;
    let running = Attempt::running(attempt, backend.name(), submission.ids.clone(), None);
    let record = record_running(&rt, &mut ledger, &run, which.name(), running, backend, &submission)?;
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
    let (record, _) = rt.block_on(Ledger::update(&run, &spec.run_id, async |ledger| {
        close_eval(ledger, which, spec.stage.name(), &stage_loc, failure.clone(), end.exit_codes.clone()).await;
        Ok(ledger.stage_mut(which.name()).clone())
    }))?;
    Ok(Launched::Ran(record))
}
