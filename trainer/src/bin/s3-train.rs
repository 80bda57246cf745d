//! `s3-train`: one SAM-Med3D trainer rank, and model tools.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use s3_trainer::config::SamConfig;
use s3_trainer::model::Sam;
use s3_trainer::{fixture, weights};

mod bench;
mod predict;
mod progress;
mod rank_flags;

/// Exit code of a preempted rank (DESIGN §10): checkpointed, requeue it.
use s3_shards::exit::PREEMPTED;

/// SAM-Med3D trainer and model tools.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// cpu, or cuda / cuda:N in builds with the `cuda` feature.
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
    #[command(flatten)]
    store: s3_shards::cli::StoreFlags,
    #[command(flatten)]
    output: s3_shards::cli::OutputFlags,
}

/// What a run trains on and where it keeps its state.
#[derive(clap::Args)]
struct RunArgs {
    /// Stage file (manifests/stages/*.toml): model preset, data selection, schedule.
    #[arg(long)]
    stage: PathBuf,
    #[command(flatten)]
    place: Place,
}

/// Where the data and the run live.
#[derive(clap::Args)]
struct Place {
    /// Store with the published shards (index.json, samples.parquet).
    #[arg(long)]
    data: String,
    /// Run folder on any store: checkpoints, metrics.csv, config.json, eval/.
    #[arg(long)]
    run: String,
}

#[derive(Subcommand)]
enum Command {
    /// Per-module and total parameter counts of a preset.
    Info {
        /// vit_b_ori, small or tiny.
        #[arg(long, default_value = "vit_b_ori")]
        preset: String,
    },
    /// Run a reference fixture (<prefix>.json, .weights.safetensors, .io.safetensors)
    /// and compare every output; exit 1 if any relative error exceeds 1e-4.
    CheckFixture {
        /// Path prefix, e.g. ../shared/fixtures/model/sam3d_tiny
        prefix: PathBuf,
        /// The encoder's arithmetic: f32 (held to 1e-4) or bf16 (its error reported).
        #[arg(long, default_value = "f32")]
        precision: String,
    },
    /// Train (or resume) a stage on published shards.
    ///
    /// Rank and world size come from --rank/--world, else RANK/WORLD_SIZE, else
    /// SLURM_PROCID/SLURM_NTASKS, else JOB_COMPLETION_INDEX (× S3_RANKS_PER_POD +
    /// LOCAL_RANK) with --world; `--device cuda` picks cuda:LOCAL_RANK. With more than
    /// one rank, gradients are averaged every optimiser step through rank 0 at
    /// --master (else MASTER_ADDR:MASTER_PORT); S3_JOB_TOKEN keeps other processes
    /// out. A resume is refused when the stage or the data differ from the run's.
    Train {
        #[command(flatten)]
        target: RunArgs,
        /// Start over even if the run has a checkpoint.
        #[arg(long)]
        no_resume: bool,
        /// Override the stage's init weights (a path or any store URL).
        #[arg(long)]
        init: Option<String>,
        /// The xxh3 (16 hex digits) the --init file must have; a mismatch is refused.
        #[arg(long, value_name = "HEX")]
        init_xxh3: Option<String>,
        /// The dataset catalogue whose pretrain/finetune flags the stage's selection
        /// reads (overrides the stage's `datasets.catalog`).
        #[arg(long)]
        catalog: Option<PathBuf>,
        #[command(flatten)]
        ranks: rank_flags::RankFlags,
        /// Seconds a send or receive between ranks may block before the run ends with
        /// an error naming the peer: longer than one optimiser step plus rank 0's
        /// checkpoint upload (the other ranks wait for it at the next step).
        #[arg(long, default_value_t = 1800, value_name = "SECS")]
        collective_timeout: u64,
        /// Seconds an optimiser step may take before the watchdog ends the process
        /// (exit 2) so the launcher can resume it; 0 disables.
        #[arg(long, default_value_t = 3600, value_name = "SECS")]
        step_timeout: u64,
        /// Append each step's sample ids (one line per step) to this local file.
        #[arg(long, value_name = "FILE")]
        samples_log: Option<PathBuf>,
        /// Loader threads decoding this rank's samples (each whole row groups): raise
        /// it when `s3-train bench loader --data ... --threads N` shows one thread
        /// feeds fewer samples/s than the step consumes. The samples and their order
        /// do not change.
        #[arg(long, default_value_t = 1, env = "S3_LOADER_THREADS")]
        loader_threads: usize,
        /// Keep a copy of each shard in this node-local folder, shared by the node's
        /// ranks: a shard is fetched once per node (verified against the index) and
        /// read locally in later epochs. Unusable or full, it streams instead.
        #[arg(long, env = "S3_CACHE_DIR", value_name = "DIR")]
        cache_dir: Option<PathBuf>,
        /// Most the cache may hold (e.g. 500G; K/M/G/T are binary) [default: no limit].
        #[arg(long, env = "S3_CACHE_LIMIT", value_name = "SIZE", value_parser = parse_cache_limit, requires = "cache_dir")]
        cache_limit: Option<u64>,
        /// Node-aware sample order (on/off): each node's ranks draw every epoch from
        /// the same span of the shards, so a cache of a node's share downloads each
        /// shard once per run; the order stays a pure function of the seed, the epoch,
        /// the selection and the node count (S3_NODES, or the launcher's) [default: on
        /// with --cache-dir].
        #[arg(long, env = "S3_NODE_ORDER", value_name = "on|off", value_parser = clap::builder::BoolishValueParser::new())]
        node_order: Option<bool>,
    },
    /// Dice at 1/3/5/10 clicks on the val split with the run's latest weights; writes
    /// eval/val.csv (per sample), eval/val-groups.csv (per dataset and label) and
    /// eval/val.json to the run folder. The stage is the run's own
    /// (its config.json) unless --stage is given.
    ///
    /// `--protocol source` is the reference's protocol instead: every val case of the
    /// stage's datasets read raw from the catalogue (--manifest), every class in its
    /// label, the prediction pasted back onto the source grid and scored there; it
    /// writes eval/source.csv (per case and class), eval/source-groups.csv (per
    /// dataset, label and category) and eval/source.json.
    ///
    /// With a benchmarks catalogue (manifests/benchmarks.toml, `[evaluation]`), every
    /// case it lists is scored, after a check that none is in the store the run
    /// trained on (--data, default: the run's own), by dataset and case id and by
    /// image digest; a case found refuses the evaluation, naming it. It writes
    /// eval/benchmarks.{csv,json,md} and eval/benchmarks-groups.csv: Dice per case
    /// and class, and means by group (seen/unseen/lesion), Table-2 category and
    /// dataset with the cases and classes behind each.
    Eval {
        /// Stage file; default: the stage recorded in the run's config.json.
        #[arg(long)]
        stage: Option<PathBuf>,
        /// Store with the published shards: the crop protocol's input; for the source
        /// protocol, which cases are val.
        #[arg(long, required_if_eq("protocol", "crop"))]
        data: Option<String>,
        /// Run folder: its latest weights; the reports are written under eval/.
        #[arg(long)]
        run: String,
        /// Click counts.
        #[arg(long, value_delimiter = ',', default_value = "1,3,5,10")]
        clicks: Vec<usize>,
        /// crop: the shards' 128³ val crops (what training monitors); source: the raw
        /// val cases in their own geometry, comparable with the reference.
        #[arg(long, default_value = "crop", value_parser = ["crop", "source"])]
        protocol: String,
        /// The dataset catalogue (datasets.toml) whose sources the source protocol
        /// reads; it also answers the stage's pretrain/finetune selection.
        #[arg(long, required_if_eq("protocol", "source"))]
        manifest: Option<PathBuf>,
        /// Source protocol: evaluate these datasets of the manifest instead of the
        /// stage's selection (e.g. held-out benchmarks, with --val-percent 100).
        #[arg(long, value_delimiter = ',')]
        datasets: Vec<String>,
        /// The ingest's val_percent: which cases are val (xxh3(dataset/case) mod 100)
        /// where --data does not say (a case the store holds keeps the store's split).
        #[arg(long, default_value_t = 10)]
        val_percent: u32,
        /// Print the report as JSON (what eval/<name>.json holds, with the step) instead
        /// of the per-group CSV.
        #[arg(long)]
        json: bool,
    },
    /// Segment a volume from clicks: the ingest's preprocessing, the crop about the
    /// first click, one pass per click with every click so far, and the mask pasted
    /// back onto the image's own grid, written with its header (affine, pixdim).
    ///
    /// Clicks are voxel indices of the image file (what a viewer shows as i, j, k);
    /// all must lie in the 128³ crop at 1.5 mm (±96 mm) about the first. With
    /// --clicks-from-label the clicks are simulated from a label instead, as in
    /// evaluation, for every class of the label (or --label-value): each class is
    /// cropped about its own bounding box, the Dice after each click is printed, and
    /// the output is one map of class values, a higher class winning where two overlap.
    Predict(predict::PredictArgs),
    /// Measurements for sizing a machine (what tests/gpu/run.sh prints): a training
    /// micro-step's samples/s, the gradient all-reduce's bandwidth.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCommand,
    },
    /// Load a checkpoint (.safetensors, or a torch.save .pth with model_state_dict)
    /// and write it as safetensors with the reference key names.
    Convert {
        /// Input checkpoint.
        input: PathBuf,
        /// Output .safetensors.
        output: PathBuf,
        /// Preset the checkpoint was trained with.
        #[arg(long, default_value = "vit_b_ori")]
        preset: String,
        /// Load what matches instead of failing on missing/unexpected keys.
        #[arg(long)]
        allow_partial: bool,
    },
}

/// An evaluation report as `eval --json` prints it: eval/<name>.json's fields and the
/// step of the weights evaluated.
fn eval_json(step: u64, report: &s3_shards::eval_report::EvalReport) -> Result<String> {
    let mut v = serde_json::to_value(report)?;
    v["step"] = step.into();
    Ok(serde_json::to_string_pretty(&v)?)
}

fn parse_cache_limit(s: &str) -> Result<u64, String> {
    s3_trainer::shard_cache::parse_size(s).ok_or_else(|| format!("{s:?} is not a size (bytes, or e.g. 500G, 2T)"))
}

/// A config enum from its TOML spelling (`f32`, `unpadded`).
fn parse_enum<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(s.into())).with_context(|| format!("--{what} {s:?}"))
}

/// Keeps freed memory in glibc's heap instead of handing it back to the kernel.
///
/// The model's large temporaries (vit_b_ori's windowed attention holds 2744² scores
/// per head, 361 MB a block) are above glibc's mmap threshold: each was a fresh mmap,
/// zeroed page by page by the kernel, and unmapped again, a third of a CPU step's
/// time. From the heap they are reused: vit_b_ori's step 0.030 → 0.068 samples/s on 2
/// cores, for 6 % more peak memory.
#[allow(unsafe_code)] // one FFI call into the C allocator
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters, before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    s3_shards::cli::init_logging(&cli.output);
    s3_shards::cli::exit_code(run(cli))
}

fn preset(name: &str) -> Result<SamConfig> {
    match SamConfig::preset(name) {
        Some(c) => Ok(c),
        None => bail!("unknown preset {name:?} (vit_b_ori, small, tiny)"),
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let device = s3_trainer::device::parse_device(&cli.device)?;
    let opts = cli.store.resolve();
    match cli.command {
        Command::Info { preset: name } => {
            let cfg = preset(&name)?;
            print!("{}", s3_trainer::model::describe(&name, &cfg, &Sam::new(&cfg, &device)));
            println!("{}", s3_trainer::collective::nccl_lib::describe());
        }
        Command::CheckFixture { prefix, precision } => {
            let p: s3_trainer::config::Precision = parse_enum("precision", &precision)?;
            let results = fixture::check_fixture_with(&prefix, &device, p)
                .with_context(|| format!("fixture {}", prefix.display()))?;
            let (text, passed) = fixture::report(&results, p);
            print!("{text}");
            if !passed {
                return Ok(ExitCode::from(s3_shards::exit::CHECK_FAILED));
            }
        }
        Command::Train {
            target: RunArgs { stage, place: Place { data, run } },
            no_resume,
            init,
            init_xxh3,
            catalog,
            ranks,
            collective_timeout,
            step_timeout,
            samples_log,
            loader_threads,
            cache_dir,
            cache_limit,
            node_order,
        } => {
            let flags = s3_trainer::run_settings::TrainFlags {
                stage,
                data,
                run,
                no_resume,
                init,
                init_xxh3,
                catalog,
                launch: ranks.launch(),
                collective_timeout_s: collective_timeout,
                step_timeout_s: step_timeout,
                loader_threads,
                store_options: opts.clone(),
                shard_cache: cache_dir
                    .map(|dir| s3_trainer::shard_cache::CacheSettings { dir, limit: cache_limit.unwrap_or(u64::MAX) }),
                node_order,
            };
            let (mut spec, launch) = s3_trainer::run_settings::resolve(&flags, &|k| std::env::var(k).ok())?;
            let device = s3_trainer::device::rank_device(&cli.device, launch.local_rank, device)?;
            launch.log();
            // SIGTERM (Kubernetes, Slurm at the time limit, `timeout`), SIGINT and SIGUSR2
            // (Slurm's --signal) mean "checkpoint at the next step and exit 75" (DESIGN
            // §10); before the first step, "exit 75 now" (nothing to checkpoint yet).
            let preempt = Arc::new(AtomicBool::new(false));
            let at_once = Arc::new(AtomicBool::new(true));
            for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT, signal_hook::consts::SIGUSR2] {
                signal_hook::flag::register_conditional_shutdown(sig, i32::from(PREEMPTED), at_once.clone())
                    .context("installing the signal handler")?;
                signal_hook::flag::register(sig, preempt.clone()).context("installing the signal handler")?;
            }
            spec.preempt = Some(preempt);
            spec.exit_at_once = Some(at_once);
            let outcome = match progress::train_with_progress(&spec, &device, samples_log.as_deref(), cli.output) {
                // A SIGTERM while peers were missing: like a preemption, the launcher
                // requeues, and the next attempt starts where this one stood.
                Err(e) if matches!(e.downcast_ref(), Some(s3_trainer::TrainError::Stopped(_))) => {
                    eprintln!("{e}: nothing trained in this attempt; exit 75 (requeue)");
                    return Ok(ExitCode::from(PREEMPTED));
                }
                r => r?,
            };
            println!(
                "rank {}/{}: trained {} steps (epoch {}), last loss {:.4}, dice {:.3}, weights xxh3 {:016x}",
                spec.rank,
                spec.world,
                outcome.state.step,
                outcome.state.sampler.epoch,
                outcome.last.as_ref().map_or(f64::NAN, |m| m.loss),
                outcome.last.as_ref().map_or(f64::NAN, |m| m.dice),
                outcome.weights_digest
            );
            if outcome.preempted {
                eprintln!("preempted: checkpoint at step {} written; exit 75 (requeue)", outcome.state.step);
                return Ok(ExitCode::from(PREEMPTED));
            }
        }
        Command::Eval { stage, data, run, clicks, protocol, manifest, datasets, val_percent, json } => {
            let mut stage = match stage {
                Some(p) => s3_trainer::stage::StageConfig::load(&p)?,
                None => s3_trainer::run_inputs::load_run_stage(&run, &opts)
                    .context("reading the run's stage (give --stage to evaluate with another)")?,
            };
            let cfg = s3_trainer::run_inputs::model_config(&stage)?;
            let (model, step) = s3_trainer::run_inputs::load_latest_weights(&run, &opts, &cfg, &device)?;
            let run_loc = s3_shards::open_store(&run, &opts)?;
            if protocol == "source" {
                let manifest = manifest.expect("clap requires --manifest");
                // A benchmarks catalogue is checked against what the run trained on.
                let benchmarks = s3_ingest::catalog::Catalog::load(&manifest)
                    .with_context(|| format!("reading {}", manifest.display()))?
                    .is_evaluation();
                let data = match data {
                    None if benchmarks => s3_trainer::run_inputs::load_run_data(&run, &opts)
                        .context("reading the store the run trained on from its config.json (or give --data)")?,
                    d => d,
                };
                let request = s3_trainer::source_eval::SourceRun {
                    manifest,
                    datasets,
                    data,
                    val_percent,
                    clicks,
                    store_options: opts.clone(),
                };
                let (report, n) =
                    s3_trainer::source_eval::evaluate_source_run(&request, &mut stage, &model, &cfg, &device)?;
                let name = if benchmarks { "benchmarks" } else { "source" };
                s3_trainer::eval::write_report(&run_loc, name, &report)?;
                if benchmarks && !json {
                    for s in &report.skipped {
                        eprintln!("skipped {s}");
                    }
                    println!(
                        "step {step}: {} classes of {n} benchmark dataset(s) (eval/{name}.csv)",
                        report.samples.len()
                    );
                    print!("{}", report.markdown());
                    return Ok(ExitCode::SUCCESS);
                }
                if json {
                    println!("{}", eval_json(step, &report)?);
                    return Ok(ExitCode::SUCCESS);
                }
                for s in &report.skipped {
                    eprintln!("skipped {s}");
                }
                println!(
                    "step {step}, protocol source: {} classes of val cases in {n} dataset(s), {} skipped",
                    report.samples.len(),
                    report.skipped.len()
                );
                print!("{}", report.groups_csv());
                return Ok(ExitCode::SUCCESS);
            }
            let data = data.expect("clap requires --data");
            let data_loc = s3_shards::open_store(&data, &opts)?;
            let rt = s3_shards::io_runtime::io_runtime()?;
            let (rows, _, _) = s3_trainer::run_inputs::select_rows(&data_loc, &stage, s3_shards::Split::Val, rt)?;
            let report = s3_trainer::eval::evaluate(&model, &cfg, &data_loc, &rows, &clicks, stage.seed, &device)?;
            s3_trainer::eval::write_report(&run_loc, "val", &report)?;
            if json {
                println!("{}", eval_json(step, &report)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("step {step}, {} val samples", report.samples.len());
            print!("{}", report.groups_csv());
        }
        Command::Predict(args) => predict::predict(args, device, &opts, cli.output)?,
        Command::Bench { what } => bench::bench(what, &cli.device, device, &opts)?,
        Command::Convert { input, output, preset: name, allow_partial } => {
            let cfg = preset(&name)?;
            let mut m = Sam::new(&cfg, &device);
            let strict = if allow_partial { weights::Strictness::AllowPartial } else { weights::Strictness::Strict };
            let report = weights::load(&mut m, &input, strict)?;
            weights::export_safetensors(&m, &output)?;
            println!(
                "{} tensors loaded; missing {:?}; unused {:?}; wrote {}",
                report.applied,
                report.missing,
                report.unused,
                output.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
