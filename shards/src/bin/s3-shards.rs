//! `s3-shards`: inspect and check a store of SAM-Med3D shards.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use s3_shards::cli::{OutputFlags, StoreFlags};
use s3_shards::preview::Selection;
use s3_shards::{ShardIndex, ShardReader, WriterOptions, lookup, open_store, preview, synthetic, verify};

/// Inspect, verify and preview the shards of a published store.
///
/// STORE is a URL: a path, file:///abs/path, memory://name or s3://bucket/prefix.
/// For S3 the keys come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; the
/// endpoint, region and retries from the flags below or their variables.
#[derive(Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    store: StoreFlags,
    #[command(flatten)]
    output: OutputFlags,
}

#[derive(Subcommand)]
enum Command {
    /// Shards, samples and bytes per dataset and task, from index.json.
    Ls {
        /// The store.
        store: String,
        /// Print the index totals as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Re-read everything the index names: file sizes and hashes, every sample's
    /// checksum, row counts. Exits 1 naming every mismatch.
    Verify {
        /// The store.
        store: String,
        /// Print the report as JSON (README "Command line") instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Print a sample's metadata as JSON.
    Cat {
        /// The store.
        store: String,
        /// dataset/task/case/label
        sample_id: String,
    },
    /// Write a PNG of samples: the three slices through each mask's centre (axial |
    /// coronal | sagittal), the mask outlined in red, and under each its id, class,
    /// category, modality, channel and split. One sample (SAMPLE_ID or --sample), or a
    /// grid of --n samples of --dataset (of every dataset without it) spread over the
    /// cases.
    Preview {
        /// The store.
        store: String,
        /// dataset/task/case/label of one sample.
        #[arg(conflicts_with_all = ["sample", "dataset"])]
        sample_id: Option<String>,
        /// dataset/task/case/label of one sample.
        #[arg(long, conflicts_with = "dataset")]
        sample: Option<String>,
        /// A grid of this dataset's samples.
        #[arg(long)]
        dataset: Option<String>,
        /// Samples in the grid.
        #[arg(long, default_value_t = 16)]
        n: usize,
        /// Pictures per row of the grid.
        #[arg(long, default_value_t = 2)]
        columns: usize,
        /// Output PNG.
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Write a small synthetic CT-like store (for trying the tools and for tests).
    Synth {
        /// The store to fill.
        store: String,
        /// Datasets to create.
        #[arg(long, default_value_t = 2)]
        datasets: usize,
        /// Cases per dataset.
        #[arg(long, default_value_t = 4)]
        cases: usize,
        /// Labels per case.
        #[arg(long, default_value_t = 2)]
        labels: i32,
        /// zstd level.
        #[arg(long, default_value_t = 3)]
        zstd_level: i32,
        /// Rows per row group.
        #[arg(long, default_value_t = 16)]
        row_group_rows: usize,
        /// Roll to a new shard file after this many MiB.
        #[arg(long, default_value_t = 256)]
        target_file_mib: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    s3_shards::cli::init_logging(&cli.output);
    let outcome = match s3_shards::io_runtime::io_runtime() {
        Ok(rt) => rt.block_on(run(cli)),
        Err(e) => Err(e.into()),
    };
    s3_shards::cli::exit_code(outcome)
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let options = cli.store.resolve();
    let open =
        |url: &str| open_store(url, &options).with_context(|| format!("opening {}", s3_shards::store::redact(url)));
    match cli.command {
        Command::Ls { store, json } => {
            let loc = open(&store)?;
            let index = load_index(&loc).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&index.datasets)?);
            } else {
                print_ls(&index);
            }
        }
        Command::Verify { store, json } => {
            let loc = open(&store)?;
            let bar = if cli.output.progress() { ProgressBar::new(0) } else { ProgressBar::hidden() };
            let bar = bar.with_style(
                ProgressStyle::with_template("{spinner} verifying shards {pos}/{len} [{elapsed_precise}, eta {eta}]")
                    .expect("template"),
            );
            let report = verify::verify_store(loc.store(), |done, total| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            })
            .await
            .with_context(|| format!("verifying {loc}"))?;
            bar.finish_and_clear();
            if json {
                let v = serde_json::json!({
                    "store": loc.url(),
                    "ok": report.ok(),
                    "shards": report.shards,
                    "samples_ok": report.samples_ok,
                    "bytes_read": report.bytes,
                    "problems": report.problems.iter().map(|p| serde_json::json!({"path": p.path, "message": p.message})).collect::<Vec<_>>(),
                    "unreferenced": report.unreferenced,
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::from(if report.ok() { 0 } else { s3_shards::exit::CHECK_FAILED }));
            }
            for p in &report.problems {
                println!("MISMATCH {}: {}", p.path, p.message);
            }
            for u in &report.unreferenced {
                println!("note: {u} is not named by the index (left by an interrupted run?)");
            }
            println!(
                "{}: {} shards, {} samples ok, {:.1} MiB read, {} problem(s)",
                loc,
                report.shards,
                report.samples_ok,
                report.bytes as f64 / 1048576.0,
                report.problems.len()
            );
            if !report.ok() {
                return Ok(ExitCode::from(s3_shards::exit::CHECK_FAILED));
            }
        }
        Command::Cat { store, sample_id } => {
            let loc = open(&store)?;
            let index = load_index(&loc).await?;
            let at = lookup::find_sample(loc.store(), &index, &sample_id).await?;
            let reader = ShardReader::open(loc.store().clone(), &at.shard).await?;
            let header = reader.headers().await?.swap_remove(at.row as usize);
            let mut v = serde_json::to_value(&header)?;
            v["checksum"] = format!("{:016x}", header.checksum).into();
            v["shard"] = at.shard.to_string().into();
            v["row"] = at.row.into();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Command::Preview { store, sample_id, sample, dataset, n, columns, out } => {
            let loc = open(&store)?;
            let index = load_index(&loc).await?;
            let selection = match sample_id.or(sample) {
                Some(id) => Selection::Sample(id),
                None => Selection::Spread { dataset, n: n.max(1) },
            };
            let (picture, ids) = preview::preview(loc.store(), &index, &selection, columns)
                .await
                .with_context(|| format!("previewing {loc}"))?;
            picture.save(&out).with_context(|| format!("writing {}", out.display()))?;
            println!(
                "wrote {}: {} sample(s), axial | coronal | sagittal through each mask's centre",
                out.display(),
                ids.len()
            );
        }
        Command::Synth { store, datasets, cases, labels, zstd_level, row_group_rows, target_file_mib } => {
            let loc = open(&store)?;
            let opts = WriterOptions {
                zstd_level,
                row_group_rows,
                target_file_bytes: target_file_mib << 20,
                ..Default::default()
            };
            let index = synthetic::populate(loc.store(), datasets, cases, labels, opts).await?;
            println!("wrote {} samples in {} shards to {loc}", index.total_samples(), index.shards.len());
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn load_index(loc: &s3_shards::StoreLocation) -> Result<ShardIndex> {
    match ShardIndex::load(loc.store().as_ref()).await {
        Err(s3_shards::ShardError::NotFound(_)) => {
            anyhow::bail!("{loc} has no index.json: nothing has been published there yet")
        }
        r => r.with_context(|| format!("reading the index of {loc}")),
    }
}

fn print_ls(index: &ShardIndex) {
    println!("{:<28} {:<16} {:>7} {:>9} {:>12}", "DATASET", "TASK", "SHARDS", "SAMPLES", "MIB");
    for (name, d) in &index.datasets {
        for (task, t) in &d.tasks {
            println!("{:<28} {:<16} {:>7} {:>9} {:>12.1}", name, task, t.shards, t.samples, t.bytes as f64 / 1048576.0);
        }
    }
    let (shards, samples, bytes) = index
        .datasets
        .values()
        .fold((0, 0, 0), |(a, b, c), d| (a + d.total.shards, b + d.total.samples, c + d.total.bytes));
    println!("{:<28} {:<16} {:>7} {:>9} {:>12.1}", "TOTAL", "", shards, samples, bytes as f64 / 1048576.0);
    println!("published {} by {}", index.created.at, index.created.tool);
}
