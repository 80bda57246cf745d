//! The sbatch scripts. Nothing in them refers to the launcher's disk: the stage
//! file and catalogue travel inside the script and each node writes its own copy
//! (under `/tmp/s3-orch-<job id>`), the ranks log to node-local files that every
//! node uploads into the run folder when they end (`s3-orch job upload-logs`),
//! Slurm's own output goes to the batch node's `/tmp`, and the job hooks run the
//! `s3-orch` of the image (or the one `orch_bin` names). The run folder and the
//! shards are what the nodes share, as store URLs or paths on a shared filesystem.

use std::path::Path;

use super::{PER_RANK, Slurm, mebibytes};
use crate::backend::files::{self, Shipped};
use crate::backend::shell_quote;
use crate::error::{OrchError, Result};
use crate::plan::{Hooks, Job, JobKind};
use crate::stage::Stage;

/// Where each node keeps the job's files and logs (`$S3_NODE_DIR`): a per-job
/// folder on the node's own disk.
const NODE_DIR: &str = "/tmp/s3-orch-$SLURM_JOB_ID";

/// An argument that names a path below `$S3_NODE_DIR` (expanded by the script's shell).
const NODE_MARK: &str = "\u{1}S3_NODE_DIR\u{1}";

/// One word of the script: `$S3_NODE_DIR` expanded, the rest quoted.
fn word(a: &str) -> String {
    match a.strip_prefix(NODE_MARK) {
        Some(rest) => format!("\"$S3_NODE_DIR\"{}", if rest.is_empty() { String::new() } else { shell_quote(rest) }),
        None => shell_quote(a),
    }
}

impl Slurm {
    /// The `s3-orch` the job hooks run: `orch_bin`, else the image's (`s3-orch` on
    /// its PATH) when the ranks run in one, else this program's own path (which then
    /// must exist on the nodes).
    fn orch_bin(&self) -> String {
        let v = &self.settings.values;
        v.orch_bin.clone().unwrap_or_else(|| {
            if matches!(v.container.as_deref(), Some("pyxis" | "apptainer")) {
                "s3-orch".into()
            } else {
                std::env::current_exe().map_or_else(|_| "s3-orch".into(), |p| p.display().to_string())
            }
        })
    }

    /// Profile mounts (`container_mounts = "src:dst[:ro],..."`) plus the node folder.
    fn mounts(&self) -> Vec<String> {
        let mut m = vec![format!("{NODE_DIR}:{NODE_DIR}")];
        if let Some(extra) = &self.settings.values.container_mounts {
            // Inside the script's double quotes: nothing of them may expand.
            let literal = |s: &str| s.replace(['"', '$', '`', '\\'], "");
            m.extend(extra.split(',').map(str::trim).filter(|s| !s.is_empty()).map(literal));
        }
        m
    }

    /// `srun` options that put a step in the image (pyxis), with the mounts.
    fn pyxis(&self) -> String {
        let v = &self.settings.values;
        match (v.container.as_deref(), &v.image) {
            (Some("pyxis"), Some(i)) => {
                format!(" --container-image={} --container-mounts=\"{}\"", shell_quote(i), self.mounts().join(","))
            }
            _ => String::new(),
        }
    }

    /// The prefix that runs a program in the image (apptainer), with the mounts.
    fn apptainer(&self, gpu: bool) -> String {
        let v = &self.settings.values;
        match v.container.as_deref() {
            Some("apptainer") => {
                let binds: Vec<String> = self.mounts().iter().map(|m| format!("--bind \"{m}\"")).collect();
                format!(
                    "apptainer exec{} {} {} ",
                    if gpu { " --nv" } else { "" },
                    binds.join(" "),
                    shell_quote(v.image.as_deref().unwrap_or_default())
                )
            }
            _ => String::new(),
        }
    }

    /// `#SBATCH` lines common to every job. The eval and the ingest have partitions
    /// and time limits of their own where the profile names them: one GPU for a few
    /// minutes, or CPUs only, need not queue for the training partition's nodes.
    fn header(&self, job: &Job, name: &str, out: &str) -> String {
        let v = &self.settings.values;
        let (partition, time) = match job.kind.stage() {
            Stage::Eval | Stage::Benchmarks => {
                (v.eval_partition.as_ref().or(v.partition.as_ref()), v.eval_time_limit.as_ref())
            }
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
        // Slurm's own output on the batch node (it makes no folders); each attempt
        // uploads a copy with the ranks' logs.
        h.push_str(&format!("#SBATCH --output=/tmp/{out}\n#SBATCH --open-mode=append\n"));
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

    /// The files the job reads, as the script carries them: their text in variables,
    /// and `s3_unpack`, which writes them below `$S3_NODE_DIR/files` (and makes the
    /// node's log folder); the arguments renamed to those copies.
    /// A dry run (`strict` false) renders files it cannot read as they are named,
    /// with a note; a submit refuses them.
    fn carried(&self, args: &[String], strict: bool) -> Result<(String, Vec<String>, Option<Shipped>)> {
        let mut s = format!("export S3_NODE_DIR={NODE_DIR}\n");
        let shipped = match files::ship(args) {
            Ok(f) => f,
            Err(e) if !strict => {
                s.push_str(&format!("# note: {e}; a submit refuses this\n"));
                None
            }
            Err(e) => return Err(e),
        };
        let mut unpack = String::from("s3_unpack() {\n  mkdir -p \"$S3_LOGS\" || return\n");
        let args = match &shipped {
            None => args.to_vec(),
            Some(f) => {
                s.push_str("# The files the ranks read, as they were when this attempt was launched.\n");
                for (i, item) in f.items.iter().enumerate() {
                    let key = item["key"].as_str().unwrap_or_default();
                    let rel = item["path"].as_str().unwrap_or_default();
                    let text = f.data.get(key).and_then(|v| v.as_str()).unwrap_or_default();
                    s.push_str(&format!("export S3_FILE_{i}={}\n", shell_quote(text)));
                    let path = word(&format!("{NODE_MARK}/files/{rel}"));
                    unpack.push_str(&format!(
                        "  mkdir -p \"$(dirname {path})\" && printf %s \"$S3_FILE_{i}\" > {path} || return\n"
                    ));
                }
                files::rename(args, f, &format!("{NODE_MARK}/files"))
            }
        };
        unpack.push_str("}\nexport -f s3_unpack\n");
        s.push_str(&unpack);
        Ok((s, args, shipped))
    }

    /// The program and its arguments, in the image when the profile says so (apptainer).
    fn command(&self, program: &Path, args: &[String], gpu: bool) -> String {
        let words: Vec<String> = args.iter().map(|a| word(a)).collect();
        format!("{}{} {}", self.apptainer(gpu), shell_quote(&program.display().to_string()), words.join(" "))
    }

    /// `ORCH` (the hooks on the batch node), `ORCH_EACH_NODE` (one per node) and `HOOK`.
    fn hook_args(&self, job: &Job, hooks: &Hooks) -> String {
        // The merge job records the ingest's end: one ledger stage for both jobs.
        let stage = job.kind.stage().name();
        let orch = shell_quote(&self.orch_bin());
        let (pyxis, apptainer) = (self.pyxis(), self.apptainer(false));
        let on_batch = if pyxis.is_empty() { String::new() } else { format!("srun --nodes=1 --ntasks=1{pyxis} ") };
        format!(
            "ORCH=({on_batch}{apptainer}{orch})\n\
             ORCH_EACH_NODE=(srun --nodes=\"$SLURM_NNODES\" --ntasks=\"$SLURM_NNODES\" --ntasks-per-node=1{pyxis} {apptainer}{orch})\n\
             HOOK=(--runs {} --run {} --stage {})\n",
            shell_quote(&hooks.runs),
            shell_quote(&job.run_id),
            shell_quote(stage)
        )
    }

    /// Uploads the attempt's logs (every node's ranks, and Slurm's output), then
    /// `job end`, then, when it asks (exit 75 that no cancel asked for), the requeue.
    fn end_lines(&self, hooks: &Hooks, shipped: Option<&Shipped>, attempt: &str, each_node: bool) -> String {
        let mut s = String::from("cp \"$S3_SLURM_OUT\" \"$S3_LOGS/slurm-${S3_SLURM_OUT#/tmp/s3-orch-}\" 2>/dev/null\n");
        let upload = format!("job upload-logs \"${{HOOK[@]}}\" --attempt {attempt} --from \"$S3_LOGS\"");
        if each_node {
            s.push_str(&format!("\"${{ORCH_EACH_NODE[@]}}\" {upload} || \"${{ORCH[@]}}\" {upload}\n"));
        } else {
            s.push_str(&format!("\"${{ORCH[@]}}\" {upload}\n"));
        }
        let mut end = format!(
            "\"${{ORCH[@]}}\" job end \"${{HOOK[@]}}\" --job-id \"$SLURM_JOB_ID\" --attempt {attempt} --exit-code \"$rc\" --logs \"the run folder's logs/ (s3-orch logs)\""
        );
        if let Some(f) = &hooks.stage_file {
            let given = f.display().to_string();
            let path = match shipped.and_then(|s| s.renamed.get(&given)) {
                Some(rel) => word(&format!("{NODE_MARK}/files/{rel}")),
                None => shell_quote(&given),
            };
            end.push_str(&format!(" --stage-file {path}"));
        }
        if let Some(o) = &hooks.out {
            end.push_str(&format!(" --out {}", shell_quote(o)));
        }
        if let Some(e) = &hooks.evaluated {
            end.push_str(&format!(" --evaluated {}", shell_quote(e)));
        }
        s.push_str(&format!("{end}\nhook=$?\n"));
        // The node copies are uploaded and of no further use (a requeued run unpacks again).
        if each_node {
            s.push_str(
                "srun --nodes=\"$SLURM_NNODES\" --ntasks=\"$SLURM_NNODES\" --ntasks-per-node=1 rm -rf \"$S3_NODE_DIR\" 2>/dev/null\n",
            );
        }
        s.push_str(&format!(
            "rm -rf \"$S3_NODE_DIR\"\n# Preempted (75) without a cancel: back in the queue, resuming from the checkpoint.\n\
             if [ \"$hook\" = {} ]; then scontrol requeue \"$SLURM_JOB_ID\"; fi\nexit \"$rc\"\n",
            s3_shards::exit::REQUEUE
        ));
        s
    }

    /// An ingest worker's end: its logs uploaded; if it failed, the attempt marked
    /// failed now (the merge it holds back will never run to record it).
    fn worker_end(&self, hooks: &Hooks, attempt: u32) -> String {
        let out = hooks.out.as_deref().map(|o| format!(" --out {}", shell_quote(o))).unwrap_or_default();
        format!(
            "cp \"$S3_SLURM_OUT\" \"$S3_LOGS/slurm-${{S3_SLURM_OUT#/tmp/s3-orch-}}\" 2>/dev/null\n\
             \"${{ORCH[@]}}\" job upload-logs \"${{HOOK[@]}}\" --attempt {attempt} --from \"$S3_LOGS\"\n\
             if [ \"$rc\" != 0 ]; then\n  \
             \"${{ORCH[@]}}\" job end \"${{HOOK[@]}}\" --job-id \"${{SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}}\" --attempt {attempt} \
             --exit-code \"$rc\" --logs \"the run folder's logs/ (s3-orch logs)\"{out}\nfi\nrm -rf \"$S3_NODE_DIR\"\nexit \"$rc\"\n"
        )
    }

    /// The sbatch script of a training stage or the eval.
    fn train_script(&self, job: &Job, hooks: &Hooks, strict: bool) -> Result<String> {
        let v = &self.settings.values;
        let per_node = self.settings.ranks_per_node()?;
        let r0 = job.ranks.first().ok_or_else(|| OrchError::NoRanks { stage: job.kind.to_string() })?;
        let mut s = self.header(job, &format!("s3-{}-{}", job.run_id, job.kind), "s3-orch-%j.out");
        // The eval is one process on one GPU: a whole training node would sit idle.
        let eval = job.kind.stage().evaluates();
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
            "#SBATCH --requeue\n#SBATCH --signal=USR2@{}\nset -uo pipefail\nS3_SLURM_OUT=\"/tmp/s3-orch-$SLURM_JOB_ID.out\"\n",
            self.settings.grace_seconds()
        ));
        let (carried, mut args, shipped) = self.carried(&r0.args, strict)?;
        s.push_str(&carried);
        // Before the hooks: they reach the store with the same settings as the ranks.
        s.push_str(&self.exports(job));
        s.push_str(&self.hook_args(job, hooks));
        let data = hooks.data.as_deref().map(|d| format!(" --data {}", shell_quote(d))).unwrap_or_default();
        s.push_str(&format!(
            "ATTEMPT=$(\"${{ORCH[@]}}\" job start \"${{HOOK[@]}}\" --job-id \"$SLURM_JOB_ID\" --restart \"${{SLURM_RESTART_COUNT:-0}}\"{data}) || exit 2\n"
        ));
        s.push_str("export S3_LOGS=\"$S3_NODE_DIR/attempt-$ATTEMPT\"\n");
        s.push_str("# Every node's copy of the files and its log folder, made before any rank starts.\n");
        s.push_str(
            "s3_unpack && srun --nodes=\"$SLURM_NNODES\" --ntasks=\"$SLURM_NNODES\" --ntasks-per-node=1 bash -c s3_unpack\n",
        );
        s.push_str("export S3_ATTEMPT=$ATTEMPT\n");
        // The token joins this job's ranks only; it is made here, never written down.
        s.push_str("export S3_JOB_TOKEN=$(od -An -N8 -tx8 /dev/urandom | tr -d ' \\n')\n");
        s.push_str("export MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n1)\n");
        s.push_str("export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))\n");
        let end = |attempt: &str| self.end_lines(hooks, shipped.as_ref(), attempt, true);
        if hooks.gate {
            s.push_str(
                "# Stage 2 starts only from stage 1's final checkpoint as the ledger records it, its hash checked now.\n\
                 if ! GATE=$(\"${ORCH[@]}\" job gate \"${HOOK[@]}\"); then rc=2\n",
            );
            s.push_str(&format!("  {}\n", end("\"$ATTEMPT\"").trim_end().replace('\n', "\n  ")));
            s.push_str("fi\nread -r S3_INIT S3_INIT_XXH3 <<< \"$GATE\"\n");
            args.retain(|a| !a.starts_with("--init"));
        }
        let gpu = r0.args.windows(2).any(|w| w[0] == "--device" && w[1].starts_with("cuda"));
        let mut line = format!(
            "srun --kill-on-bad-exit=1{} --output=\"$S3_LOGS/rank-%t.log\" {}",
            self.pyxis(),
            self.command(&r0.program, &args, gpu)
        );
        if hooks.gate {
            line.push_str(" --init \"$S3_INIT\" --init-xxh3 \"$S3_INIT_XXH3\"");
        }
        s.push_str(&line);
        s.push_str("\nrc=$?\n");
        s.push_str(&end("\"$ATTEMPT\""));
        Ok(s)
    }

    /// The ingest workers as an array job (`--worker $SLURM_ARRAY_TASK_ID/N`), or
    /// the one worker / the merge that records the ingest's end.
    fn ingest_script(&self, job: &Job, strict: bool) -> Result<String> {
        let r0 = job.ranks.first().ok_or_else(|| OrchError::NoRanks { stage: job.kind.to_string() })?;
        let n = job.ranks.len();
        let jobs = self.settings.jobs();
        let mut s = if n > 1 {
            let mut s = self.header(job, &format!("s3-{}-ingest", job.run_id), "s3-orch-%A_%a.out");
            s.push_str(&format!("#SBATCH --array=0-{}%{n}\n", n - 1));
            s
        } else {
            self.header(job, &format!("s3-{}-{}", job.run_id, job.kind), "s3-orch-%j.out")
        };
        s.push_str(&format!("#SBATCH --ntasks=1\n#SBATCH --cpus-per-task={jobs}\nset -uo pipefail\n"));
        s.push_str(if n > 1 {
            "S3_SLURM_OUT=\"/tmp/s3-orch-${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}.out\"\n"
        } else {
            "S3_SLURM_OUT=\"/tmp/s3-orch-$SLURM_JOB_ID.out\"\n"
        });
        let (carried, mut args, shipped) = self.carried(&r0.args, strict)?;
        s.push_str(&carried);
        s.push_str(&self.exports(job));
        s.push_str(&format!("export S3_ATTEMPT={}\n", job.attempt));
        // Each array task is one worker: its share from the task id.
        if let Some(i) = args.iter().position(|a| a == "--worker")
            && i + 1 < args.len()
        {
            args.truncate(i);
        }
        let mut line = self.command(&r0.program, &args, false);
        if n > 1 {
            line.push_str(&format!(" --worker \"$SLURM_ARRAY_TASK_ID/{n}\""));
        }
        let log = if n > 1 { "rank-$SLURM_ARRAY_TASK_ID.log" } else { "rank-0.log" };
        let log = if job.kind == JobKind::IngestMerge { "merge.log" } else { log };
        match &job.hooks {
            None => {
                s.push_str("export S3_LOGS=\"$S3_NODE_DIR/logs\"\ns3_unpack || exit 2\n");
                s.push_str(&format!("exec {line}\n"));
            }
            Some(h) => {
                s.push_str(&self.hook_args(job, h).replace("--stage ingest-merge", "--stage ingest"));
                s.push_str(&format!("export S3_LOGS=\"$S3_NODE_DIR/attempt-{}\"\ns3_unpack || exit 2\n", job.attempt));
                s.push_str(&format!("{line} > \"$S3_LOGS/{log}\" 2>&1\nrc=$?\n"));
                if h.uploads_only {
                    s.push_str(&self.worker_end(h, job.attempt));
                } else {
                    s.push_str(&self.end_lines(h, shipped.as_ref(), &job.attempt.to_string(), false));
                }
            }
        }
        Ok(s)
    }

    /// The watchdog of an ingest attempt: it starts only if a worker or the merge
    /// ends badly (`afternotok`), and marks the attempt failed unless that job
    /// recorded it (a job killed for its memory or time limit runs no hook).
    pub(super) fn watchdog_script(&self, job: &Job, hooks: &Hooks, watched: &[String]) -> String {
        let v = &self.settings.values;
        let partition = v.ingest_partition.as_ref().or(v.partition.as_ref());
        let mut s =
            format!("#!/bin/bash\n#SBATCH --job-name={}\n", shell_quote(&format!("s3-{}-ingest-watch", job.run_id)));
        for (flag, value) in [("partition", partition), ("account", v.account.as_ref()), ("qos", v.qos.as_ref())] {
            if let Some(x) = value {
                s.push_str(&format!("#SBATCH --{flag}={}\n", shell_quote(x)));
            }
        }
        s.push_str("#SBATCH --output=/tmp/s3-orch-%j.out\n#SBATCH --ntasks=1\n#SBATCH --time=10\nset -uo pipefail\n");
        s.push_str(&format!("export S3_NODE_DIR={NODE_DIR}\n"));
        s.push_str(&self.hook_args(job, hooks).replace("--stage ingest-merge", "--stage ingest"));
        let reason = format!(
            "a job of the ingest ended without recording it (killed, out of memory or past its time limit): Slurm jobs {}",
            watched.join(", ")
        );
        s.push_str(&format!(
            "\"${{ORCH[@]}}\" job fail \"${{HOOK[@]}}\" --attempt {} --reason {}\n",
            job.attempt,
            shell_quote(&reason)
        ));
        s
    }

    /// The script of `job`; `strict` refuses local files it cannot read (a submit),
    /// else they are named as they are, with a note (a dry run).
    pub(super) fn script(&self, job: &Job, strict: bool) -> Result<String> {
        match (&job.hooks, job.kind.stage()) {
            (_, Stage::Ingest) => self.ingest_script(job, strict),
            (Some(h), _) => self.train_script(job, h, strict),
            (None, _) => Err(OrchError::NoHooks { stage: job.kind.to_string() }),
        }
    }
}
