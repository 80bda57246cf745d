//! A stage → what each rank runs (DESIGN §10): the `s3-train` command line and the
//! launch-contract environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`,
//! `MASTER_PORT`, `S3_RUN_ID`, `S3_STAGE`, `S3_ATTEMPT`, `S3_JOB_TOKEN`). Backends
//! only decide where those processes run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::stage::Stage;

/// One rank's process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RankCommand {
    /// Global rank.
    pub rank: usize,
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Environment added to the launcher's.
    pub env: Vec<(String, String)>,
}

/// What a job does: a stage's own work, or the merge that publishes what an ingest's
/// workers committed (a second scheduler job, recorded under the ingest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    /// The stage's processes.
    Run(Stage),
    /// `s3-ingest merge` after the ingest's workers.
    IngestMerge,
}

impl JobKind {
    /// The ledger stage the job belongs to.
    pub fn stage(self) -> Stage {
        match self {
            JobKind::Run(s) => s,
            JobKind::IngestMerge => Stage::Ingest,
        }
    }

    /// Its name in scheduler job names, labels and log files.
    pub fn name(self) -> &'static str {
        match self {
            JobKind::Run(s) => s.name(),
            JobKind::IngestMerge => "ingest-merge",
        }
    }
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything a backend needs to run one attempt of a stage.
#[derive(Clone, Debug)]
pub struct Job {
    /// Run id.
    pub run_id: String,
    /// The stage, or the ingest's merge.
    pub kind: JobKind,
    /// Attempt number (1-based).
    pub attempt: u32,
    /// The ranks.
    pub ranks: Vec<RankCommand>,
    /// Nodes (pods) the ranks spread over, evenly.
    pub nodes: usize,
    /// Where rank logs go (`rank-R.log`).
    pub log_dir: PathBuf,
    /// Scheduler jobs this one starts after, once they succeeded (a chain the
    /// scheduler holds: Slurm `--dependency=afterok`).
    pub after: Vec<String>,
    /// Set when the job records its own attempts in the ledger (`s3-orch job ...`).
    pub hooks: Option<Hooks>,
}

impl Job {
    /// A job of `ranks` over `nodes` nodes, with no scheduler dependency and no hooks
    /// (the launcher adds those where a backend chains jobs).
    pub fn new(
        run_id: &str,
        kind: JobKind,
        attempt: u32,
        ranks: Vec<RankCommand>,
        nodes: usize,
        log_dir: PathBuf,
    ) -> Job {
        Job { run_id: run_id.into(), kind, attempt, ranks, nodes, log_dir, after: Vec::new(), hooks: None }
    }
}

/// What a job that records its own attempts tells `s3-orch job start|gate|end`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hooks {
    /// Root of the run folders.
    pub runs: String,
    /// The training stage's file (`job end` reads its epochs).
    pub stage_file: Option<PathBuf>,
    /// The shards a training stage reads (`job start` records their index hash).
    pub data: Option<String>,
    /// The ingest's output (`job end` records its index hash).
    pub out: Option<String>,
    /// For `eval`: the stage it evaluates.
    pub evaluated: Option<String>,
    /// Check stage 2's gate when the job starts and pass the verified `--init`.
    pub gate: bool,
    /// A job whose end another records (the ingest workers, ended by the merge): it
    /// uploads its logs, and marks the attempt failed only if it fails itself.
    pub uploads_only: bool,
}

/// What a training stage needs.
#[derive(Clone, Debug)]
pub struct TrainPlan {
    /// `s3-train`.
    pub train_bin: PathBuf,
    /// Stage file.
    pub stage_file: PathBuf,
    /// Published shards.
    pub data: String,
    /// The stage's run folder (checkpoints, metrics).
    pub run_dir: String,
    /// Weights to start from (stage 2: stage 1's final checkpoint) and their xxh3 in hex.
    pub init: Option<(String, String)>,
    /// Catalogue for the selection's flags, when the stage file names none.
    pub catalog: Option<PathBuf>,
    /// Number of ranks.
    pub ranks: usize,
    /// Nodes they spread over.
    pub nodes: usize,
    /// `--device` of every rank.
    pub device: String,
    /// Extra environment of every rank (the settings' `env`).
    pub env: BTreeMap<String, String>,
}

/// The job token placeholder in rendered (dry-run) output: the real one is never printed.
pub const TOKEN_SHOWN: &str = "<per-attempt token>";

/// The processes of one attempt. `port` 0 and `token` None render placeholders (dry run).
pub fn train_job(
    plan: &TrainPlan,
    run_id: &str,
    stage: Stage,
    attempt: u32,
    port: u16,
    token: Option<&str>,
    log_dir: PathBuf,
) -> Job {
    let world = plan.ranks.max(1);
    let per_node = world / plan.nodes.max(1);
    let mut args = vec![
        "train".to_string(),
        "--device".into(),
        plan.device.clone(),
        "--stage".into(),
        plan.stage_file.display().to_string(),
        "--data".into(),
        plan.data.clone(),
        "--run".into(),
        plan.run_dir.clone(),
    ];
    if let Some((init, xxh3)) = &plan.init {
        args.extend(["--init".into(), init.clone(), "--init-xxh3".into(), xxh3.clone()]);
    }
    if let Some(c) = &plan.catalog {
        args.extend(["--catalog".into(), c.display().to_string()]);
    }
    let ranks = (0..world)
        .map(|rank| RankCommand {
            rank,
            program: plan.train_bin.clone(),
            args: args.clone(),
            env: [
                ("RANK".into(), rank.to_string()),
                ("WORLD_SIZE".into(), world.to_string()),
                ("LOCAL_RANK".into(), (rank % per_node.max(1)).to_string()),
                ("MASTER_ADDR".into(), "127.0.0.1".into()),
                ("MASTER_PORT".into(), if port == 0 { "<free port at launch>".into() } else { port.to_string() }),
                ("S3_RUN_ID".into(), run_id.into()),
                ("S3_STAGE".into(), stage.name().into()),
                ("S3_ATTEMPT".into(), attempt.to_string()),
                ("S3_JOB_TOKEN".into(), token.unwrap_or(TOKEN_SHOWN).into()),
            ]
            .into_iter()
            // Several nodes: the node-aware sample order needs the count (Slurm and
            // Kubernetes ranks have it from SLURM_NNODES and S3_RANKS_PER_POD).
            .chain((plan.nodes > 1).then(|| ("S3_NODES".to_string(), plan.nodes.to_string())))
            .chain(plan.env.iter().map(|(k, v)| (k.clone(), v.clone())))
            .collect(),
        })
        .collect();
    Job::new(run_id, JobKind::Run(stage), attempt, ranks, plan.nodes.max(1), log_dir)
}

/// What an ingest needs.
#[derive(Clone, Debug)]
pub struct IngestPlan {
    /// `s3-ingest`.
    pub ingest_bin: PathBuf,
    /// The dataset catalogue.
    pub manifest: PathBuf,
    /// Output store.
    pub out: String,
    /// Worker processes (each takes the cases of its share, `--worker I/N`).
    pub workers: usize,
    /// `--jobs` of each worker.
    pub jobs: usize,
    /// More `s3-ingest` options for every worker (e.g. `--val-percent 25`).
    pub extra_args: Vec<String>,
    /// Extra environment of every worker.
    pub env: BTreeMap<String, String>,
}

/// The launch contract's identity variables of a one-process-per-rank job without a
/// rendezvous, then the plan's own environment.
fn identity_env(stage: Stage, run_id: &str, attempt: u32, env: &BTreeMap<String, String>) -> Vec<(String, String)> {
    [
        ("S3_RUN_ID".to_string(), run_id.to_string()),
        ("S3_STAGE".into(), stage.name().into()),
        ("S3_ATTEMPT".into(), attempt.to_string()),
    ]
    .into_iter()
    .chain(env.iter().map(|(k, v)| (k.clone(), v.clone())))
    .collect()
}

/// The worker processes of an ingest; one worker publishes by itself, several need
/// [`merge_job`] after them.
pub fn ingest_job(plan: &IngestPlan, run_id: &str, attempt: u32, log_dir: PathBuf) -> Job {
    let n = plan.workers.max(1);
    let ranks = (0..n)
        .map(|w| {
            let mut args = vec![
                "--manifest".to_string(),
                plan.manifest.display().to_string(),
                "--out".into(),
                plan.out.clone(),
                "--jobs".into(),
                plan.jobs.max(1).to_string(),
            ];
            args.extend(plan.extra_args.iter().cloned());
            if n > 1 {
                args.extend(["--worker".into(), format!("{w}/{n}")]);
            }
            RankCommand {
                rank: w,
                program: plan.ingest_bin.clone(),
                args,
                env: identity_env(Stage::Ingest, run_id, attempt, &plan.env),
            }
        })
        .collect();
    Job::new(run_id, JobKind::Run(Stage::Ingest), attempt, ranks, 1, log_dir)
}

/// `s3-ingest merge`: publishes what all workers committed.
pub fn merge_job(plan: &IngestPlan, run_id: &str, attempt: u32, log_dir: PathBuf) -> Job {
    let rank = RankCommand {
        rank: 0,
        program: plan.ingest_bin.clone(),
        args: vec!["merge".into(), "--out".into(), plan.out.clone()],
        env: identity_env(Stage::Ingest, run_id, attempt, &plan.env),
    };
    Job::new(run_id, JobKind::IngestMerge, attempt, vec![rank], 1, log_dir)
}

/// `s3-train eval` of a training stage's run folder (its final weights, its own
/// stage config): one process, Dice at 1/3/5/10 clicks into `eval/val.json`.
pub fn eval_job(plan: &TrainPlan, run_id: &str, attempt: u32, log_dir: PathBuf, benchmarks: Option<&Path>) -> Job {
    let mut args = vec![
        "eval".to_string(),
        "--device".into(),
        plan.device.clone(),
        "--data".into(),
        plan.data.clone(),
        "--run".into(),
        plan.run_dir.clone(),
    ];
    // A benchmarks catalogue is scored on the source grid; `--data` is then the store
    // the leakage check compares with.
    let stage = match benchmarks {
        Some(b) => {
            args.extend(["--protocol".into(), "source".into(), "--manifest".into(), b.display().to_string()]);
            Stage::Benchmarks
        }
        None => Stage::Eval,
    };
    let env = identity_env(stage, run_id, attempt, &plan.env);
    let rank = RankCommand { rank: 0, program: plan.train_bin.clone(), args, env };
    Job::new(run_id, JobKind::Run(stage), attempt, vec![rank], 1, log_dir)
}
