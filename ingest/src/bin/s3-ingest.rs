//! `s3-ingest`: NIfTI datasets → SAM-Med3D shards.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{CommandFactory, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use s3_ingest::catalog::Catalog;
use s3_ingest::nifti_io::ReadOptions;
use s3_ingest::preprocess::PreprocessOptions;
use s3_ingest::run::{self, Event, IngestConfig, Summary};
use s3_shards::cli::{OutputFlags, StoreFlags};
use s3_shards::{StoreOptions, WriterOptions, open_store};

/// Turn NIfTI datasets into SAM-Med3D training shards: every case is resampled to
/// 1.5 mm, reoriented to RAS+, cropped to 128³ about each label and written as zstd
/// Parquet with label manifests and an index.
///
/// Runs are resumable (re-run the same command after an interruption) and every
/// source case ends up ingested, skipped or quarantined with a reason.
///
/// Examples:
///   s3-ingest --manifest manifests/datasets.toml --out s3://bucket/sam3d/v1
///   s3-ingest synth --out phantoms --cases 8 && s3-ingest --manifest phantoms/datasets.toml --out store
///   s3-ingest --manifest m.toml --out s3://b/p --worker 3/16   (then: s3-ingest merge --out s3://b/p)
#[derive(Parser)]
#[command(version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    ingest: IngestArgs,
    #[command(flatten)]
    store: StoreFlags,
    #[command(flatten)]
    output: OutputFlags,
}

#[derive(Parser, Clone, PartialEq)]
struct IngestArgs {
    /// The dataset catalogue.
    #[arg(long, default_value = "manifests/datasets.toml")]
    manifest: PathBuf,
    /// Output store: path, file:///abs, s3://bucket/prefix (AWS_* variables apply).
    /// Default: the catalogue's `[output] location` (`${SAM3D_OUT:-./shards}` in the
    /// shipped one).
    #[arg(long)]
    out: Option<String>,
    /// Cases processed in parallel (each needs up to ~2 GiB for a large CT).
    #[arg(long, short, default_value_t = default_jobs())]
    jobs: usize,
    /// Process only the share I of N (0-based) of every task's cases, e.g. 3/16, for a
    /// Kubernetes Indexed Job or Slurm array; then run `s3-ingest merge`.
    #[arg(long, value_parser = parse_worker)]
    worker: Option<(u32, u32)>,
    /// Only these datasets (comma-separated names).
    #[arg(long, value_delimiter = ',')]
    datasets: Option<Vec<String>>,
    /// List what would be done, write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Exit 1 if any case was quarantined or a dataset's files do not match its
    /// catalogue layout.
    #[arg(long)]
    strict: bool,
    /// Print the summary as JSON (README "Command line") instead of a table.
    #[arg(long)]
    json: bool,
    /// zstd level of the shards.
    #[arg(long, default_value_t = 3)]
    zstd_level: i32,
    /// Roll shard files at this size.
    #[arg(long, default_value_t = 256)]
    target_file_mib: u64,
    /// Refuse volumes whose voxel data exceeds this many bytes.
    #[arg(long, default_value_t = 2 << 30)]
    max_volume_bytes: u64,
    /// Drop labels smaller than this at 1.5 mm (mm³; the paper's 1 cm³).
    #[arg(long, default_value_t = 1000.0)]
    min_mask_mm3: f64,
    /// Drop labels whose 128³ crop keeps fewer foreground voxels.
    #[arg(long, default_value_t = 1000)]
    min_crop_voxels: i64,
    /// Percent of cases in the validation split.
    #[arg(long, default_value_t = 10)]
    val_percent: u32,
    /// Where remote inputs are fetched (one case per job at a time).
    #[arg(long)]
    tmp_dir: Option<PathBuf>,
}

fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn parse_worker(s: &str) -> Result<(u32, u32), String> {
    let (i, n) = s.split_once('/').ok_or("expected I/N, e.g. 0/4")?;
    let (i, n): (u32, u32) = (i.parse().map_err(|_| "I is not a number")?, n.parse().map_err(|_| "N is not a number")?);
    if n == 0 || i >= n {
        return Err(format!("worker {i} of {n}: need 0 <= I < N"));
    }
    Ok((i, n))
}

#[derive(Subcommand)]
enum Command {
    /// Validate a catalogue and print its counts; with --check, walk the raw data
    /// (listings only, no voxel read) and print per dataset: present or not, cases
    /// matched, labels found, held out, first problem.
    Catalog {
        /// The catalogue.
        #[arg(long, default_value = "manifests/datasets.toml")]
        manifest: PathBuf,
        /// Check the catalogue against the raw data.
        #[arg(long)]
        check: bool,
        /// The raw root (sets `SAM3D_RAW` for the sources); default: the environment's.
        #[arg(requires = "check")]
        raw: Option<String>,
        /// Only these datasets (comma-separated names).
        #[arg(long, value_delimiter = ',')]
        datasets: Option<Vec<String>>,
        /// Print JSON (README "Command line"): the counts, or with --check an array
        /// with one object per task.
        #[arg(long)]
        json: bool,
        /// Exit 1 if a present dataset's files do not match its layout.
        #[arg(long, requires = "check")]
        strict: bool,
    },
    /// Publish index.json, samples.parquet and label manifests from all workers' output.
    Merge {
        /// The output store the workers wrote to.
        #[arg(long)]
        out: String,
    },
    /// Write the phantom corpus (nnU-Net layout) and a catalogue pointing at it.
    Synth {
        /// Directory to write.
        #[arg(long)]
        out: PathBuf,
        /// Cases per dataset.
        #[arg(long, default_value_t = 8)]
        cases: usize,
        /// Random seed.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// The whole ingest on an embedded default: write the phantom corpus to
    /// DIR/raw, ingest it into DIR/store, verify the store.
    Demo {
        /// Working directory.
        #[arg(long, default_value = "demo")]
        dir: PathBuf,
        /// Cases per phantom dataset.
        #[arg(long, default_value_t = 8)]
        cases: usize,
    },
    /// Print an image's geometry as the ingest reads it: format, shape, channels,
    /// datatype, scaling and the voxel → RAS (mm) affine. Reads NIfTI-1/2 (.nii,
    /// .nii.gz), MetaImage (.mha, .mhd), NRRD (.nrrd, .nhdr) and DICOM series (a folder).
    Inspect {
        /// The file, or a folder of DICOM slices.
        file: PathBuf,
        /// Also write the scaled voxel values as little-endian f64, x fastest, one
        /// channel after another.
        #[arg(long)]
        dump_f64: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The ingest's own flags mean nothing to a subcommand; the shared store and
    // output flags (global) go anywhere, so clap's blanket conflict cannot say this.
    if cli.command.is_some() && cli.ingest != IngestArgs::parse_from(["s3-ingest"]) {
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "the ingest's flags (--manifest, --out, --jobs, ...) go without a subcommand; \
                 give a subcommand its own flags after its name",
            )
            .exit();
    }
    s3_shards::cli::init_logging(&cli.output);
    s3_shards::cli::exit_code(run_cli(cli))
}

fn run_cli(cli: Cli) -> Result<ExitCode> {
    let options = cli.store.resolve();
    let store_options = || options.clone();
    let output = cli.output;
    match cli.command {
        Some(Command::Catalog { manifest, check: true, raw, datasets, json, strict }) => {
            let c = Catalog::load(&manifest)?;
            let vars = raw.into_iter().map(|r| ("SAM3D_RAW".to_string(), r)).collect();
            let rows = s3_ingest::check::check(&c, &vars, datasets.as_deref(), &store_options())?;
            print_check(&rows, json)?;
            if strict && rows.iter().any(|r| r.failed()) {
                return Ok(ExitCode::from(s3_shards::exit::CHECK_FAILED));
            }
        }
        Some(Command::Catalog { manifest, json, .. }) => {
            let c = Catalog::load(&manifest)?;
            let n = c.counts();
            if json {
                println!("{}", serde_json::to_string_pretty(&n)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("{}: valid", manifest.display());
            println!("public datasets:     {} (pre-train {})", n.public, n.public_pretrain);
            println!("fine-tune selection: {} datasets / {} tasks", n.finetune_datasets, n.finetune_tasks);
            println!("private datasets:    {}", n.private);
            println!("tasks with a source: {}", n.with_source);
        }
        Some(Command::Merge { out }) => {
            let loc = open_store(&out, &store_options())?;
            let rt = s3_shards::io_runtime::io_runtime()?;
            let index = rt.block_on(run::merge(&loc)).with_context(|| format!("merging {loc}"))?;
            println!("published {loc}/index.json: {} shards, {} samples", index.shards.len(), index.total_samples());
        }
        Some(Command::Synth { out, cases, seed }) => {
            let manifest = s3_ingest::synth::write_corpus(&out, cases, seed)
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "wrote {cases} cases per phantom dataset under {}; catalogue {}",
                out.display(),
                manifest.display()
            );
        }
        Some(Command::Demo { dir, cases }) => {
            let manifest = s3_ingest::synth::write_corpus(&dir.join("raw"), cases, 7)?;
            println!("phantom corpus: {} ({cases} cases per dataset)", manifest.display());
            let store = dir.join("store");
            let args = IngestArgs {
                manifest,
                out: Some(store.display().to_string()),
                ..IngestArgs::parse_from(["s3-ingest"])
            };
            let code = ingest(args, store_options(), output)?;
            let loc = open_store(&store.display().to_string(), &store_options())?;
            let rt = s3_shards::io_runtime::io_runtime()?;
            let report = rt.block_on(s3_shards::verify::verify_store(loc.store(), |_, _| {}))?;
            println!(
                "verified {loc}: {} shards, {} samples, {} problems",
                report.shards,
                report.samples_ok,
                report.problems.len()
            );
            println!(
                "next: s3-shards ls {0}; s3-shards preview {0} PhantomCT/default/case000/1 -o case000.png",
                store.display()
            );
            return Ok(code);
        }
        Some(Command::Inspect { file, dump_f64 }) => {
            let format = s3_ingest::formats::detect(&file)?;
            let volumes = s3_ingest::formats::read_channels(&file, &ReadOptions::default())?;
            let v = &volumes[0];
            let info = serde_json::json!({
                "format": format!("{format:?}"), "shape": v.shape, "channels": volumes.len(), "datatype": v.datatype,
                "slope": v.slope, "inter": v.inter, "affine": v.affine,
            });
            println!("{}", serde_json::to_string_pretty(&info)?);
            if let Some(path) = dump_f64 {
                let bytes: Vec<u8> =
                    volumes.iter().flat_map(|v| (0..v.len()).flat_map(|n| v.value(n).to_le_bytes())).collect();
                std::fs::write(&path, bytes)?;
            }
        }
        None => return ingest(cli.ingest, options, output),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_check(rows: &[s3_ingest::check::TaskCheck], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rows)?);
        return Ok(());
    }
    println!("{:<32} {:<10} {:>6} {:>8} {:>8}  FIRST PROBLEM", "DATASET/TASK", "STATUS", "CASES", "LABELS", "HELD");
    for r in rows.iter().filter(|r| r.status != "no source") {
        let name = if r.task == "default" { r.dataset.clone() } else { format!("{}/{}", r.dataset, r.task) };
        let problem = r.problem.as_deref().unwrap_or("");
        let problem: String = problem.chars().take(160).collect();
        println!("{name:<32} {:<10} {:>6} {:>8} {:>8}  {problem}", r.status, r.cases, r.labelled, r.held_out);
    }
    let count = |s: &str| rows.iter().filter(|r| r.status == s).count();
    println!(
        "{} tasks: {} ok, {} absent, {} unreadable as downloaded, {} mismatched, {} without a source",
        rows.len(),
        count("ok"),
        count("absent"),
        count("unreadable"),
        count("mismatch"),
        count("no source")
    );
    Ok(())
}

fn ingest(a: IngestArgs, store_options: StoreOptions, output: OutputFlags) -> Result<ExitCode> {
    let catalog = Catalog::load(&a.manifest)?;
    let out = match (&a.out, &catalog.output) {
        (Some(out), _) => out.clone(),
        (None, Some(o)) => {
            let out = s3_ingest::catalog::expand_env(&o.location)
                .map_err(|e| anyhow::anyhow!("{}: [output] location: {e}", a.manifest.display()))?;
            output.say()(&format!("writing to {out} (the catalogue's [output] location; --out overrides)"));
            out
        }
        (None, None) => {
            bail!(
                "--out is required: the catalogue has no [output] location (a path, file:///abs or s3://bucket/prefix)"
            )
        }
    };
    let (worker, workers) = a.worker.unwrap_or((0, 1));
    let cfg = IngestConfig {
        out,
        store_options,
        jobs: a.jobs.max(1),
        worker,
        workers,
        datasets: a.datasets.clone(),
        read: ReadOptions { max_bytes: a.max_volume_bytes },
        preprocess: PreprocessOptions {
            min_mask_mm3: a.min_mask_mm3,
            min_crop_voxels: a.min_crop_voxels,
            val_percent: a.val_percent,
            ..Default::default()
        },
        writer: WriterOptions {
            zstd_level: a.zstd_level,
            target_file_bytes: a.target_file_mib << 20,
            ..Default::default()
        },
        tmp_dir: a.tmp_dir.clone().unwrap_or_else(std::env::temp_dir),
        dry_run: a.dry_run,
    };
    let bar = if output.progress() { ProgressBar::new(0) } else { ProgressBar::hidden() };
    let bar = bar.with_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} cases, eta {eta}  {msg}")
            .expect("template"),
    );
    if output.progress() {
        bar.enable_steady_tick(Duration::from_millis(250));
    }
    let started = Instant::now();
    let stats = Mutex::new((0u64, 0u64, 0u64)); // samples, input bytes, quarantined
    let summary = run::run(&catalog, &cfg, &|e| match e {
        Event::TaskStart { dataset, task, todo, .. } => {
            bar.inc_length(todo as u64);
            bar.set_message(format!("{dataset}/{task}"));
        }
        Event::CaseDone { dataset, samples, input_bytes, quarantined, case_id } => {
            let mut s = stats.lock().expect("stats");
            s.0 += samples as u64;
            s.1 += input_bytes;
            if let Some(reason) = quarantined {
                s.2 += 1;
                bar.suspend(|| eprintln!("quarantined {dataset}/{case_id}: {reason}"));
            }
            let mbs = s.1 as f64 / 1e6 / started.elapsed().as_secs_f64().max(1e-3);
            bar.set_message(format!("{dataset}: {} samples, {mbs:.1} MB/s in, {} quarantined", s.0, s.2));
            bar.inc(1);
        }
        // Only a layout mismatch is reported while the run goes on (absent datasets are in the summary).
        Event::Skipped { dataset, task, reason } => bar.suspend(|| eprintln!("ERROR {dataset}/{task}: {reason}")),
        Event::Publishing => bar.set_message("publishing index"),
    })?;
    bar.finish_and_clear();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary_json(&summary, &cfg))?);
    } else {
        print_summary(&summary, &cfg);
    }
    if a.strict && (summary.quarantined() > 0 || summary.problems() > 0) {
        eprintln!(
            "--strict: {} case(s) quarantined, {} layout mismatch(es)",
            summary.quarantined(),
            summary.problems()
        );
        return Ok(ExitCode::from(s3_shards::exit::CHECK_FAILED));
    }
    Ok(ExitCode::SUCCESS)
}

/// The summary as `--json` prints it (README "Command line").
fn summary_json(s: &Summary, cfg: &IngestConfig) -> serde_json::Value {
    serde_json::json!({
        "out": cfg.out,
        "dry_run": cfg.dry_run,
        "worker": cfg.worker,
        "workers": cfg.workers,
        "datasets": s.datasets,
        "quarantined": s.quarantined(),
        "layout_problems": s.problems(),
        "published": s.index.as_ref().map(|i| serde_json::json!({
            "index": format!("{}/index.json", cfg.out),
            "shards": i.shards.len(),
            "samples": i.total_samples(),
        })),
    })
}

/// Tasks of a dataset skipped for want of a source.
fn count_unsourced(d: &run::DatasetSummary) -> usize {
    d.notes.iter().filter(|n| n.ends_with(": no source configured")).count()
}

fn print_summary(s: &Summary, cfg: &IngestConfig) {
    let dry = cfg.dry_run;
    println!(
        "{:<24} {:>6} {:>6} {:>9} {:>8} {:>11} {:>8} {:>10}",
        "DATASET",
        "CASES",
        if dry { "TO DO" } else { "" },
        "INGESTED",
        "SKIPPED",
        "QUARANTINED",
        "SAMPLES",
        "MIB"
    );
    // Datasets the user does not have, or private ones without a source, are one line
    // each at the end rather than a row of zeros.
    let quiet = |d: &run::DatasetSummary| {
        d.cases == 0 && d.problems.is_empty() && d.unreadable == 0 && d.absent + count_unsourced(d) > 0
    };
    for d in s.datasets.iter().filter(|d| !quiet(d)) {
        let todo = if dry { d.todo.to_string() } else { String::new() };
        println!(
            "{:<24} {:>6} {:>6} {:>9} {:>8} {:>11} {:>8} {:>10.1}",
            d.dataset,
            d.cases,
            todo,
            d.ingested,
            d.skipped,
            d.quarantined,
            d.samples,
            d.bytes as f64 / 1048576.0
        );
        for p in &d.problems {
            println!("  ERROR: {p}");
        }
        for n in &d.notes {
            println!("  note: {n}");
        }
    }
    let absent: Vec<&str> =
        s.datasets.iter().filter(|d| quiet(d) && d.absent > 0).map(|d| d.dataset.as_str()).collect();
    let unsourced: Vec<&str> =
        s.datasets.iter().filter(|d| quiet(d) && d.absent == 0).map(|d| d.dataset.as_str()).collect();
    if !absent.is_empty() {
        println!("not present ({}): {}", absent.len(), absent.join(", "));
    }
    if !unsourced.is_empty() {
        println!("no source configured ({}): {}", unsourced.len(), unsourced.join(", "));
    }
    let total = |f: fn(&run::DatasetSummary) -> u64| s.datasets.iter().map(f).sum::<u64>();
    println!(
        "{:<24} {:>6} {:>6} {:>9} {:>8} {:>11} {:>8} {:>10.1}",
        "TOTAL",
        total(|d| d.cases as u64),
        if dry { total(|d| d.todo as u64).to_string() } else { String::new() },
        total(|d| d.ingested as u64),
        total(|d| d.skipped as u64),
        total(|d| d.quarantined as u64),
        total(|d| d.samples),
        total(|d| d.bytes) as f64 / 1048576.0
    );
    let n = |f: fn(&run::DatasetSummary) -> bool| s.datasets.iter().filter(|d| f(d)).count();
    println!(
        "datasets: {} with samples, {} not present, {} unreadable as downloaded, {} with layout errors",
        n(|d| d.samples > 0 || d.ingested > 0),
        n(|d| d.absent > 0 && d.cases == 0),
        n(|d| d.unreadable > 0),
        n(|d| !d.problems.is_empty())
    );
    match &s.index {
        Some(i) => {
            println!("published {}/index.json ({} shards, {} samples)", cfg.out, i.shards.len(), i.total_samples())
        }
        None if dry => println!("dry run: nothing written"),
        None => println!(
            "worker {}/{} done; run `s3-ingest merge --out {}` after all workers",
            cfg.worker, cfg.workers, cfg.out
        ),
    }
}
