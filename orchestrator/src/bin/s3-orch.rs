//! `s3-orch`: run SAM-Med3D stages (launch, status) and the end-to-end demo.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use s3_orch::demo::{DemoConfig, dice_table, run_demo};
use s3_orch::launch::{Launched, StageLaunch, launch_stage};
use s3_orch::ledger::State;
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
        /// stage1 or stage2.
        #[arg(value_parser = ["stage1", "stage2"])]
        stage: String,
        #[command(flatten)]
        args: LaunchArgs,
    },
    /// The run ledger: stages, attempts, states, job ids, last checkpoint step. Running
    /// attempts are checked against the scheduler.
    Status {
        /// Root of the run folders.
        #[arg(long)]
        runs: String,
        /// Run id.
        #[arg(long)]
        run: String,
        /// Print the ledger as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Where and how a stage runs.
#[derive(clap::Args)]
struct LaunchArgs {
    /// Published shards (the ingest's --out).
    #[arg(long)]
    data: String,
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

/// `--train-bin`, else `S3_TRAIN_BIN`, else `s3-train` next to this binary, else on PATH.
fn train_bin(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("S3_TRAIN_BIN").map(PathBuf::from))
        .or_else(|| {
            let sibling = std::env::current_exe().ok()?.with_file_name("s3-train");
            sibling.exists().then_some(sibling)
        })
        .unwrap_or_else(|| PathBuf::from("s3-train"))
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
                (None, "stage1") => {
                    format!("run-{}", s3_orch::ledger::now().replace([':', '-'], "").trim_end_matches('Z'))
                }
                (None, _) => bail!("stage 2 continues a run: give --run ID (the run of its stage 1)"),
            };
            let spec = StageLaunch {
                runs: args.runs,
                run_id,
                stage_file: args.stages.join(format!("{stage}.toml")),
                stage,
                data: args.data,
                ranks: args.ranks,
                train_bin: train_bin(args.train_bin),
                device: args.device,
                log_root: PathBuf::from("s3-orch-logs"),
                store_options: Default::default(),
            };
            if !spec.stage_file.exists() {
                bail!(
                    "stage file {} not found (--stages DIR holds stage1.toml and stage2.toml)",
                    spec.stage_file.display()
                );
            }
            match launch_stage(&spec, backend.as_ref(), args.dry_run, &|m| eprintln!("{m}"))? {
                Launched::AlreadySucceeded => {}
                Launched::DryRun(text) => print!("{text}"),
                Launched::Ran(record) => {
                    if args.json {
                        println!("{}", serde_json::to_string_pretty(&record)?);
                    }
                    let a = record.attempts.last().context("an attempt was recorded")?;
                    match record.state {
                        State::Succeeded => eprintln!(
                            "run {}: {} succeeded at step {}; final checkpoint {}",
                            spec.run_id,
                            spec.stage,
                            a.last_step.unwrap_or(0),
                            record.final_checkpoint.as_ref().map_or("-", |c| c.url.as_str())
                        ),
                        State::Preempted => {
                            eprintln!(
                                "run {}: {} preempted after a checkpoint; launch again to continue",
                                spec.run_id, spec.stage
                            );
                            return Ok(ExitCode::from(75));
                        }
                        _ => bail!(
                            "run {}: {} attempt {} failed: {}; launch again to resume from the last checkpoint",
                            spec.run_id,
                            spec.stage,
                            a.attempt,
                            a.error.as_deref().unwrap_or("unknown")
                        ),
                    }
                }
            }
        }
        Command::Status { runs, run, json } => {
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
