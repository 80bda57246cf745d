//! The demo: the pipeline on the local backend, on an embedded default. A phantom
//! corpus (`s3-ingest synth`) → ingest by two workers and a merge → stage 1 with two
//! CPU ranks → Dice → stage 2 from stage 1's verified final checkpoint on the
//! fine-tune selection → Dice (the ledger's `eval`) → the run's status. Every step is
//! a process started the way `s3-orch launch` starts it; nothing here links the
//! trainer or the ingest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::backend::Backend;
use crate::backend::local::Local;
use crate::error::{OrchError, Result};
use crate::launch::{IngestLaunch, Launched, StageLaunch, join, launch_eval, launch_ingest, launch_stage, status};
use crate::ledger::{Ledger, State};
use crate::plan::{IngestPlan, TrainPlan, eval_job};
use crate::stage::Stage;

/// Stage 1 of the demo (`manifests/stages/demo.toml`), embedded so the demo runs anywhere.
pub const DEMO_STAGE1: &str = include_str!("../../manifests/stages/demo.toml");
/// Stage 2 of the demo (`manifests/stages/demo-finetune.toml`).
pub const DEMO_STAGE2: &str = include_str!("../../manifests/stages/demo-finetune.toml");

/// The run id of the demo.
pub const RUN_ID: &str = "demo";
/// Marks a folder the demo made, so a rerun may clear it and no other folder is cleared.
const MARKER: &str = ".s3-orch-demo";

/// Demo settings.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    /// Working directory (raw/, store/, stages/, runs/).
    pub dir: PathBuf,
    /// Phantom cases per dataset.
    pub cases: usize,
    /// Epochs of stage 1 and stage 2 (None: the stage files' own).
    pub epochs: (Option<u64>, Option<u64>),
    /// Ranks of each training stage.
    pub ranks: usize,
    /// Ingest worker processes.
    pub workers: usize,
    /// Percent of cases held out for evaluation.
    pub val_percent: u32,
    /// `s3-train`.
    pub train_bin: PathBuf,
    /// `s3-ingest`.
    pub ingest_bin: PathBuf,
}

impl DemoConfig {
    /// Refuses tools given as paths that do not exist (a bare name is looked up on PATH).
    pub fn check_tools(&self) -> Result<()> {
        for (what, bin) in [("s3-train", &self.train_bin), ("s3-ingest", &self.ingest_bin)] {
            if bin.components().count() > 1 && !bin.exists() {
                return Err(OrchError::NotFound {
                    what,
                    path: bin.display().to_string(),
                    hint: "build the workspace's binaries first (cargo build)",
                });
            }
        }
        Ok(())
    }

    /// The embedded default, with the two programs.
    pub fn new(train_bin: PathBuf, ingest_bin: PathBuf) -> DemoConfig {
        DemoConfig {
            dir: PathBuf::from("demo"),
            cases: 12,
            epochs: (None, None),
            ranks: 2,
            workers: 2,
            val_percent: 25,
            train_bin,
            ingest_bin,
        }
    }
}

/// What the demo measured.
#[derive(Debug)]
pub struct DemoReport {
    /// Mean Dice at each click count (`dice@N`) after stage 1, on its val split.
    pub after_stage1: BTreeMap<String, f64>,
    /// The same after stage 2, on the fine-tune selection's val split.
    pub after_stage2: BTreeMap<String, f64>,
    /// The run's ledger at the end.
    pub ledger: Ledger,
    /// The run folder (`stage1/`, `stage2/` with metrics, plots, checkpoints, eval).
    pub run_dir: PathBuf,
    /// The store with the shards.
    pub store: PathBuf,
}

/// Progress messages for the caller to print.
pub type Say<'a> = &'a (dyn Fn(&str) + Sync);

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OrchError + '_ {
    move |source| OrchError::Io { file: path.display().to_string(), source }
}

/// A fresh demo each time (the demo is not a resumable job): clears what an earlier
/// demo left in `dir`, and refuses a non-empty folder no demo made.
fn prepare(dir: &Path) -> Result<()> {
    if dir.exists() && std::fs::read_dir(dir).map_err(io(dir))?.next().is_some() {
        if !dir.join(MARKER).exists() {
            return Err(OrchError::ForeignDir { dir: dir.display().to_string() });
        }
        for sub in ["raw", "store", "stages", "runs"] {
            let p = dir.join(sub);
            if p.exists() {
                std::fs::remove_dir_all(&p).map_err(io(&p))?;
            }
        }
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    std::fs::write(dir.join(MARKER), "made by s3-orch demo; the demo clears raw/ store/ stages/ runs/ here\n")
        .map_err(io(dir))
}

/// A stage file with its epochs replaced.
fn stage_file(text: &str, epochs: Option<u64>, path: &Path) -> Result<()> {
    let mut t: toml::Table =
        toml::from_str(text).map_err(|source| OrchError::Parse { file: "demo stage".into(), source })?;
    if let Some(e) = epochs {
        t.insert("epochs".into(), toml::Value::Integer(e as i64));
    }
    let text = toml::to_string(&t).map_err(|source| OrchError::Render { what: "demo stage", source })?;
    std::fs::write(path, text).map_err(io(path))
}

/// Runs a helper program to the end; its output is the error when it fails.
fn run_tool(program: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| OrchError::Process { what: format!("starting {}", program.display()), source })?;
    if !out.status.success() {
        return Err(OrchError::CommandFailed {
            command: format!("{} {}", program.display(), args.join(" ")),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

fn ran(launched: Launched, what: &str) -> Result<()> {
    match launched {
        Launched::Ran(r) if r.state == State::Succeeded => Ok(()),
        Launched::Ran(r) => Err(OrchError::Ended {
            what: what.to_string(),
            state: r.state.name(),
            error: r.attempts.last().and_then(|a| a.error.clone()).unwrap_or_default(),
        }),
        _ => Ok(()),
    }
}

/// Runs the whole demo.
pub fn run_demo(cfg: &DemoConfig, say: Say) -> Result<DemoReport> {
    prepare(&cfg.dir)?;
    let dir = std::path::absolute(&cfg.dir).map_err(io(&cfg.dir))?;
    let (raw, store, stages, runs) = (dir.join("raw"), dir.join("store"), dir.join("stages"), dir.join("runs"));
    let backend = Local::default();

    say(&format!("1/5 writing the phantom corpus to {}", raw.display()));
    run_tool(&cfg.ingest_bin, &["synth", "--out", &raw.display().to_string(), "--cases", &cfg.cases.to_string()])?;
    let catalog = raw.join("datasets.toml");

    say(&format!("2/5 ingesting into {} ({} workers, then the merge)", store.display(), cfg.workers));
    let ingest = IngestLaunch {
        runs: runs.display().to_string(),
        run_id: RUN_ID.into(),
        plan: IngestPlan {
            ingest_bin: cfg.ingest_bin.clone(),
            manifest: catalog.clone(),
            out: store.display().to_string(),
            workers: cfg.workers,
            jobs: 1,
            extra_args: vec!["--val-percent".into(), cfg.val_percent.to_string()],
            env: BTreeMap::new(),
        },
        log_root: runs.join("logs"),
        store_options: Default::default(),
    };
    ran(launch_ingest(&ingest, &backend, false, say)?, "the ingest")?;

    std::fs::create_dir_all(&stages).map_err(io(&stages))?;
    stage_file(DEMO_STAGE1, cfg.epochs.0, &stages.join("stage1.toml"))?;
    stage_file(DEMO_STAGE2, cfg.epochs.1, &stages.join("stage2.toml"))?;
    let stage = |stage: Stage| StageLaunch {
        runs: runs.display().to_string(),
        run_id: RUN_ID.into(),
        stage,
        stage_file: stages.join(format!("{stage}.toml")),
        data: store.display().to_string(),
        ranks: cfg.ranks,
        nodes: 1,
        env: BTreeMap::new(),
        train_bin: cfg.train_bin.clone(),
        device: "cpu".into(),
        catalog: Some(catalog.clone()),
        log_root: runs.join("logs"),
        store_options: Default::default(),
        max_retries: 0,
        benchmarks: None,
    };

    say(&format!("3/5 stage 1: the small preset from scratch, {} CPU ranks", cfg.ranks));
    let s1 = stage(Stage::Stage1);
    ran(launch_stage(&s1, &backend, false, say)?, "stage 1")?;
    let after_stage1 = eval_stage(&s1, &backend)?;
    say(&format!("   after stage 1: {}", dice_line(&after_stage1)));

    say("4/5 stage 2: fine-tuning stage 1's verified final checkpoint on the fine-tune selection");
    let s2 = stage(Stage::Stage2);
    ran(launch_stage(&s2, &backend, false, say)?, "stage 2")?;

    say("5/5 evaluating stage 2");
    ran(launch_eval(&s2, &backend, false, say)?, "the eval")?;
    let ledger = status(&runs.display().to_string(), RUN_ID, &Default::default(), &|m| say(m))?;
    let after_stage2 =
        ledger.stage(Stage::Eval.name()).and_then(|s| s.attempts.last()).map(|a| a.metrics.clone()).unwrap_or_default();
    Ok(DemoReport { after_stage1, after_stage2, ledger, run_dir: runs.join(RUN_ID), store })
}

/// Stage 1's Dice, outside the ledger (its `eval` stage is the pipeline's last step).
fn eval_stage(spec: &StageLaunch, backend: &dyn Backend) -> Result<BTreeMap<String, f64>> {
    let run_dir = join(&join(&spec.runs, &spec.run_id), spec.stage.name());
    let plan = TrainPlan {
        train_bin: spec.train_bin.clone(),
        stage_file: spec.stage_file.clone(),
        data: spec.data.clone(),
        run_dir: run_dir.clone(),
        init: None,
        catalog: None,
        ranks: 1,
        nodes: 1,
        device: spec.device.clone(),
        env: BTreeMap::new(),
    };
    let log_dir = PathBuf::from(&run_dir).join("eval-logs");
    let job = eval_job(&plan, &spec.run_id, 1, log_dir.clone(), None);
    let end = backend.wait(&job, &backend.submit(&job)?)?;
    if end.failed_rank.is_some() {
        return Err(OrchError::EvalFailed {
            stage: spec.stage.to_string(),
            log: log_dir.join("rank-0.log").display().to_string(),
        });
    }
    let loc = s3_shards::open_store(&run_dir, &Default::default())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| OrchError::Process { what: "starting the I/O runtime".into(), source })?;
    rt.block_on(crate::stage_metrics::eval_dice(loc.store().as_ref(), "val"))
}

/// `Dice@1 0.42  Dice@3 ...` in click order.
pub fn dice_line(m: &BTreeMap<String, f64>) -> String {
    let mut v: Vec<(usize, f64)> =
        m.iter().filter_map(|(k, d)| Some((k.strip_prefix("dice@")?.parse().ok()?, *d))).collect();
    v.sort_by_key(|(c, _)| *c);
    v.iter().map(|(c, d)| format!("Dice@{c} {d:.3}")).collect::<Vec<_>>().join("  ")
}

/// The table of Dice after each stage.
pub fn dice_table(r: &DemoReport) -> String {
    format!("after stage 1   {}\nafter stage 2   {}\n", dice_line(&r.after_stage1), dice_line(&r.after_stage2))
}

/// What the demo prints at its end: the Dice table, the ledger, where things are.
pub fn summary(r: &DemoReport, took: std::time::Duration) -> String {
    format!(
        "{}\n{}\n{:.1} min. Per stage under {}: metrics/ (CSV segments), metrics.png, checkpoints/, eval/val.csv; \
         shards: {}; `s3-orch status --runs {} --run demo` shows the ledger again",
        dice_table(r),
        r.ledger.table(),
        took.as_secs_f64() / 60.0,
        r.run_dir.display(),
        r.store.display(),
        r.run_dir.parent().map_or(String::new(), |p| p.display().to_string()),
    )
}
