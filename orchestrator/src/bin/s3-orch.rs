//! `s3-orch`: run SAM-Med3D stages (launch, status) and the end-to-end demo.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use s3_orch::demo::{DemoConfig, dice_table, run_demo};
use s3_orch::launch::{IngestLaunch, Launched, StageLaunch, launch_ingest, launch_stage};
use s3_orch::ledger::{StageRecord, State};
use s3_orch::plan::IngestPlan;
use s3_trainer::train::TrainEvent;

/// Orchestrate SAM-Med3D: ingest, stage 1, stage 2.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Phantom corpus → ingest into a local store → train the small preset on CPU for a
    /// few minutes → Dice at 1/3/5/10 clicks before and after.
    Demo {
        /// Working directory.
        #[arg(long, default_value = "demo")]
        dir: PathBuf,
        /// Minutes of training.
        #[arg(long, default_value_t = 6.0)]
        minutes: f64,
        /// Phantom cases per dataset.
        #[arg(long, default_value_t = 12)]
        cases: usize,
    },
    /// Launch (or resume, or skip) a stage and wait for it; every attempt goes into
    /// the run ledger `<runs>/<run>/ledger.json`. A succeeded stage is not run again;
    /// a failed or preempted one continues from its last checkpoint as the next
    /// attempt. Stage 2 starts only from the stage-1 final checkpoint the ledger
    /// records, after checking its hash.
    Launch {
        /// ingest (--manifest, --out, --workers), stage1 / stage2 (--data), or
        /// pipeline (ingest → stage1 → stage2 in one run).
        #[arg(value_parser = ["ingest", "stage1", "stage2", "pipeline"])]
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
    },
    /// Print a rank's log of a stage (the newest attempt by default).
    Logs {
        #[command(flatten)]
        target: RunRef,
        /// ingest, stage1, stage2.
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
    /// Stop a run's running attempts: SIGTERM, so every rank checkpoints and exits 75
    /// (the ledger then records a preemption; launch again to continue).
    Cancel {
        #[command(flatten)]
        target: RunRef,
    },
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
    /// Ingest worker processes (each `--worker I/N`, then one merge).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Cases each ingest worker processes in parallel.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// The s3-ingest binary (default: S3_INGEST_BIN, else next to s3-orch, else PATH).
    #[arg(long)]
    ingest_bin: Option<PathBuf>,
    /// Root of the run folders: each run is `<runs>/<run>/` (ledger, stage folders, logs).
    #[arg(long)]
    runs: String,
    /// Run id (stage 2 continues the run of its stage 1; default for stage 1: run-<UTC time>).
    #[arg(long)]
    run: Option<String>,
    /// Total number of ranks.
    #[arg(long, default_value_t = 1)]
    ranks: usize,
    /// local (Slurm and Kubernetes: the next issues).
    #[arg(long, default_value = "local")]
    backend: String,
    /// Folder holding stage1.toml and stage2.toml.
    #[arg(long, default_value = "manifests/stages")]
    stages: PathBuf,
    /// `--device` of every rank (cpu, cuda: cuda:LOCAL_RANK).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The s3-train binary (default: S3_TRAIN_BIN, else next to s3-orch, else PATH).
    #[arg(long)]
    train_bin: Option<PathBuf>,
    /// Print exactly what would be started, and touch nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the stage's ledger record as JSON when done.
    #[arg(long)]
    json: bool,
}

/// The flag, else the variable, else the binary next to this one, else on PATH.
fn tool(flag: Option<PathBuf>, var: &str, name: &str) -> PathBuf {
    flag.or_else(|| std::env::var_os(var).map(PathBuf::from))
        .or_else(|| {
            let sibling = std::env::current_exe().ok()?.with_file_name(name);
            sibling.exists().then_some(sibling)
        })
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Prints a stage's end; the exit code the launch ends with (75 preempted).
fn report(run_id: &str, record: &StageRecord, json: bool) -> Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(record)?);
    }
    let a = record.attempts.last().context("an attempt was recorded")?;
    match record.state {
        State::Succeeded => {
            eprintln!(
                "run {run_id}: {} succeeded{}{}",
                record.name,
                a.last_step.map_or(String::new(), |s| format!(" at step {s}")),
                record.final_checkpoint.as_ref().map_or(String::new(), |c| format!("; final checkpoint {}", c.url))
            );
            Ok(ExitCode::SUCCESS)
        }
        State::Preempted => {
            eprintln!("run {run_id}: {} preempted after a checkpoint; launch again to continue", record.name);
            Ok(ExitCode::from(75))
        }
        _ => bail!(
            "run {run_id}: {} attempt {} failed: {}; launch again to resume",
            record.name,
            a.attempt,
            a.error.as_deref().unwrap_or("unknown")
        ),
    }
}

fn main() -> ExitCode {
    s3_shards::cli::init_logging();
    s3_shards::cli::exit_code(run(Cli::parse()))
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Launch { stage, args } => {
            let backend = s3_orch::backend::backend(&args.backend)?;
            let run_id = match (&args.run, stage.as_str()) {
                (Some(r), _) => r.clone(),
                (None, "stage2") => bail!("stage 2 continues a run: give --run ID (the run of its stage 1)"),
                (None, _) => format!("run-{}", s3_orch::ledger::now().replace([':', '-'], "").trim_end_matches('Z')),
            };
            let say = |m: &str| eprintln!("{m}");
            let ingest = |out: &str| -> Result<Launched> {
                let manifest = args.manifest.clone().context("--manifest is needed to ingest")?;
                let spec = IngestLaunch {
                    runs: args.runs.clone(),
                    run_id: run_id.clone(),
                    plan: IngestPlan {
                        ingest_bin: tool(args.ingest_bin.clone(), "S3_INGEST_BIN", "s3-ingest"),
                        manifest,
                        out: out.to_string(),
                        workers: args.workers,
                        jobs: args.jobs,
                    },
                    log_root: PathBuf::from("s3-orch-logs"),
                    store_options: Default::default(),
                };
                Ok(launch_ingest(&spec, backend.as_ref(), args.dry_run, &say)?)
            };
            let train = |name: &str, data: &str| -> Result<Launched> {
                let spec = StageLaunch {
                    runs: args.runs.clone(),
                    run_id: run_id.clone(),
                    stage_file: args.stages.join(format!("{name}.toml")),
                    stage: name.to_string(),
                    data: data.to_string(),
                    ranks: args.ranks,
                    train_bin: tool(args.train_bin.clone(), "S3_TRAIN_BIN", "s3-train"),
                    device: args.device.clone(),
                    catalog: args.manifest.clone(),
                    log_root: PathBuf::from("s3-orch-logs"),
                    store_options: Default::default(),
                };
                if !spec.stage_file.exists() {
                    bail!(
                        "stage file {} not found (--stages DIR holds stage1.toml and stage2.toml)",
                        spec.stage_file.display()
                    );
                }
                Ok(launch_stage(&spec, backend.as_ref(), args.dry_run, &say)?)
            };
            let steps: Vec<&str> = match stage.as_str() {
                "pipeline" => vec!["ingest", "stage1", "stage2"],
                one => vec![one],
            };
            for step in steps {
                let launched = match step {
                    "ingest" => ingest(args.out.as_deref().context("--out is needed to ingest")?)?,
                    name => {
                        let data = if stage == "pipeline" { args.out.as_deref() } else { args.data.as_deref() };
                        let data = data.context("--data is needed to train (--out for the pipeline)")?;
                        if args.dry_run && stage == "pipeline" && name == "stage2" {
                            println!("# stage2: starts from stage 1's final checkpoint once the ledger records it");
                            continue;
                        }
                        train(name, data)?
                    }
                };
                match launched {
                    Launched::AlreadySucceeded => {}
                    Launched::DryRun(text) => print!("{text}"),
                    Launched::Ran(record) => {
                        let code = report(&run_id, &record, args.json)?;
                        if code != ExitCode::SUCCESS {
                            return Ok(code);
                        }
                    }
                }
            }
        }
        Command::Logs { target: RunRef { runs, run }, stage, attempt, rank, follow } => {
            let path = s3_orch::launch::log_path(
                &runs,
                &run,
                &stage,
                attempt,
                rank,
                std::path::Path::new("s3-orch-logs"),
                &Default::default(),
            )?;
            let mut file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            let mut out = std::io::stdout();
            std::io::copy(&mut file, &mut out)?;
            if follow {
                let backend = s3_orch::backend::backend("local")?;
                loop {
                    std::thread::sleep(std::time::Duration::from_millis(500));
                    std::io::copy(&mut file, &mut out)?;
                    let ledger = s3_orch::launch::status(&runs, &run, &Default::default(), backend.as_ref(), &|_| {})?;
                    if ledger.stage(&stage).is_none_or(|s| s.state != State::Running) {
                        std::io::copy(&mut file, &mut out)?;
                        break;
                    }
                }
            }
        }
        Command::Cancel { target: RunRef { runs, run } } => {
            let backend = s3_orch::backend::backend("local")?;
            let stopped = s3_orch::launch::cancel(&runs, &run, &Default::default(), backend.as_ref())?;
            if stopped.is_empty() {
                eprintln!("run {run}: nothing running");
            } else {
                eprintln!("run {run}: asked {} to checkpoint and stop (SIGTERM)", stopped.join(", "));
            }
        }
        Command::Status { target: RunRef { runs, run }, json } => {
            let backend = s3_orch::backend::backend("local")?;
            let ledger =
                s3_orch::launch::status(&runs, &run, &Default::default(), backend.as_ref(), &|m| eprintln!("{m}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&ledger)?);
            } else {
                println!("run {}", ledger.run);
                for s in &ledger.stages {
                    let a = s.attempts.last();
                    println!(
                        "  {:<8} {:<10} attempts {}  last step {}  jobs {}{}",
                        s.name,
                        format!("{:?}", s.state).to_lowercase(),
                        s.attempts.len(),
                        a.and_then(|a| a.last_step).map_or("-".into(), |x| x.to_string()),
                        a.map_or("-".into(), |a| a.job_ids.join(",")),
                        a.and_then(|a| a.error.as_ref()).map_or(String::new(), |e| format!("  error: {e}"))
                    );
                }
            }
        }
        Command::Demo { dir, minutes, cases } => {
            let cfg = DemoConfig { dir, minutes, cases, ..DemoConfig::default() };
            let report = run_demo(&cfg, &|m| eprintln!("{m}"), &|e| match e {
                TrainEvent::Started { samples, .. } => eprintln!("   {samples} training samples"),
                TrainEvent::Step { metrics: m, .. } if m.step % 10 == 0 => {
                    eprintln!(
                        "   step {:>4} epoch {:>2} loss {:.3} dice {:.3} ({:.2} samples/s)",
                        m.step, m.epoch, m.loss, m.dice, m.samples_per_s
                    )
                }
                TrainEvent::Skipped { sample_id, reason } => eprintln!("   skipped {sample_id}: {reason}"),
                _ => {}
            })?;
            println!("\n{}", dice_table(&report));
            println!(
                "trained {} steps; metrics: {} (plots: {}); eval: {}; shards: {}",
                report.training.state.step,
                report.run_dir.join("metrics/").display(),
                report.run_dir.join("metrics.png").display(),
                report.run_dir.join("eval/val.csv").display(),
                report.store.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
