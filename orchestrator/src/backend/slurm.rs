//! The Slurm backend: one sbatch script per stage, ingest as a job array plus a
//! merge job. Slurm holds the chain: each job starts `--dependency=afterok` on the
//! one before, records its own attempts in the ledger (`s3-orch job start|gate|end`)
//! and requeues itself on a preemption (exit 75), so the pipeline runs on without
//! the terminal that launched it. The ranks get their rank from `SLURM_PROCID` /
//! `SLURM_NTASKS` / `SLURM_LOCALID` (DESIGN §10), the rendezvous from the first
//! node of the allocation and a port derived from the job id.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::backend::{Backend, JobEnd, Submission};
use crate::error::{OrchError, Result};
use crate::plan::Job;
use crate::settings::Settings;
use crate::stage::Stage;

mod script;

/// Variables the launcher sets per rank that Slurm provides instead (or the script
/// makes: the token, the attempt).
pub(crate) const PER_RANK: [&str; 8] =
    ["RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "S3_JOB_TOKEN", "S3_ATTEMPT", "S3_NODES"];

/// Batch jobs on a Slurm cluster (`sbatch`, `squeue`, `scontrol`, `scancel`).
#[derive(Clone, Debug, Default)]
pub struct Slurm {
    settings: Settings,
}

fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|source| OrchError::Process {
        what: format!("{what} (is Slurm installed, and SLURM_CONF pointing at its slurm.conf?)"),
        source,
    })?;
    if !out.status.success() {
        return Err(OrchError::CommandFailed {
            command: what.to_string(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `16G` → MiB.
pub(crate) fn mebibytes(mem: &str) -> Result<u64> {
    let m = mem.trim();
    let (num, unit) = m.split_at(m.find(|c: char| !c.is_ascii_digit()).unwrap_or(m.len()));
    let bad = || OrchError::Setting {
        name: "mem_per_rank",
        value: mem.to_string(),
        expected: "a size such as 16G (a whole number, then K, M, G or T)".into(),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let scale = match unit.trim_end_matches(['i', 'B']).to_ascii_uppercase().as_str() {
        "" | "M" => 1,
        "K" => return Ok(n.div_ceil(1024)),
        "G" => 1024,
        "T" => 1024 * 1024,
        _ => return Err(bad()),
    };
    Ok(n * scale)
}

impl Slurm {
    /// The Slurm backend with the cluster's settings.
    pub fn new(settings: &Settings) -> Result<Slurm> {
        let v = &settings.values;
        match v.container.as_deref().unwrap_or("none") {
            "none" => {}
            "pyxis" | "apptainer" if v.image.is_some() => {}
            c @ ("pyxis" | "apptainer") => {
                return Err(OrchError::NeedsImage { needed_by: format!("container = {c:?}") });
            }
            other => {
                return Err(OrchError::Setting {
                    name: "container",
                    value: other.to_string(),
                    expected: "none, pyxis or apptainer".into(),
                });
            }
        }
        if let Some(m) = &v.mem_per_rank {
            mebibytes(m)?;
        }
        settings.ranks_per_node()?;
        Ok(Slurm { settings: settings.clone() })
    }

    /// Submits `script` (kept beside the launcher's logs as `<name>.sbatch`) after
    /// `after` (`kind`: afterok, or afternotok for any of them); its job id.
    fn sbatch(&self, job: &Job, name: &str, script: &str, after: &[String], kind: &str) -> Result<String> {
        std::fs::create_dir_all(&job.log_dir)
            .map_err(|source| OrchError::Io { file: job.log_dir.display().to_string(), source })?;
        let file = job.log_dir.join(format!("{name}.sbatch"));
        std::fs::write(&file, script).map_err(|source| OrchError::Io { file: file.display().to_string(), source })?;
        let mut cmd = Command::new("sbatch");
        cmd.arg("--parsable");
        if !after.is_empty() {
            // afterok waits for all; afternotok starts on any that failed (`?`).
            let sep = if kind == "afternotok" { format!("?{kind}:") } else { ":".into() };
            cmd.arg(format!("--dependency={kind}:{}", after.join(&sep))).arg("--kill-on-invalid-dep=yes");
        }
        let out = run(cmd.arg(&file), &format!("sbatch {}", file.display()))?;
        // `--parsable` prints `id` or `id;cluster`.
        let id = out.trim().split(';').next().unwrap_or_default().to_string();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
            return Err(OrchError::NotAJobId { command: "sbatch", said: out });
        }
        Ok(id)
    }

    /// Job ids Slurm still lists (pending, running, completing, requeued).
    fn queued(&self, ids: &[String]) -> Result<Vec<String>> {
        let out = Command::new("squeue")
            .args(["-h", "-o", "%i", "-j", &ids.join(",")])
            .stdin(Stdio::null())
            .output()
            .map_err(|source| OrchError::Process { what: "running squeue".into(), source })?;
        if !out.status.success() {
            // A job Slurm has forgotten is an error for squeue, and not queued.
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("Invalid job id") {
                return Ok(Vec::new());
            }
            return Err(OrchError::CommandFailed {
                command: "squeue".into(),
                status: out.status,
                stderr: err.trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect())
    }
}

/// The exit code in `scontrol show job` output (`ExitCode=2:0`).
pub fn exit_code(show_job: &str) -> Option<i32> {
    show_job.split_whitespace().find_map(|w| w.strip_prefix("ExitCode="))?.split(':').next()?.parse().ok()
}

impl Backend for Slurm {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn records_in_job(&self) -> bool {
        true
    }

    fn render(&self, job: &Job) -> String {
        let deps = if job.after.is_empty() {
            String::new()
        } else {
            format!(" --dependency=afterok:{} --kill-on-invalid-dep=yes", job.after.join(":"))
        };
        match self.script(job, false) {
            Ok(s) => format!("# {} attempt {}: sbatch --parsable{deps}\n{s}", job.kind, job.attempt),
            Err(e) => format!("# {}: cannot render: {e}\n", job.kind),
        }
    }

    fn submit(&self, job: &Job) -> Result<Submission> {
        let script = self.script(job, true)?;
        let id = self.sbatch(job, &format!("{}-attempt-{}", job.kind, job.attempt), &script, &job.after, "afterok")?;
        // The job that records an ingest's end has a watchdog for when it, or a
        // worker before it, is killed before any hook can run.
        if job.kind.stage() == Stage::Ingest
            && let Some(h) = job.hooks.as_ref().filter(|h| !h.uploads_only)
        {
            let watched: Vec<String> = job.after.iter().cloned().chain([id.clone()]).collect();
            let script = self.watchdog_script(job, h, &watched);
            if let Err(e) =
                self.sbatch(job, &format!("ingest-watch-attempt-{}", job.attempt), &script, &watched, "afternotok")
            {
                // The ingest runs without it; only a killed job would go unrecorded until `status`.
                tracing::warn!("no watchdog for the ingest: {e}");
            }
        }
        Ok(Submission { ids: vec![id] })
    }

    fn wait(&self, _job: &Job, submission: &Submission) -> Result<JobEnd> {
        while !self.queued(&submission.ids)?.is_empty() {
            std::thread::sleep(Duration::from_secs(2));
        }
        let exit_codes: Vec<Option<i32>> = submission
            .ids
            .iter()
            .map(|id| {
                run(Command::new("scontrol").args(["show", "job", id]), "scontrol show job")
                    .ok()
                    .and_then(|o| exit_code(&o))
            })
            .collect();
        let failed_rank = exit_codes.iter().position(|c| s3_shards::exit::is_failure(*c));
        Ok(JobEnd { exit_codes, failed_rank })
    }

    fn cancel(&self, submission: &Submission) -> Result<()> {
        for id in &submission.ids {
            let state = run(Command::new("squeue").args(["-h", "-o", "%T", "-j", id]), "squeue").unwrap_or_default();
            if state.trim() == "RUNNING" {
                // The ranks checkpoint and exit 75; the script records the stop.
                run(Command::new("scancel").args(["--signal=USR2", id]), "scancel --signal=USR2")?;
            } else if !state.trim().is_empty() {
                run(Command::new("scancel").arg(id), "scancel")?;
            }
        }
        Ok(())
    }

    fn is_running(&self, submission: &Submission) -> bool {
        // Cannot ask Slurm: say running, so no attempt is marked failed on a guess.
        self.queued(&submission.ids).map_or(true, |q| !q.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Hooks;
    use crate::stage::Stage;

    #[test]
    fn memory_units_and_exit_codes_parse() {
        assert_eq!(mebibytes("16G").unwrap(), 16384);
        assert_eq!(mebibytes("64Gi").unwrap(), 65536);
        assert_eq!(mebibytes("500M").unwrap(), 500);
        assert!(mebibytes("lots").is_err());
        assert_eq!(exit_code("JobState=COMPLETED Reason=None\n   Requeue=1 Restarts=0 ExitCode=75:0"), Some(75));
        assert_eq!(exit_code("JobState=PENDING"), None);
    }

    /// A stage-1 job whose stage file (and the catalogue it names) live in a folder
    /// only this machine has.
    fn job(settings: &Settings) -> (Slurm, Job, tempfile::TempDir) {
        let launcher = tempfile::tempdir().unwrap();
        let stage = launcher.path().join("stages/stage1.toml");
        std::fs::create_dir_all(stage.parent().unwrap()).unwrap();
        std::fs::write(&stage, "name = \"stage1\"\nepochs = 1\n[datasets]\ncatalog = \"../datasets.toml\"\n").unwrap();
        std::fs::write(launcher.path().join("datasets.toml"), "[[datasets]]\nname = \"it's\"\n").unwrap();
        let plan = crate::plan::TrainPlan {
            train_bin: "s3-train".into(),
            stage_file: stage.clone(),
            data: "s3://b/data".into(),
            run_dir: "s3://b/runs/r/stage1".into(),
            init: None,
            catalog: None,
            ranks: settings.ranks(),
            nodes: settings.nodes(),
            device: "cuda".into(),
            env: Default::default(),
        };
        let mut job = crate::plan::train_job(&plan, "r", Stage::Stage1, 1, 0, None, "/logs/stage1".into());
        job.hooks = Some(Hooks { runs: "s3://b/runs".into(), stage_file: Some(stage), ..Default::default() });
        (Slurm::new(settings).unwrap(), job, launcher)
    }

    fn settings(toml: &str) -> Settings {
        Settings::resolve(vec![(crate::settings::Origin::Flag, toml::from_str(toml).unwrap())])
    }

    #[test]
    fn the_ranks_run_in_the_profiles_image() {
        let (slurm, j, _dir) =
            job(&settings("ranks = 4\nnodes = 2\ncontainer = \"pyxis\"\nimage = \"reg/sam3d:cuda\"\n"));
        let text = slurm.render(&j);
        assert!(text.contains("srun --kill-on-bad-exit=1 --container-image=reg/sam3d:cuda "), "{text}");
        assert!(text.contains("--nodes=2\n#SBATCH --ntasks-per-node=2\n"), "{text}");
        let (slurm, j, _dir) = job(&settings("container = \"apptainer\"\nimage = \"/shared/sam3d.sif\"\n"));
        let text = slurm.render(&j);
        assert!(text.contains("apptainer exec --nv --bind \"/tmp/s3-orch-$SLURM_JOB_ID:"), "{text}");
        assert!(text.contains(" /shared/sam3d.sif s3-train train"), "{text}");
        // No image: refused, not rendered without one.
        let e = Slurm::new(&settings("container = \"pyxis\"\n")).unwrap_err();
        assert!(e.to_string().contains("needs an image"), "{e}");
    }

    #[test]
    fn no_per_rank_variable_or_token_is_written_into_the_script() {
        let (slurm, mut j, _dir) = job(&settings("ranks = 2\n"));
        for r in &mut j.ranks {
            r.env.push(("S3_JOB_TOKEN".into(), "secret-token-value".into()));
        }
        let text = slurm.render(&j);
        assert!(!text.contains("secret-token-value") && !text.contains("export RANK="), "{text}");
        assert!(text.contains("export S3_JOB_TOKEN=$(od"), "the job makes its own token: {text}");
    }

    #[test]
    fn the_eval_takes_one_gpu_and_eval_and_ingest_take_their_own_partitions() {
        let profile = "ranks = 8\nnodes = 2\ngpus_per_node = 4\nmem_per_rank = \"16G\"\npartition = \"gpu\"\n\
                       time_limit = \"2-00:00:00\"\neval_partition = \"gpu-short\"\neval_time_limit = \"1:00:00\"\n\
                       ingest_partition = \"cpu\"\n";
        let s = settings(profile);
        let (slurm, train, dir) = job(&s);
        let text = slurm.render(&train);
        assert!(text.contains("--partition=gpu\n") && text.contains("--time=2-00:00:00\n"), "{text}");
        assert!(text.contains("--ntasks-per-node=4\n") && text.contains("--gpus-per-node=4\n"), "{text}");

        let plan = crate::plan::TrainPlan {
            train_bin: "s3-train".into(),
            stage_file: dir.path().join("stages/stage1.toml"),
            data: "s3://b/data".into(),
            run_dir: "s3://b/runs/r/stage2".into(),
            init: None,
            catalog: None,
            ranks: 1,
            nodes: 1,
            device: "cuda".into(),
            env: Default::default(),
        };
        let mut eval = crate::plan::eval_job(&plan, "r", 1, "/logs/eval".into(), None);
        eval.hooks = Some(Hooks { runs: "s3://b/runs".into(), evaluated: Some("stage2".into()), ..Default::default() });
        let text = slurm.render(&eval);
        assert!(text.contains("--partition=gpu-short\n") && text.contains("--time=1:00:00\n"), "{text}");
        assert!(text.contains("--nodes=1\n#SBATCH --ntasks=1\n") && text.contains("--gpus=1\n"), "{text}");
        assert!(text.contains("--mem=16384M\n") && !text.contains("--gpus-per-node"), "one rank's share: {text}");

        let ingest_plan = crate::plan::IngestPlan {
            ingest_bin: "s3-ingest".into(),
            manifest: dir.path().join("datasets.toml"),
            out: "s3://b/shards".into(),
            workers: 3,
            jobs: 4,
            extra_args: Vec::new(),
            env: Default::default(),
        };
        let ingest = crate::plan::ingest_job(&ingest_plan, "r", 1, "/logs/ingest".into());
        let text = slurm.render(&ingest);
        assert!(text.contains("--partition=cpu\n") && text.contains("--time=2-00:00:00\n"), "{text}");
        assert!(!text.contains("--gpus"), "the ingest needs no GPU: {text}");
    }

    #[test]
    fn no_script_names_the_launchers_disk() {
        for profile in [
            "ranks = 4\nnodes = 2\n",
            "container = \"pyxis\"\nimage = \"i\"\ncontainer_mounts = \"/scratch:/scratch\"\n",
        ] {
            let (slurm, j, dir) = job(&settings(profile));
            let text = slurm.render(&j);
            let here = dir.path().display().to_string();
            assert!(!text.contains("cannot render") && !text.contains(&here), "{here} in\n{text}");
            assert!(!text.contains("/logs/stage1"), "the launcher's log folder: {text}");
            // The stage file and the catalogue it names travel in the script, quotes and all.
            assert!(text.contains("export S3_FILE_0=") && text.contains("name = \"it'\\''s\""), "{text}");
            assert!(text.contains("--stage \"$S3_NODE_DIR\"/files/stages/stage1.toml"), "{text}");
            assert!(text.contains("--stage-file \"$S3_NODE_DIR\"/files/stages/stage1.toml"), "{text}");
            assert!(text.contains("#SBATCH --output=/tmp/s3-orch-%j.out"), "{text}");
            assert!(text.contains("--from \"$S3_LOGS\""), "the logs are uploaded: {text}");
        }
        let (slurm, j, _dir) =
            job(&settings("container = \"pyxis\"\nimage = \"i\"\ncontainer_mounts = \"/scratch:/scratch\"\n"));
        let text = slurm.render(&j);
        assert!(text.contains("ORCH=(srun --nodes=1 --ntasks=1 --container-image=i "), "hooks in the image: {text}");
        assert!(text.contains("/tmp/s3-orch-$SLURM_JOB_ID,/scratch:/scratch\""), "{text}");
        assert!(text.contains(" s3-orch)\n"), "the image's s3-orch: {text}");
    }
}
