//! `s3-orch`: run SAM-Med3D stages. Today: the end-to-end demo.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use s3_orch::demo::{DemoConfig, dice_table, run_demo};
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
}

fn main() -> ExitCode {
    s3_shards::cli::init_logging();
    s3_shards::cli::exit_code(run(Cli::parse()).map(|()| ExitCode::SUCCESS))
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
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
    Ok(())
}
