//! The Slurm backend: one sbatch script per stage, ingest as a job array plus a
//! merge job. Slurm holds the chain: each job starts `--dependency=afterok` on the
//! one before, records its own attempts in the ledger (`s3-orch job start|gate|end`)
//! and requeues itself on a preemption (exit 75), so the pipeline runs on without
//! the terminal that launched it. The ranks get their rank from `SLURM_PROCID` /
//! `SLURM_NTASKS` / `SLURM_LOCALID` (DESIGN §10), the rendezvous from the first
//! node of the allocation and a port derived from the job id.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::backend::{Backend, JobEnd, Submission, shell_quote};
use crate::error::{OrchError, Result};
use crate::plan::{Hooks, Job, JobKind};
use crate::settings::Settings;
use crate::stage::Stage;

/// Variables the launcher sets per rank that Slurm provides instead (or the script
/// makes: the token, the attempt).
const PER_RANK: [&str; 7] =
    ["RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "S3_JOB_TOKEN", "S3_ATTEMPT"];

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
fn mebibytes(mem: &str) -> Result<u64> {
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

    fn orch(&self) -> String {
        self.settings
            .values
            .orch_bin
            .clone()
            .unwrap_or_else(|| std::env::current_exe().map_or_else(|_| "s3-orch".into(), |p| p.display().to_string()))
    }

    /// `#SBATCH` lines common to every job. The eval and the ingest have partitions
    /// and time limits of their own where the profile names them: one GPU for a few
    /// minutes, or CPUs only, need not queue for the training partition's nodes.
    fn header(&self, job: &Job, name: &str, out: &str) -> String {
        let v = &self.settings.values;
        let (partition, time) = match job.kind.stage() {
            Stage::Eval => (v.eval_partition.as_ref().or(v.partition.as_ref()), v.eval_time_limit.as_ref()),
            Stage::Ingest => (v.ingest_partition.as_ref().or(v.partition.as_ref()), v.ingest_time_limit.as_ref()),
            _ => (v.partition.as_ref(), None),
        };
        let time = time.or(v.time_limit.as_ref());
        let mut h = format!("#!/bin/bash\n#SBATCH --job-name={}\n", shell_quote(name));
        for (flag, value) in
            [("partition", partition), ("account", v.account.as_ref()), ("qos", v.qos.as_ref()), ("time", time)]
        {
            if let Some(x) = value {
                h.push_str(&format!("#SBATCH --{flag}={}\n", shell_quote(x)));
            }
        }
        h.push_str(&format!("#SBATCH --output={}\n", shell_quote(&job.log_dir.join(out).display().to_string())));
        h.push_str("#SBATCH --open-mode=append\n");
        h
    }

    /// Exports of the job's non-rank environment.
    fn exports(&self, job: &Job) -> String {
        let mut s = String::new();
        if let Some(r) = job.ranks.first() {
            for (k, v) in r.env.iter().filter(|(k, _)| !PER_RANK.contains(&k.as_str())) {
                s.push_str(&format!("export {k}={}\n", shell_quote(v)));
            }
        }
        s
    }

    /// The program and its arguments, in the image when the profile says so.
    fn command(&self, program: &Path, args: &[String]) -> String {
        let v = &self.settings.values;
        let image = v.image.as_deref().unwrap_or_default();
        let prefix = match v.container.as_deref() {
            Some("apptainer") => format!("apptainer exec --nv {} ", shell_quote(image)),
            _ => String::new(),
        };
        let words: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
        format!("{prefix}{} {}", shell_quote(&program.display().to_string()), words.join(" "))
    }

    fn hook_args(&self, job: &Job, hooks: &Hooks) -> String {
        // The merge job records the ingest's end: one ledger stage for both jobs.
        let stage = job.kind.stage().name();
        format!(
            "ORCH={}\nHOOK=(--runs {} --run {} --stage {})\n",
            shell_quote(&self.orch()),
            shell_quote(&hooks.runs),
            shell_quote(&job.run_id),
            shell_quote(stage)
        )
    }

    /// `job end` then, when it asks (exit 75 that no cancel asked for), the requeue.
    fn end_lines(&self, hooks: &Hooks, attempt: &str) -> String {
        let mut end = format!(
            "\"$ORCH\" job end \"${{HOOK[@]}}\" --job-id \"$SLURM_JOB_ID\" --attempt {attempt} --exit-code \"$rc\" --logs \"$LOGS\""
        );
        if let Some(f) = &hooks.stage_file {
            end.push_str(&format!(" --stage-file {}", shell_quote(&f.display().to_string())));
        }
        if let Some(o) = &hooks.out {
            end.push_str(&format!(" --out {}", shell_quote(o)));
        }
        if let Some(e) = &hooks.evaluated {
            end.push_str(&format!(" --evaluated {}", shell_quote(e)));
        }
        format!(
            "{end}\nhook=$?\n# Preempted (75) without a cancel: back in the queue, resuming from the checkpoint.\n\
             if [ \"$hook\" = {} ]; then scontrol requeue \"$SLURM_JOB_ID\"; fi\nexit \"$rc\"\n",
            s3_shards::exit::REQUEUE
        )
    }

    /// The sbatch script of a training stage or the eval.
    fn train_script(&self, job: &Job, hooks: &Hooks) -> Result<String> {
        let v = &self.settings.values;
        let per_node = self.settings.ranks_per_node()?;
        let r0 = job.ranks.first().ok_or_else(|| OrchError::NoRanks { stage: job.kind.to_string() })?;
        let mut s = self.header(job, &format!("s3-{}-{}", job.run_id, job.kind), "slurm-%j.out");
        // The eval is one process on one GPU: a whole training node would sit idle.
        let eval = job.kind == JobKind::Run(Stage::Eval);
        let per_node = if eval { 1 } else { per_node };
        if eval {
            s.push_str("#SBATCH --nodes=1\n#SBATCH --ntasks=1\n");
        } else {
            s.push_str(&format!("#SBATCH --nodes={}\n#SBATCH --ntasks-per-node={per_node}\n", job.nodes));
        }
        if let Some(c) = v.cpus_per_rank {
            s.push_str(&format!("#SBATCH --cpus-per-task={c}\n"));
        }
        if let Some(m) = &v.mem_per_rank {
            s.push_str(&format!("#SBATCH --mem={}M\n", mebibytes(m)? * per_node as u64));
        }
        match v.gpus_per_node {
            Some(_) if eval => s.push_str("#SBATCH --gpus=1\n"),
            Some(g) => s.push_str(&format!("#SBATCH --gpus-per-node={g}\n")),
            None => {}
        }
        s.push_str(&format!(
            "#SBATCH --requeue\n#SBATCH --signal=USR2@{}\nset -uo pipefail\n",
            self.settings.grace_seconds()
        ));
        s.push_str(&self.hook_args(job, hooks));
        let data = hooks.data.as_deref().map(|d| format!(" --data {}", shell_quote(d))).unwrap_or_default();
        s.push_str(&format!(
            "ATTEMPT=$(\"$ORCH\" job start \"${{HOOK[@]}}\" --job-id \"$SLURM_JOB_ID\" --restart \"${{SLURM_RESTART_COUNT:-0}}\"{data}) || exit 2\n"
        ));
        s.push_str(&format!(
            "LOGS={}/attempt-$ATTEMPT\nmkdir -p \"$LOGS\"\n",
            shell_quote(&job.log_dir.display().to_string())
        ));
        s.push_str(&self.exports(job));
        s.push_str("export S3_ATTEMPT=$ATTEMPT\n");
        // The token joins this job's ranks only; it is made here, never written down.
        s.push_str("export S3_JOB_TOKEN=$(od -An -N8 -tx8 /dev/urandom | tr -d ' \\n')\n");
        s.push_str("export MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n1)\n");
        s.push_str("export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))\n");
        let mut args = r0.args.clone();
        if hooks.gate {
            s.push_str(
                "# Stage 2 starts only from stage 1's final checkpoint as the ledger records it, its hash checked now.\n\
                 if ! GATE=$(\"$ORCH\" job gate \"${HOOK[@]}\"); then rc=2\n",
            );
            s.push_str(&format!("  {}\n", self.end_lines(hooks, "\"$ATTEMPT\"").trim_end().replace('\n', "\n  ")));
            s.push_str("fi\nread -r S3_INIT S3_INIT_XXH3 <<< \"$GATE\"\n");
        }
        let mut cmd = String::new();
        if job.kind == JobKind::Run(Stage::Eval) {
            cmd.push_str(&format!("{} > \"$LOGS/rank-0.log\" 2>&1\n", self.command(&r0.program, &args)));
        } else {
            let pyxis = match (v.container.as_deref(), &v.image) {
                (Some("pyxis"), Some(i)) => format!(" --container-image={}", shell_quote(i)),
                _ => String::new(),
            };
            if hooks.gate {
                args.retain(|a| !a.starts_with("--init"));
            }
            let mut line = format!(
                "srun --kill-on-bad-exit=1{pyxis} --output=\"$LOGS/rank-%t.log\" {}",
                self.command(&r0.program, &args)
            );
            if hooks.gate {
                line.push_str(" --init \"$S3_INIT\" --init-xxh3 \"$S3_INIT_XXH3\"");
            }
            cmd.push_str(&line);
            cmd.push('\n');
        }
        s.push_str(&cmd);
        s.push_str("rc=$?\n");
        s.push_str(&self.end_lines(hooks, "\"$ATTEMPT\""));
        Ok(s)
    }

    /// The ingest workers as an array job (`--worker $SLURM_ARRAY_TASK_ID/N`), or
    /// the one worker / the merge that records the ingest's end.
    fn ingest_script(&self, job: &Job) -> Result<String> {
        let r0 = job.ranks.first().ok_or_else(|| OrchError::NoRanks { stage: job.kind.to_string() })?;
        let n = job.ranks.len();
        let jobs = self.settings.jobs();
        let mut s = if n > 1 {
            let mut s = self.header(job, &format!("s3-{}-ingest", job.run_id), "rank-%a.log");
            s.push_str(&format!("#SBATCH --array=0-{}%{n}\n", n - 1));
            s
        } else {
            self.header(job, &format!("s3-{}-{}", job.run_id, job.kind), "rank-0.log")
        };
        s.push_str(&format!("#SBATCH --ntasks=1\n#SBATCH --cpus-per-task={jobs}\nset -uo pipefail\n"));
        s.push_str(&self.exports(job));
        s.push_str(&format!("export S3_ATTEMPT={}\n", job.attempt));
        let mut args = r0.args.clone();
        // Each array task is one worker: its share from the task id.
        if let Some(i) = args.iter().position(|a| a == "--worker")
            && i + 1 < args.len()
        {
            args.truncate(i);
        }
        let mut line = self.command(&r0.program, &args);
        if n > 1 {
            line.push_str(&format!(" --worker \"$SLURM_ARRAY_TASK_ID/{n}\""));
        }
        match &job.hooks {
            None => s.push_str(&format!("exec {line}\n")),
            Some(h) => {
                s.push_str(&self.hook_args(job, h).replace("--stage ingest-merge", "--stage ingest"));
                s.push_str(&format!("LOGS={}\n", shell_quote(&job.log_dir.display().to_string())));
                s.push_str(&format!("{line}\nrc=$?\n"));
                s.push_str(&self.end_lines(h, &job.attempt.to_string()));
            }
        }
        Ok(s)
    }

    fn script(&self, job: &Job) -> Result<String> {
        match (&job.hooks, job.kind.stage()) {
            (_, Stage::Ingest) => self.ingest_script(job),
            (Some(h), _) => self.train_script(job, h),
            (None, _) => Err(OrchError::NoHooks { stage: job.kind.to_string() }),
        }
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
        match self.script(job) {
            Ok(s) => format!("# {} attempt {}: sbatch --parsable{deps}\n{s}", job.kind, job.attempt),
            Err(e) => format!("# {}: cannot render: {e}\n", job.kind),
        }
    }

    fn submit(&self, job: &Job) -> Result<Submission> {
        let script = self.script(job)?;
        std::fs::create_dir_all(&job.log_dir)
            .map_err(|source| OrchError::Io { file: job.log_dir.display().to_string(), source })?;
        let file = job.log_dir.join(format!("{}-attempt-{}.sbatch", job.kind, job.attempt));
        std::fs::write(&file, &script).map_err(|source| OrchError::Io { file: file.display().to_string(), source })?;
        let mut cmd = Command::new("sbatch");
        cmd.arg("--parsable");
        if !job.after.is_empty() {
            cmd.arg(format!("--dependency=afterok:{}", job.after.join(":"))).arg("--kill-on-invalid-dep=yes");
        }
        let out = run(cmd.arg(&file), &format!("sbatch {}", file.display()))?;
        // `--parsable` prints `id` or `id;cluster`.
        let id = out.trim().split(';').next().unwrap_or_default().to_string();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
            return Err(OrchError::NotAJobId { command: "sbatch", said: out });
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

    #[test]
    fn memory_units_and_exit_codes_parse() {
        assert_eq!(mebibytes("16G").unwrap(), 16384);
        assert_eq!(mebibytes("64Gi").unwrap(), 65536);
        assert_eq!(mebibytes("500M").unwrap(), 500);
        assert!(mebibytes("lots").is_err());
        assert_eq!(exit_code("JobState=COMPLETED Reason=None\n   Requeue=1 Restarts=0 ExitCode=75:0"), Some(75));
        assert_eq!(exit_code("JobState=PENDING"), None);
    }

    fn job(settings: &Settings) -> (Slurm, Job) {
        let plan = crate::plan::TrainPlan {
            train_bin: "s3-train".into(),
            stage_file: "stage1.toml".into(),
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
        job.hooks =
            Some(Hooks { runs: "s3://b/runs".into(), stage_file: Some("stage1.toml".into()), ..Default::default() });
        (Slurm::new(settings).unwrap(), job)
    }

    fn settings(toml: &str) -> Settings {
        Settings::resolve(vec![(crate::settings::Origin::Flag, toml::from_str(toml).unwrap())])
    }

    #[test]
    fn the_ranks_run_in_the_profiles_image() {
        let (slurm, j) = job(&settings("ranks = 4\nnodes = 2\ncontainer = \"pyxis\"\nimage = \"reg/sam3d:cuda\"\n"));
        let text = slurm.render(&j);
        assert!(text.contains("srun --kill-on-bad-exit=1 --container-image=reg/sam3d:cuda "), "{text}");
        assert!(text.contains("--nodes=2\n#SBATCH --ntasks-per-node=2\n"), "{text}");
        let (slurm, j) = job(&settings("container = \"apptainer\"\nimage = \"/shared/sam3d.sif\"\n"));
        let text = slurm.render(&j);
        assert!(text.contains("apptainer exec --nv /shared/sam3d.sif s3-train train"), "{text}");
        // No image: refused, not rendered without one.
        let e = Slurm::new(&settings("container = \"pyxis\"\n")).unwrap_err();
        assert!(e.to_string().contains("needs an image"), "{e}");
    }

    #[test]
    fn no_per_rank_variable_or_token_is_written_into_the_script() {
        let (slurm, mut j) = job(&settings("ranks = 2\n"));
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
        let (slurm, train) = job(&s);
        let text = slurm.render(&train);
        assert!(text.contains("--partition=gpu\n") && text.contains("--time=2-00:00:00\n"), "{text}");
        assert!(text.contains("--ntasks-per-node=4\n") && text.contains("--gpus-per-node=4\n"), "{text}");

        let plan = crate::plan::TrainPlan {
            train_bin: "s3-train".into(),
            stage_file: "stage2.toml".into(),
            data: "s3://b/data".into(),
            run_dir: "s3://b/runs/r/stage2".into(),
            init: None,
            catalog: None,
            ranks: 1,
            nodes: 1,
            device: "cuda".into(),
            env: Default::default(),
        };
        let mut eval = crate::plan::eval_job(&plan, "r", 1, "/logs/eval".into());
        eval.hooks = Some(Hooks { runs: "s3://b/runs".into(), evaluated: Some("stage2".into()), ..Default::default() });
        let text = slurm.render(&eval);
        assert!(text.contains("--partition=gpu-short\n") && text.contains("--time=1:00:00\n"), "{text}");
        assert!(text.contains("--nodes=1\n#SBATCH --ntasks=1\n") && text.contains("--gpus=1\n"), "{text}");
        assert!(text.contains("--mem=16384M\n") && !text.contains("--gpus-per-node"), "one rank's share: {text}");

        let ingest_plan = crate::plan::IngestPlan {
            ingest_bin: "s3-ingest".into(),
            manifest: "datasets.toml".into(),
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
}
