//! How an attempt ended, read from its exit codes and from what it left in the run
//! folder (`checkpoints/latest.json`, `state.json`, metrics, `eval/val.json`), and the
//! gate stage 2 passes: stage 1's final checkpoint, recorded and verified.

use object_store::path::Path as ObjPath;
use s3_shards::run_folder::{self, Latest, StateView};
use s3_shards::{StoreLocation, StoreOptions, json, open_store};

use crate::error::{GateError, OrchError, Result};
use crate::ledger::{CheckpointRef, Ledger, State, now};
use crate::run_store::{join, object_xxh3};
use crate::stage::Stage;

/// The stage run's latest checkpoint: step, folder, config digest, epoch reached.
pub(crate) async fn latest_checkpoint(run: &StoreLocation) -> Result<Option<(u64, String, String, u64)>> {
    let store = run.store().as_ref();
    let latest: Latest = match json::get_json(store, &ObjPath::from(run_folder::LATEST)).await {
        Ok(l) => l,
        Err(s3_shards::ShardError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let state: StateView = json::get_json(store, &ObjPath::from(run_folder::state_key(&latest.dir))).await?;
    Ok(Some((latest.step, latest.dir, state.identity.config_digest, state.sampler.epoch)))
}

/// Stage 2's gate: stage 1 succeeded and its final checkpoint is the one recorded.
pub(crate) async fn stage1_checkpoint(ledger: &Ledger, options: &StoreOptions) -> Result<(String, u64)> {
    let s1 = ledger
        .stage(Stage::Stage1.name())
        .filter(|s| s.state == State::Succeeded)
        .ok_or_else(|| GateError::Stage1NotSucceeded { run: ledger.run.clone() })?;
    let ckpt = s1.final_checkpoint.clone().ok_or_else(|| GateError::NoCheckpoint { run: ledger.run.clone() })?;
    let (dir, name) = ckpt.url.rsplit_once('/').ok_or_else(|| GateError::BadUrl { url: ckpt.url.clone() })?;
    let loc = open_store(dir, options)?;
    let found = object_xxh3(loc.store().as_ref(), name)
        .await
        .map_err(|e| GateError::Unreadable { url: ckpt.url.clone(), source: Box::new(e) })?;
    if found != ckpt.xxh3 {
        return Err(GateError::Changed { url: ckpt.url, found, recorded: ckpt.xxh3 }.into());
    }
    Ok((ckpt.url, ckpt.xxh3))
}

/// The epoch count of a stage file (to tell a finished stage from one its step or
/// time budget stopped).
pub(crate) fn stage_epochs(stage_file: &std::path::Path) -> Result<u64> {
    let text = std::fs::read_to_string(stage_file)
        .map_err(|source| OrchError::Io { file: stage_file.display().to_string(), source })?;
    let v: toml::Value =
        toml::from_str(&text).map_err(|source| OrchError::Parse { file: stage_file.display().to_string(), source })?;
    v.get("epochs")
        .and_then(toml::Value::as_integer)
        .and_then(|e| u64::try_from(e).ok())
        .ok_or_else(|| OrchError::MissingKey { file: stage_file.display().to_string(), key: "epochs" })
}

/// How a training attempt ended, from its exit codes and what it left in its run folder.
#[derive(Clone, Debug)]
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
    } else if exit_codes.iter().any(|c| s3_shards::exit::is_preempted(*c)) {
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
            let key = run_folder::weights_key(dir);
            let xxh3 = object_xxh3(stage_loc.store().as_ref(), &key).await?;
            Some(CheckpointRef { url: join(stage_loc.url(), &key), xxh3 })
        }
        _ => None,
    };
    let metrics = crate::stage_metrics::last_step(stage_loc.store().as_ref()).await.unwrap_or_else(|e| {
        say(&format!("no metrics to record ({})", s3_shards::verify::error_chain(&e)));
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

/// Closes the newest attempt of `which` (`eval` or `benchmarks`): Dice at each click
/// count from its report in the evaluated stage's folder (`eval/val.json`,
/// `eval/benchmarks.json`), or failed with `failure`; the ledger records the
/// checkpoint it evaluated.
pub(crate) async fn close_eval(
    ledger: &mut Ledger,
    which: Stage,
    evaluated: &str,
    stage_loc: &StoreLocation,
    failure: Option<String>,
    exit_codes: Vec<Option<i32>>,
) {
    let (state, error, metrics) = match failure {
        Some(e) => (State::Failed, Some(e), Default::default()),
        None => match crate::stage_metrics::eval_dice(stage_loc.store().as_ref(), which.report()).await {
            Ok(m) => (State::Succeeded, None, m),
            Err(e) => {
                (State::Failed, Some(format!("eval exited 0 but its report cannot be read: {e}")), Default::default())
            }
        },
    };
    let init = ledger.stage(evaluated).and_then(|s| s.final_checkpoint.as_ref()).map(|c| c.url.clone());
    let rec = ledger.stage_mut(which.name());
    if let Some(a) = rec.attempts.last_mut() {
        (a.state, a.error, a.metrics) = (state, error, metrics);
        a.ended = Some(now());
        a.exit_codes = exit_codes;
    }
    rec.state = state;
    rec.init = init;
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
