//! The run ledger (DESIGN §10): `<runs>/<run-id>/ledger.json`, the orchestrator's
//! source of truth. Per stage and attempt: the backend, scheduler job ids, the
//! trainer's config digest and data hash, the state, the last checkpoint step; at
//! the end the final checkpoint's URL and xxh3. Written whole in one PUT, which
//! every store makes atomic: a reader sees the old ledger or the new one.
//!
//! Several processes write it (the launcher, `s3-orch cancel`, the jobs' hooks), so
//! every change goes through [`Ledger::update`]: read, apply, write only if nobody
//! wrote in between (a conditional PUT on the ledger's e-tag; a lock file on a local
//! run folder), else read again and apply again. No writer's change is lost.

use std::time::Duration;

use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload, UpdateVersion};
use s3_shards::{StoreLocation, json};
use serde::{Deserialize, Serialize};

use crate::error::{OrchError, Result};

/// A stage's or an attempt's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Not started.
    Pending,
    /// Submitted or running.
    Running,
    /// Stopped by the scheduler after a checkpoint (exit 75): resumes, uses no retry.
    Preempted,
    /// Ended with an error.
    Failed,
    /// Done.
    Succeeded,
}

/// A checkpoint and the hash of its weights file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRef {
    /// URL of `weights.safetensors`.
    pub url: String,
    /// xxh3 of that file.
    #[serde(with = "s3_shards::index::hex_u64")]
    pub xxh3: u64,
}

/// One submission of a stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1-based.
    pub attempt: u32,
    /// `local`, `slurm`, `k8s`.
    pub backend: String,
    /// Scheduler ids (local: process ids).
    pub job_ids: Vec<String>,
    /// State.
    pub state: State,
    /// Started, RFC 3339.
    pub started: String,
    /// Ended, RFC 3339.
    #[serde(default)]
    pub ended: Option<String>,
    /// Exit code of each rank (None while running, or killed by a signal).
    #[serde(default)]
    pub exit_codes: Vec<Option<i32>>,
    /// Why it failed, naming the rank.
    #[serde(default)]
    pub error: Option<String>,
    /// Last checkpoint step when it ended.
    #[serde(default)]
    pub last_step: Option<u64>,
    /// The trainer's digest of the resolved training config (from its checkpoint).
    #[serde(default)]
    pub config_digest: Option<String>,
    /// xxh3 of the data's `index.json` at submission.
    #[serde(default)]
    pub data_index_xxh3: Option<String>,
    /// What it measured when it ended: the last step's `loss` and `dice` (training),
    /// `dice@N` at each click count (eval).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub metrics: std::collections::BTreeMap<String, f64>,
    /// The scheduler's restart count of the job run that is this attempt (Slurm's
    /// `SLURM_RESTART_COUNT`; a requeued job is the next attempt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler_restart: Option<u32>,
}

impl Attempt {
    /// A new running attempt.
    pub fn running(attempt: u32, backend: &str, job_ids: Vec<String>, data_index_xxh3: Option<String>) -> Attempt {
        Attempt {
            attempt,
            backend: backend.into(),
            job_ids,
            state: State::Running,
            started: now(),
            ended: None,
            exit_codes: Vec::new(),
            error: None,
            last_step: None,
            config_digest: None,
            data_index_xxh3,
            metrics: Default::default(),
            scheduler_restart: None,
        }
    }
}

/// One stage of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    /// `ingest`, `stage1`, `stage2`, `eval`.
    pub name: String,
    /// State (of the newest attempt).
    pub state: State,
    /// Every attempt, oldest first.
    pub attempts: Vec<Attempt>,
    /// The final checkpoint once the stage succeeded.
    pub final_checkpoint: Option<CheckpointRef>,
    /// The weights it started from.
    pub init: Option<String>,
    /// `s3-orch cancel` asked the running attempt to stop: its exit 75 is not requeued.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel_requested: bool,
}

impl StageRecord {
    /// Marks the newest attempt failed, and the stage with it, if the ledger still
    /// says it runs: for an attempt whose job its scheduler no longer knows. The
    /// attempt's number, when one was marked.
    pub fn fail_vanished(&mut self) -> Option<u32> {
        let a = self.attempts.last_mut().filter(|a| a.state == State::Running)?;
        a.state = State::Failed;
        a.error = Some("its job ended without recording a result (killed, or a job it waited for failed)".into());
        a.ended = Some(now());
        self.state = State::Failed;
        Some(a.attempt)
    }
}

/// Conditional writes a ledger update tries before giving up (each lost to another
/// writer that got there first).
const UPDATE_TRIES: u32 = 50;

/// [`Ledger::update`] on a local run folder, whose store cannot put conditionally:
/// an exclusive lock on `ledger.json.lock` beside it (other processes, other threads)
/// around the read, the change and the write.
async fn update_locked<T>(
    store: &dyn ObjectStore,
    dir: &std::path::Path,
    run_id: &str,
    mut change: impl AsyncFnMut(&mut Ledger) -> Result<T>,
) -> Result<(T, Ledger)> {
    let io = |source| OrchError::Io { file: dir.join("ledger.json.lock").display().to_string(), source };
    std::fs::create_dir_all(dir).map_err(io)?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("ledger.json.lock"))
        .map_err(io)?;
    lock.lock().map_err(io)?;
    let mut ledger = Ledger::load_or_new(store, run_id).await?;
    let out = change(&mut ledger).await;
    let written = match out {
        Ok(out) => ledger.save(store).await.map(|()| out),
        Err(e) => Err(e),
    };
    // Closing the file releases the lock, even if unlocking fails.
    let _ = lock.unlock();
    Ok((written?, ledger))
}

/// `ledger.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    /// Run id.
    pub run: String,
    /// Stages in launch order.
    pub stages: Vec<StageRecord>,
}

/// Key of the ledger inside the run folder.
pub const LEDGER: &str = "ledger.json";

impl Ledger {
    /// The run's ledger, or a new empty one.
    pub async fn load_or_new(store: &dyn ObjectStore, run: &str) -> Result<Ledger> {
        match json::get_json::<Ledger>(store, &ObjPath::from(LEDGER)).await {
            Ok(l) => Ok(l),
            Err(s3_shards::ShardError::NotFound(_)) => Ok(Ledger { run: run.to_string(), stages: Vec::new() }),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes the whole ledger in one PUT, whatever is there (tests and tools; a
    /// change to a ledger others may write goes through [`Ledger::update`]).
    pub async fn save(&self, store: &dyn ObjectStore) -> Result<()> {
        Ok(json::put_json(store, &ObjPath::from(LEDGER), self).await?)
    }

    /// Applies `change` to the run's ledger (a new one when there is none) and writes
    /// it only if no other process wrote it since it was read; otherwise reads it again
    /// and applies `change` again, so `change` must work from what it finds. Returns
    /// what the last `change` returned, and the ledger as written.
    pub async fn update<T>(
        run: &StoreLocation,
        run_id: &str,
        mut change: impl AsyncFnMut(&mut Ledger) -> Result<T>,
    ) -> Result<(T, Ledger)> {
        if let Some(dir) = run.local_dir() {
            return update_locked(run.store().as_ref(), &dir, run_id, change).await;
        }
        let store = run.store().as_ref();
        let path = ObjPath::from(LEDGER);
        for tries in 1u32.. {
            let (mut ledger, version) = match store.get(&path).await {
                Ok(got) => {
                    let version = UpdateVersion { e_tag: got.meta.e_tag.clone(), version: got.meta.version.clone() };
                    let bytes = got.bytes().await.map_err(|e| s3_shards::ShardError::Store {
                        op: "get",
                        path: path.clone(),
                        source: e,
                    })?;
                    let ledger: Ledger = serde_json::from_slice(&bytes)
                        .map_err(|source| s3_shards::ShardError::Json { path: path.clone(), source })?;
                    (ledger, Some(version))
                }
                Err(object_store::Error::NotFound { .. }) => {
                    (Ledger { run: run_id.to_string(), stages: Vec::new() }, None)
                }
                Err(e) => return Err(s3_shards::ShardError::Store { op: "get", path, source: e }.into()),
            };
            let out = change(&mut ledger).await?;
            let mut bytes = serde_json::to_vec_pretty(&ledger)
                .map_err(|source| s3_shards::ShardError::Json { path: path.clone(), source })?;
            bytes.push(b'\n');
            let mode = match version {
                Some(v) => PutMode::Update(v),
                None => PutMode::Create,
            };
            match store.put_opts(&path, PutPayload::from(bytes), mode.into()).await {
                Ok(_) => return Ok((out, ledger)),
                Err(object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. })
                    if tries < UPDATE_TRIES =>
                {
                    // Another writer got there first: back off a little (jittered, so
                    // two writers do not collide again in step) and apply to theirs.
                    let jitter = u64::from(std::process::id() ^ tries.wrapping_mul(2_654_435_761)) % 50;
                    tokio::time::sleep(Duration::from_millis(10 * u64::from(tries.min(10)) + jitter)).await;
                }
                Err(object_store::Error::NotImplemented { .. }) => {
                    return Err(OrchError::LedgerUnsafe { url: run.to_string() });
                }
                Err(object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. }) => {
                    return Err(OrchError::LedgerContended { url: run.to_string(), tries });
                }
                Err(e) => return Err(s3_shards::ShardError::Store { op: "put", path, source: e }.into()),
            }
        }
        unreachable!("the loop returns")
    }

    /// The stage's record, if launched before.
    pub fn stage(&self, name: &str) -> Option<&StageRecord> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// The stage's record, created pending if new.
    pub fn stage_mut(&mut self, name: &str) -> &mut StageRecord {
        if let Some(i) = self.stages.iter().position(|s| s.name == name) {
            return &mut self.stages[i];
        }
        self.stages.push(StageRecord {
            name: name.to_string(),
            state: State::Pending,
            attempts: Vec::new(),
            final_checkpoint: None,
            init: None,
            cancel_requested: false,
        });
        self.stages.last_mut().expect("just pushed")
    }
}

impl State {
    /// The name the ledger and `status --json` use.
    pub fn name(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Running => "running",
            State::Preempted => "preempted",
            State::Failed => "failed",
            State::Succeeded => "succeeded",
        }
    }
}

impl Ledger {
    /// The `s3-orch status` table: a line per stage (state, attempts, last step, job
    /// ids, what it measured, why it failed).
    pub fn table(&self) -> String {
        let mut s = format!("run {}\n", self.run);
        for st in &self.stages {
            let a = st.attempts.last();
            let metrics = a.map_or(String::new(), |a| {
                // dice@10 after dice@5: by the number after the name.
                let mut m: Vec<(&String, &f64)> = a.metrics.iter().collect();
                m.sort_by_key(|(k, _)| {
                    let (name, n) = k.split_once('@').unwrap_or((k.as_str(), ""));
                    (name.to_string(), n.parse::<u64>().unwrap_or(0))
                });
                m.iter().map(|(k, v)| format!("  {k} {v:.3}")).collect::<String>()
            });
            s.push_str(&format!(
                "  {:<8} {:<10} attempts {}  last step {}  jobs {}{metrics}{}\n",
                st.name,
                st.state.name(),
                st.attempts.len(),
                a.and_then(|a| a.last_step).map_or("-".into(), |x| x.to_string()),
                a.map_or("-".into(), |a| a.job_ids.join(",")),
                a.and_then(|a| a.error.as_ref()).map_or(String::new(), |e| format!("  error: {e}"))
            ));
        }
        s
    }
}

/// Now, RFC 3339 (UTC, seconds).
pub fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_round_trips_with_the_documented_state_names() {
        let mut l = Ledger { run: "r1".into(), stages: Vec::new() };
        let s = l.stage_mut("stage1");
        s.state = State::Preempted;
        s.final_checkpoint = Some(CheckpointRef { url: "s3://b/x".into(), xxh3: u64::MAX });
        let text = serde_json::to_string(&l).unwrap();
        assert!(text.contains("\"preempted\"") && text.contains("ffffffffffffffff"), "{text}");
        let back: Ledger = serde_json::from_str(&text).unwrap();
        assert_eq!(back, l);
        assert_eq!(l.stage_mut("stage1").name, "stage1");
        assert_eq!(l.stages.len(), 1, "an existing stage is found, not added again");
    }
}
