//! `s3-orch launch`: one stage, or the pipeline's stages in their order, each
//! resolved from its settings (flags > environment > cluster profile > stage file)
//! and launched on the chosen backend.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use s3_shards::StoreOptions;

use super::{IngestLaunch, Launched, StageLaunch, launch_eval, launch_ingest, launch_stage};
use crate::error::{OrchError, Result};
use crate::plan::IngestPlan;
use crate::settings::{self, Layer, Origin, Settings};
use crate::stage::Stage;

/// What `s3-orch launch` was asked.
#[derive(Clone, Debug)]
pub struct PipelineLaunch {
    /// A stage name, or `pipeline` (every stage in order).
    pub target: String,
    /// Run id.
    pub run_id: String,
    /// Root of the run folders.
    pub runs: String,
    /// `local`, `slurm` or `k8s`.
    pub backend: String,
    /// Cluster profile (default: `manifests/clusters/<backend>.toml` when it exists).
    pub cluster: Option<PathBuf>,
    /// Folder holding `stage1.toml` and `stage2.toml`.
    pub stages: PathBuf,
    /// Catalogue to ingest; for training, its flags drive the selection.
    pub manifest: Option<PathBuf>,
    /// Published shards to train on (the pipeline trains on `out`).
    pub data: Option<String>,
    /// A benchmarks catalogue: `eval` scores it instead of the val split (the ledger's
    /// `benchmarks` stage); the pipeline scores it after its `eval`.
    pub benchmarks: Option<PathBuf>,
    /// Output store of the ingest.
    pub out: Option<String>,
    /// Settings given as flags.
    pub flags: Layer,
    /// Render what would be submitted; touch nothing.
    pub dry_run: bool,
    /// How the launcher reaches the store; the jobs get the same settings through the
    /// launch contract's variables ([`StoreOptions::contract_env`]).
    pub store: StoreOptions,
}

/// The run id: the one given, else a new one from the time (stage 2 continues a run
/// and must be given one).
pub fn run_id(target: &str, given: Option<&str>) -> Result<String> {
    match (given, Stage::parse(target)) {
        (Some(r), _) => Ok(r.to_string()),
        (None, Some(Stage::Stage2)) => {
            Err(OrchError::NeedsFlag { flag: "--run", what: "launch stage 2 (it continues the run of its stage 1)" })
        }
        (None, _) => Ok(format!("run-{}", crate::ledger::now().replace([':', '-'], "").trim_end_matches('Z'))),
    }
}

/// The setting, else the variable, else the binary next to this one, else on PATH.
pub fn tool(setting: Option<&String>, var: &str, name: &str) -> PathBuf {
    setting
        .map(PathBuf::from)
        .or_else(|| std::env::var_os(var).map(PathBuf::from))
        .or_else(|| {
            let sibling = std::env::current_exe().ok()?.with_file_name(name);
            sibling.exists().then_some(sibling)
        })
        .unwrap_or_else(|| PathBuf::from(name))
}

impl PipelineLaunch {
    /// The cluster profile to read: the one given, else the backend's default when it exists.
    fn profile_path(&self) -> Result<Option<PathBuf>> {
        match &self.cluster {
            Some(p) if !p.exists() => Err(OrchError::NotFound {
                what: "cluster profile",
                path: p.display().to_string(),
                hint: "--cluster names a TOML file (see manifests/clusters/)",
            }),
            Some(p) => Ok(Some(p.clone())),
            None => {
                let p = PathBuf::from(format!("manifests/clusters/{}.toml", self.backend));
                Ok(p.exists().then_some(p))
            }
        }
    }

    /// Flags over environment over the cluster profile over the stage file.
    pub fn settings(&self, stage_file: Option<&Path>) -> Result<Settings> {
        let mut layers =
            vec![(Origin::Flag, self.flags.clone()), (Origin::Env, Layer::from_env(&|k| std::env::var(k).ok())?)];
        if let Some(p) = self.profile_path()? {
            layers.push((Origin::Profile(p.clone()), settings::load_profile(&p)?));
        }
        if let Some(f) = stage_file {
            layers.push((Origin::Stage(f.to_path_buf()), settings::stage_layer(f)?));
        }
        Ok(Settings::resolve(layers))
    }

    fn stage_file(&self, stage: Stage) -> Result<PathBuf> {
        let f = self.stages.join(format!("{stage}.toml"));
        if !f.exists() {
            return Err(OrchError::NotFound {
                what: "stage file",
                path: f.display().to_string(),
                hint: "--stages DIR holds stage1.toml and stage2.toml",
            });
        }
        Ok(f)
    }

    /// What a dry run prints before the jobs.
    pub fn dry_run_header(&self) -> String {
        let mut text = format!(
            "# s3-orch launch {} --dry-run: run {} on the {} backend\n",
            self.target, self.run_id, self.backend
        );
        if self.target == "pipeline" && self.backend == "slurm" {
            text.push_str(
                "# each job is submitted --dependency=afterok:<the job before it> --kill-on-invalid-dep=yes\n",
            );
        }
        text
    }

    /// The jobs' extra environment: the launcher's store settings, under the settings'
    /// own `env` (a cluster may reach the store by another endpoint than the laptop).
    fn job_env(&self, settings: &Settings) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = self.store.contract_env().into_iter().collect();
        env.extend(settings.values.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }

    fn show(&self, s: &Settings) {
        if self.dry_run {
            print!("{}", s.describe());
        }
    }

    fn ingest(&self, out: &str, say: &dyn Fn(&str)) -> Result<Launched> {
        let settings = self.settings(None)?;
        self.show(&settings);
        let backend = crate::backend::backend(&self.backend, &settings)?;
        let manifest = self.manifest.clone().ok_or(OrchError::NeedsFlag { flag: "--manifest", what: "ingest" })?;
        let spec = IngestLaunch {
            runs: self.runs.clone(),
            run_id: self.run_id.clone(),
            plan: IngestPlan {
                ingest_bin: tool(settings.values.ingest_bin.as_ref(), "S3_INGEST_BIN", "s3-ingest"),
                manifest,
                out: out.to_string(),
                workers: settings.workers(),
                jobs: settings.jobs(),
                extra_args: Vec::new(),
                env: self.job_env(&settings),
            },
            log_root: log_root(&settings),
            store_options: self.store.clone(),
        };
        launch_ingest(&spec, backend.as_ref(), self.dry_run, say)
    }

    fn train(&self, stage: Stage, data: &str, eval: Option<Stage>, say: &dyn Fn(&str)) -> Result<Launched> {
        let file = self.stage_file(stage)?;
        let settings = self.settings(Some(&file))?;
        if eval.is_none() {
            self.show(&settings);
        }
        let backend = crate::backend::backend(&self.backend, &settings)?;
        settings.ranks_per_node()?;
        let spec = StageLaunch {
            runs: self.runs.clone(),
            run_id: self.run_id.clone(),
            stage_file: file,
            stage,
            data: data.to_string(),
            ranks: settings.ranks(),
            nodes: settings.nodes(),
            env: self.job_env(&settings),
            train_bin: tool(settings.values.train_bin.as_ref(), "S3_TRAIN_BIN", "s3-train"),
            device: settings.device().to_string(),
            catalog: self.manifest.clone(),
            log_root: log_root(&settings),
            store_options: self.store.clone(),
            max_retries: settings.max_retries(),
            benchmarks: if eval == Some(Stage::Benchmarks) { self.benchmarks.clone() } else { None },
        };
        if eval.is_some() {
            return launch_eval(&spec, backend.as_ref(), self.dry_run, say);
        }
        launch_stage(&spec, backend.as_ref(), self.dry_run, say)
    }
}

fn log_root(settings: &Settings) -> PathBuf {
    settings.values.log_dir.as_ref().map_or_else(|| PathBuf::from("s3-orch-logs"), PathBuf::from)
}

/// Launches the request's stages in order, handing each launch to `each`, which
/// says whether to go on.
pub fn launch_steps(
    req: &PipelineLaunch,
    say: &dyn Fn(&str),
    each: &mut dyn FnMut(Launched) -> Result<bool>,
) -> Result<()> {
    let pipeline = req.target == "pipeline";
    let mut steps: Vec<Stage> = if pipeline {
        Stage::PIPELINE.to_vec()
    } else {
        vec![Stage::parse(&req.target).filter(|s| Stage::PIPELINE.contains(s)).ok_or_else(|| OrchError::Setting {
            name: "stage",
            value: req.target.clone(),
            expected: "ingest, stage1, stage2, eval or pipeline".into(),
        })?]
    };
    if req.benchmarks.is_some() {
        match steps.last() {
            Some(Stage::Eval) if pipeline => steps.push(Stage::Benchmarks),
            Some(Stage::Eval) => steps = vec![Stage::Benchmarks],
            _ => {
                return Err(OrchError::Setting {
                    name: "--benchmarks",
                    value: req.target.clone(),
                    expected: "a launch of eval or pipeline".into(),
                });
            }
        }
    }
    let need = |v: Option<&str>, flag, what| v.map(str::to_string).ok_or(OrchError::NeedsFlag { flag, what });
    for step in steps {
        let data = if pipeline { req.out.as_deref() } else { req.data.as_deref() };
        let launched = match step {
            Stage::Ingest => req.ingest(&need(req.out.as_deref(), "--out", "ingest")?, say)?,
            // The eval step evaluates the stage before it.
            Stage::Eval | Stage::Benchmarks => {
                let evaluated = Stage::Eval.previous().unwrap_or(Stage::Stage2);
                req.train(evaluated, &need(data, "--data", "evaluate")?, Some(step), say)?
            }
            stage => req.train(stage, &need(data, "--data", "train (--out for the pipeline)")?, None, say)?,
        };
        if !each(launched)? {
            break;
        }
    }
    Ok(())
}
