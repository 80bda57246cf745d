//! `s3-orch`: run SAM-Med3D stages (launch, status) and the end-to-end demo.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use s3_orch::demo::{DemoConfig, run_demo, summary};
use s3_orch::job_hooks::HookTarget;
use s3_orch::launch::pipeline::{self, PipelineLaunch};
use s3_orch::launch::{Launched, follow};
use s3_orch::ledger::StageRecord;
use s3_shards::StoreOptions;
use s3_shards::cli::OutputFlags;

mod setting_flags;
use setting_flags::SettingFlags;

/// Orchestrate SAM-Med3D: ingest, stage 1, stage 2.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    store: s3_shards::cli::StoreFlags,
    #[command(flatten)]
    output: s3_shards::cli::OutputFlags,
}

#[derive(Subcommand)]
enum Command {
    /// The pipeline on the local backend, on an embedded default: a phantom corpus →
    /// ingest (2 workers + merge) → stage 1 (2 CPU ranks, small preset) → Dice →
    /// stage 2 from stage 1's verified checkpoint on the fine-tune selection → Dice →
    /// the run's status. About 10 minutes on 2 cores. Needs s3-train and s3-ingest next
    /// to s3-orch (`cargo build`), or S3_TRAIN_BIN / S3_INGEST_BIN.
    Demo {
        /// Working directory (cleared of an earlier demo's output).
        #[arg(long, default_value = "demo")]
        dir: PathBuf,
        /// Phantom cases per dataset.
        #[arg(long, default_value_t = 12)]
        cases: usize,
        /// Epochs of stage 1 (default: manifests/stages/demo.toml's).
        #[arg(long)]
        stage1_epochs: Option<u64>,
        /// Epochs of stage 2 (default: manifests/stages/demo-finetune.toml's).
        #[arg(long)]
        stage2_epochs: Option<u64>,
    },
    /// Launch (or resume, or skip) a stage; every attempt goes into the run ledger
    /// `<runs>/<run>/ledger.json`. The local backend runs the stages here and waits;
    /// Slurm holds the chain (each job after the one before) and the launch returns
    /// once submitted (--wait follows it). A succeeded stage is not run again;
    /// a failed or preempted one continues from its last checkpoint as the next
    /// attempt. Stage 2 starts only from the stage-1 final checkpoint the ledger
    /// records, after checking its hash.
    Launch {
        /// ingest (--manifest, --out, --workers), stage1 / stage2 (--data), eval
        /// (stage 2's final weights on the validation split, --data; with --benchmarks
        /// on a benchmarks catalogue), or pipeline (ingest → stage1 → stage2 → eval in
        /// one run).
        #[arg(value_parser = ["ingest", "stage1", "stage2", "eval", "pipeline"])]
        stage: String,
        #[command(flatten)]
        args: Box<LaunchArgs>,
    },
    /// The run ledger: stages, attempts, states, job ids, last checkpoint step. Running
    /// attempts are checked against the scheduler.
    Status {
        #[command(flatten)]
        target: RunRef,
        /// Print the ledger as JSON.
        #[arg(long)]
        json: bool,
        /// First wait until no stage runs (a scheduler's requeued job is followed).
        #[arg(long)]
        wait: bool,
    },
    /// Print a rank's log of a stage (the newest attempt by default).
    Logs {
        #[command(flatten)]
        target: RunRef,
        /// ingest, stage1, stage2, eval, benchmarks.
        #[arg(long)]
        stage: String,
        /// Attempt number (default: the newest).
        #[arg(long)]
        attempt: Option<u32>,
        /// Rank (or ingest worker).
        #[arg(long, default_value_t = 0)]
        rank: usize,
        /// Keep printing what is appended until the attempt ends.
        #[arg(long)]
        follow: bool,
    },
    /// Ledger hooks a batch script runs around its ranks (Slurm jobs record their own
    /// attempts, so the chain runs without the launching terminal).
    #[command(subcommand, hide = true)]
    Job(JobHook),
    /// Stop a run's running attempts: SIGTERM, so every rank checkpoints and exits 75
    /// (the ledger then records a preemption; launch again to continue).
    Cancel {
        #[command(flatten)]
        target: RunRef,
    },
}

/// `s3-orch job ...`.
#[derive(Subcommand)]
enum JobHook {
    /// Prints the attempt number this run of the scheduler job is.
    Start {
        #[command(flatten)]
        target: HookRef,
        /// The scheduler's job id.
        #[arg(long)]
        job_id: String,
        /// The scheduler's restart count of the job (SLURM_RESTART_COUNT).
        #[arg(long, default_value_t = 0)]
        restart: u32,
        /// The shards a training stage reads (their index hash goes into the ledger).
        #[arg(long)]
        data: Option<String>,
    },
    /// Prints stage 1's final checkpoint URL and xxh3 once their hash is verified;
    /// fails if the ledger does not record a succeeded stage 1.
    Gate {
        #[command(flatten)]
        target: HookRef,
    },
    /// Records how the attempt ended; exits 3 when the job should requeue itself.
    End {
        #[command(flatten)]
        target: HookRef,
        /// The scheduler's job id.
        #[arg(long)]
        job_id: String,
        /// The attempt `job start` printed.
        #[arg(long)]
        attempt: u32,
        /// The ranks' exit code.
        #[arg(long, allow_hyphen_values = true)]
        exit_code: i32,
        /// Where the ranks' logs are.
        #[arg(long)]
        logs: String,
        /// The training stage's file.
        #[arg(long)]
        stage_file: Option<PathBuf>,
        /// The ingest's output store.
        #[arg(long)]
        out: Option<String>,
        /// For eval: the stage it evaluated.
        #[arg(long)]
        evaluated: Option<String>,
    },
    /// Marks the attempt failed if the ledger still says it runs (the watchdog job
    /// of a Slurm ingest, started when a worker or the merge was killed).
    Fail {
        #[command(flatten)]
        target: HookRef,
        /// The attempt.
        #[arg(long)]
        attempt: u32,
        /// Why, for the ledger.
        #[arg(long)]
        reason: String,
    },
    /// Copies this node's log files into the run folder, under
    /// logs/<stage>/attempt-<N>/, where `s3-orch logs` reads them.
    UploadLogs {
        #[command(flatten)]
        target: HookRef,
        /// The attempt `job start` printed.
        #[arg(long)]
        attempt: u32,
        /// Folders (their files) or files to copy.
        #[arg(long = "from", required = true, num_args = 1..)]
        from: Vec<PathBuf>,
    },
}

/// The run and stage of a hook.
#[derive(clap::Args)]
struct HookRef {
    /// Root of the run folders.
    #[arg(long)]
    runs: String,
    /// Run id.
    #[arg(long)]
    run: String,
    /// Ledger stage.
    #[arg(long)]
    stage: String,
}

impl HookRef {
    fn target(self, options: &StoreOptions) -> s3_orch::job_hooks::HookTarget {
        s3_orch::job_hooks::HookTarget { options: options.clone(), ..HookTarget::new(self.runs, self.run, self.stage) }
    }
}

/// Which run.
#[derive(clap::Args)]
struct RunRef {
    /// Root of the run folders.
    #[arg(long)]
    runs: String,
    /// Run id.
    #[arg(long)]
    run: String,
}

/// Where and how a stage runs.
#[derive(clap::Args)]
struct LaunchArgs {
    /// Published shards to train on (stage1, stage2; the pipeline uses --out).
    #[arg(long)]
    data: Option<String>,
    /// The dataset catalogue to ingest (ingest, pipeline); for the training stages
    /// its pretrain/finetune flags drive the selection unless the stage file names its
    /// own `datasets.catalog`.
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Output store of the ingest (ingest, pipeline).
    #[arg(long)]
    out: Option<String>,
    /// eval: score this benchmarks catalogue (manifests/benchmarks.toml) on the source
    /// grid instead of the val split, after checking that the run trained on none of
    /// its cases; recorded as the ledger's `benchmarks` stage, with
    /// eval/benchmarks.{csv,md,json} in stage 2's folder. pipeline: the same after its
    /// eval. The path must be readable where the eval job runs.
    #[arg(long, value_name = "FILE")]
    benchmarks: Option<PathBuf>,
    /// Root of the run folders: each run is `<runs>/<run>/` (ledger, stage folders, logs).
    #[arg(long)]
    runs: String,
    /// Run id (stage 2 continues the run of its stage 1; default for stage 1: run-<UTC time>).
    #[arg(long)]
    run: Option<String>,
    /// local, slurm or k8s.
    #[arg(long, env = "S3_ORCH_BACKEND", default_value = "local")]
    backend: String,
    /// Cluster profile (default: manifests/clusters/<backend>.toml when it exists).
    #[arg(long, value_name = "FILE")]
    cluster: Option<PathBuf>,
    /// Folder holding stage1.toml and stage2.toml.
    #[arg(long, default_value = "manifests/stages")]
    stages: PathBuf,
    /// Print exactly what would be submitted, and touch nothing (no scheduler command,
    /// no object written).
    #[arg(long)]
    dry_run: bool,
    /// Print each stage's ledger record as JSON when done.
    #[arg(long)]
    json: bool,
    /// On a scheduler that holds the chain (Slurm): stay until the stages end and exit
    /// with their result. Without it the launch returns once everything is submitted.
    #[arg(long)]
    wait: bool,
    #[command(flatten)]
    settings: SettingFlags,
}

/// Prints a stage's end; the exit code the launch ends with (75 preempted).
fn report(run_id: &str, record: &StageRecord, json: bool) -> Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(record)?);
    }
    match follow::stage_end(run_id, record) {
        Ok((line, code)) => {
            eprintln!("{line}");
            Ok(ExitCode::from(code))
        }
        Err(failed) => bail!("{failed}"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    s3_shards::cli::init_logging(&cli.output);
    s3_shards::cli::exit_code(run(cli))
}

fn run(cli: Cli) -> Result<ExitCode> {
    let options = cli.store.resolve();
    let say = cli.output.say();
    match cli.command {
        Command::Launch { stage, args } => return launch(&stage, &args, &options, cli.output),
        Command::Job(hook) => return job_hook(hook, &options),
        Command::Logs { target: RunRef { runs, run }, stage, attempt, rank, follow } => {
            let log_root = std::path::Path::new("s3-orch-logs");
            let at = follow::LogAt { runs: &runs, run: &run, stage: &stage, attempt, rank };
            follow::copy_log(&at, log_root, follow, &mut std::io::stdout(), &options)?;
        }
        Command::Cancel { target: RunRef { runs, run } } => {
            let stopped = s3_orch::launch::cancel(&runs, &run, &options)?;
            if stopped.is_empty() {
                say(&format!("run {run}: nothing running"));
            } else {
                say(&format!("run {run}: asked {} to checkpoint and stop (SIGTERM)", stopped.join(", ")));
            }
        }
        Command::Status { target: RunRef { runs, run }, json, wait } => {
            if wait {
                follow::wait_run(&runs, &run, &options, &say)?;
            }
            let ledger = s3_orch::launch::status(&runs, &run, &options, &say)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&ledger)?);
            } else {
                print!("{}", ledger.table());
            }
        }
        Command::Demo { dir, cases, stage1_epochs, stage2_epochs } => {
            let cfg = DemoConfig {
                dir,
                cases,
                epochs: (stage1_epochs, stage2_epochs),
                ..DemoConfig::new(
                    pipeline::tool(None, "S3_TRAIN_BIN", "s3-train"),
                    pipeline::tool(None, "S3_INGEST_BIN", "s3-ingest"),
                )
            };
            cfg.check_tools()?;
            let started = std::time::Instant::now();
            let report = run_demo(&cfg, &say)?;
            println!("\n{}", summary(&report, started.elapsed()));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn job_hook(hook: JobHook, options: &StoreOptions) -> Result<ExitCode> {
    use s3_orch::job_hooks;
    match hook {
        JobHook::Start { target, job_id, restart, data } => {
            println!("{}", job_hooks::job_start(&target.target(options), &job_id, restart, data.as_deref())?);
        }
        JobHook::Gate { target } => {
            let (url, xxh3) = job_hooks::job_gate(&target.target(options))?;
            println!("{url} {xxh3}");
        }
        JobHook::End { target, job_id, attempt, exit_code, logs, stage_file, out, evaluated } => {
            let end = job_hooks::JobEnd {
                job_id: &job_id,
                attempt,
                exit_code,
                stage_file: stage_file.as_deref(),
                out: out.as_deref(),
                evaluated: evaluated.as_deref(),
                logs: &logs,
            };
            if job_hooks::job_end(&target.target(options), &end)? {
                return Ok(ExitCode::from(s3_shards::exit::REQUEUE));
            }
        }
        JobHook::Fail { target, attempt, reason } => {
            if job_hooks::job_fail(&target.target(options), attempt, &reason)? {
                eprintln!("s3-orch: attempt {attempt} marked failed: {reason}");
            }
        }
        JobHook::UploadLogs { target, attempt, from } => {
            let n = job_hooks::upload_logs(&target.target(options), attempt, &from)?;
            eprintln!("s3-orch: {n} log file(s) uploaded");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn launch(stage: &str, args: &LaunchArgs, store: &StoreOptions, output: OutputFlags) -> Result<ExitCode> {
    let run_id = pipeline::run_id(stage, args.run.as_deref())?;
    let request = PipelineLaunch {
        target: stage.to_string(),
        run_id: run_id.clone(),
        runs: args.runs.clone(),
        backend: args.backend.clone(),
        cluster: args.cluster.clone(),
        stages: args.stages.clone(),
        manifest: args.manifest.clone(),
        data: args.data.clone(),
        benchmarks: args.benchmarks.clone(),
        out: args.out.clone(),
        flags: args.settings.layer(),
        dry_run: args.dry_run,
        store: store.clone(),
    };
    let say = output.say();
    if args.dry_run {
        print!("{}", request.dry_run_header());
    }
    let mut submitted = Vec::new();
    let mut code = ExitCode::SUCCESS;
    pipeline::launch_steps(&request, &say, &mut |launched| {
        match launched {
            Launched::AlreadySucceeded => {}
            Launched::DryRun(text) => print!("{text}"),
            Launched::Ran(record) => {
                code = report(&run_id, &record, args.json).map_err(|e| s3_orch::OrchError::Caller(e.into()))?;
                return Ok(code == ExitCode::SUCCESS);
            }
            Launched::Submitted(record) => {
                eprintln!(
                    "run {run_id}: {} submitted as job {}",
                    record.name,
                    record.attempts.last().map_or(String::new(), |a| a.job_ids.join(","))
                );
                submitted.push(record.name);
            }
        }
        Ok(true)
    })?;
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }
    if !submitted.is_empty() && !args.wait {
        say(&format!(
            "the scheduler runs the chain; follow it with `s3-orch status --runs {} --run {run_id}`",
            args.runs
        ));
    }
    if args.wait {
        for name in submitted {
            let poll = std::time::Duration::from_secs(2);
            let record = s3_orch::launch::wait_stage(&args.runs, &run_id, &name, store, poll, &say)?;
            let code = report(&run_id, &record, args.json)?;
            if code != ExitCode::SUCCESS {
                return Ok(code);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
