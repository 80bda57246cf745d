//! A stage → what each rank runs (DESIGN §10): the `s3-train` command line and the
//! launch-contract environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`,
//! `MASTER_PORT`, `S3_RUN_ID`, `S3_STAGE`, `S3_ATTEMPT`, `S3_JOB_TOKEN`). Backends
//! only decide where those processes run.

use std::path::PathBuf;

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

/// Everything a backend needs to run one attempt of a stage.
#[derive(Clone, Debug)]
pub struct Job {
    /// Run id.
    pub run_id: String,
    /// Stage name.
    pub stage: String,
    /// Attempt number (1-based).
    pub attempt: u32,
    /// The ranks.
    pub ranks: Vec<RankCommand>,
    /// Where rank logs go (`rank-R.log`).
    pub log_dir: PathBuf,
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
    /// Weights to start from (stage 2: stage 1's final checkpoint) and their xxh3.
    pub init: Option<(String, u64)>,
    /// Catalogue for the selection's flags, when the stage file names none.
    pub catalog: Option<PathBuf>,
    /// Number of ranks.
    pub ranks: usize,
    /// `--device` of every rank.
    pub device: String,
}

/// The job token placeholder in rendered (dry-run) output: the real one is never printed.
pub const TOKEN_SHOWN: &str = "<per-attempt token>";

/// The processes of one attempt. `port` 0 and `token` None render placeholders (dry run).
pub fn train_job(
    plan: &TrainPlan,
    run_id: &str,
    stage: &str,
    attempt: u32,
    port: u16,
    token: Option<&str>,
    log_dir: PathBuf,
) -> Job {
    let world = plan.ranks.max(1);
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
        args.extend(["--init".into(), init.clone(), "--init-xxh3".into(), format!("{xxh3:016x}")]);
    }
    if let Some(c) = &plan.catalog {
        args.extend(["--catalog".into(), c.display().to_string()]);
    }
    let ranks = (0..world)
        .map(|rank| RankCommand {
            rank,
            program: plan.train_bin.clone(),
            args: args.clone(),
            env: vec![
                ("RANK".into(), rank.to_string()),
                ("WORLD_SIZE".into(), world.to_string()),
                ("LOCAL_RANK".into(), rank.to_string()),
                ("MASTER_ADDR".into(), "127.0.0.1".into()),
                ("MASTER_PORT".into(), if port == 0 { "<free port at launch>".into() } else { port.to_string() }),
                ("S3_RUN_ID".into(), run_id.into()),
                ("S3_STAGE".into(), stage.into()),
                ("S3_ATTEMPT".into(), attempt.to_string()),
                ("S3_JOB_TOKEN".into(), token.unwrap_or(TOKEN_SHOWN).into()),
            ],
        })
        .collect();
    Job { run_id: run_id.into(), stage: stage.into(), attempt, ranks, log_dir }
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
}

fn identity_env(run_id: &str, stage: &str, attempt: u32) -> Vec<(String, String)> {
    vec![
        ("S3_RUN_ID".into(), run_id.into()),
        ("S3_STAGE".into(), stage.into()),
        ("S3_ATTEMPT".into(), attempt.to_string()),
    ]
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
            if n > 1 {
                args.extend(["--worker".into(), format!("{w}/{n}")]);
            }
            RankCommand {
                rank: w,
                program: plan.ingest_bin.clone(),
                args,
                env: identity_env(run_id, "ingest", attempt),
            }
        })
        .collect();
    Job { run_id: run_id.into(), stage: "ingest".into(), attempt, ranks, log_dir }
}

/// `s3-ingest merge`: publishes what all workers committed.
pub fn merge_job(plan: &IngestPlan, run_id: &str, attempt: u32, log_dir: PathBuf) -> Job {
    let rank = RankCommand {
        rank: 0,
        program: plan.ingest_bin.clone(),
        args: vec!["merge".into(), "--out".into(), plan.out.clone()],
        env: identity_env(run_id, "ingest", attempt),
    };
    Job { run_id: run_id.into(), stage: "ingest-merge".into(), attempt, ranks: vec![rank], log_dir }
}
