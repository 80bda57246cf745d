//! A [`Job`]'s per-rank processes → the one container every pod of an Indexed Job
//! runs: the pod learns its share from its completion index instead of from a
//! per-rank environment (DESIGN §10).
//!
//! - A collective job (its ranks have `RANK`): `job.nodes` pods of R ranks. The rank
//!   variables go; `JOB_COMPLETION_INDEX`, `S3_RANKS_PER_POD`, `MASTER_ADDR` (rank 0's
//!   pod) and `MASTER_PORT` come in, and `--world N` on the command line. With R > 1
//!   the pod runs `ranks.sh`, which starts LOCAL_RANK = 0..R-1.
//! - Anything else: one pod per process; ingest workers differ only in `--worker I/N`,
//!   which becomes `--worker $(JOB_COMPLETION_INDEX)/N` (Kubernetes expands it).
//!
//! Kubernetes also expands `$(NAME)` in every other command argument and env value,
//! so literal text has its `$` doubled.

use serde_json::{Value, json};

use crate::error::{OrchError, Result};
use crate::plan::Job;

/// Where rank 0 listens in its pod; pods have their own network namespace, so one
/// fixed port serves every job.
pub const MASTER_PORT: u16 = 29500;

/// The container's name (the pod failure policy and `kubectl logs` name it).
pub const CONTAINER: &str = "rank";

/// The variable holding the job token; its value goes into a Secret, not the pod spec.
pub const TOKEN_VAR: &str = "S3_JOB_TOKEN";

const RANK_VARS: &[&str] = &["RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "S3_NODES"];

/// The per-pod rank starter (bash 5.1 or newer in the image).
pub const RANKS_SH: &str = include_str!("ranks.sh");

/// What every pod of the job runs.
#[derive(Clone, Debug)]
pub struct PodCommand {
    /// Pods (the Job's completions and parallelism).
    pub pods: usize,
    /// Ranks each pod runs.
    pub ranks_per_pod: usize,
    /// Whether the ranks meet at a rendezvous (they need the headless Service).
    pub collective: bool,
    /// Whether the ranks use GPUs (`--device cuda...`).
    pub cuda: bool,
    /// `command`, escaped for Kubernetes.
    pub command: Vec<String>,
    /// `args`, escaped for Kubernetes.
    pub args: Vec<String>,
    /// `env` entries.
    pub env: Vec<Value>,
    /// The job token, if the ranks have one (it goes into a Secret).
    pub token: Option<String>,
}

/// Text Kubernetes passes through unchanged (`$(X)` would be expanded, `$$` is `$`).
pub fn literal(s: &str) -> String {
    s.replace('$', "$$")
}

fn differ(job: &Job, differ: &'static str) -> OrchError {
    OrchError::PodTemplate { stage: job.kind.to_string(), attempt: job.attempt, differ }
}

/// The container of `job`'s pods; `(master_addr, master_port)` is rank 0's pod as the
/// others reach it (the port is the attempt's own on the host's network).
pub fn pod_command(job: &Job, (master_addr, master_port): (&str, u16), secret_name: &str) -> Result<PodCommand> {
    let first = job.ranks.first().ok_or_else(|| OrchError::NoRanks { stage: job.kind.to_string() })?;
    let collective = first.env.iter().any(|(k, _)| k == "RANK");
    let world = job.ranks.len();
    let (pods, ranks_per_pod) = if collective {
        let pods = job.nodes.max(1);
        if !world.is_multiple_of(pods) {
            return Err(OrchError::Shape { ranks: world, over: pods, unit: "pods" });
        }
        (pods, world / pods)
    } else {
        (world, 1)
    };
    let shared_env = |r: &crate::plan::RankCommand| -> Vec<(String, String)> {
        r.env.iter().filter(|(k, _)| !(collective && RANK_VARS.contains(&k.as_str()))).cloned().collect()
    };
    let worker_at = first.args.iter().position(|a| a == "--worker").map(|i| i + 1);
    for (i, r) in job.ranks.iter().enumerate() {
        if r.program != first.program {
            return Err(differ(job, "their program"));
        }
        if shared_env(r) != shared_env(first) {
            return Err(differ(job, "their environment"));
        }
        let mut want = first.args.clone();
        if let (false, Some(at)) = (collective, worker_at)
            && let Some(w) = want.get_mut(at)
        {
            *w = format!("{i}/{world}");
        }
        if r.args != want {
            return Err(differ(job, "their arguments (beyond the completion index)"));
        }
    }

    let mut args: Vec<String> = first.args.iter().map(|a| literal(a)).collect();
    if collective {
        args.extend(["--world".to_string(), world.to_string()]);
    } else if let (Some(at), true) = (worker_at, world > 1) {
        args[at] = format!("$(JOB_COMPLETION_INDEX)/{world}");
    }
    let program = literal(&first.program.display().to_string());
    let command = if ranks_per_pod > 1 {
        // `bash -c SCRIPT NAME PROGRAM ARGS...`: the script runs "$@" once per rank.
        args.insert(0, program);
        vec!["bash".into(), "-c".into(), literal(RANKS_SH), "s3-ranks".into()]
    } else {
        vec![program]
    };

    // Kubernetes sets JOB_COMPLETION_INDEX itself since 1.22 (and leaves a variable
    // the template defines alone); the downward API gives it on any cluster.
    let mut env = vec![json!({
        "name": "JOB_COMPLETION_INDEX",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}},
    })];
    if collective {
        env.push(json!({"name": "S3_RANKS_PER_POD", "value": ranks_per_pod.to_string()}));
        if ranks_per_pod == 1 {
            env.push(json!({"name": "LOCAL_RANK", "value": "0"}));
        }
        env.push(json!({"name": "MASTER_ADDR", "value": literal(master_addr)}));
        env.push(json!({"name": "MASTER_PORT", "value": master_port.to_string()}));
    }
    let mut token = None;
    for (k, v) in shared_env(first) {
        if k == TOKEN_VAR {
            token = Some(v);
            env.push(json!({"name": k, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": TOKEN_VAR}}}));
        } else {
            env.push(json!({"name": k, "value": literal(&v)}));
        }
    }
    let cuda = first.args.windows(2).any(|w| w[0] == "--device" && w[1].starts_with("cuda"));
    Ok(PodCommand { pods, ranks_per_pod, collective, cuda, command, args, env, token })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::plan::{IngestPlan, TrainPlan, ingest_job, train_job};

    fn train(ranks: usize, nodes: usize) -> Job {
        let plan = TrainPlan {
            train_bin: "s3-train".into(),
            stage_file: "stages/stage1.toml".into(),
            data: "s3://b/data".into(),
            run_dir: "s3://b/runs/r/stage1".into(),
            init: None,
            catalog: None,
            ranks,
            nodes,
            device: "cuda".into(),
            env: [("PRICE".to_string(), "$(HOME)5$".to_string())].into(),
        };
        train_job(&plan, "r", crate::stage::Stage::Stage1, 1, 0, Some("t0k"), PathBuf::from("logs"))
    }

    fn value<'a>(p: &'a PodCommand, name: &str) -> &'a Value {
        p.env.iter().find(|e| e["name"] == name).unwrap_or_else(|| panic!("{name} in {:?}", p.env))
    }

    #[test]
    fn a_collective_job_reads_its_rank_from_the_completion_index() {
        let p = pod_command(&train(8, 2), ("m-0.m", MASTER_PORT), "m-token").unwrap();
        assert_eq!((p.pods, p.ranks_per_pod, p.collective, p.cuda), (2, 4, true, true));
        assert_eq!(p.command[..2], ["bash", "-c"]);
        assert_eq!(p.args[0], "s3-train");
        assert_eq!(p.args[p.args.len() - 2..], ["--world", "8"]);
        for gone in ["RANK", "WORLD_SIZE", "LOCAL_RANK"] {
            assert!(p.env.iter().all(|e| e["name"] != gone), "{gone}");
        }
        assert_eq!(value(&p, "S3_RANKS_PER_POD")["value"], "4");
        assert_eq!(value(&p, "MASTER_ADDR")["value"], "m-0.m");
        assert_eq!(value(&p, "MASTER_PORT")["value"], "29500");
        assert_eq!(value(&p, "S3_JOB_TOKEN")["valueFrom"]["secretKeyRef"]["name"], "m-token");
        assert_eq!(p.token.as_deref(), Some("t0k"));
        assert_eq!(value(&p, "PRICE")["value"], "$$(HOME)5$$", "literal text is not expanded");

        let p = pod_command(&train(2, 2), ("m-0.m", MASTER_PORT), "m-token").unwrap();
        assert_eq!(p.command, ["s3-train"]);
        assert_eq!(value(&p, "LOCAL_RANK")["value"], "0");
    }

    #[test]
    fn ingest_workers_take_their_share_from_the_index() {
        let plan = IngestPlan {
            ingest_bin: "s3-ingest".into(),
            manifest: "raw/datasets.toml".into(),
            out: "s3://b/store".into(),
            workers: 3,
            jobs: 2,
            extra_args: vec![],
            env: Default::default(),
        };
        let p = pod_command(&ingest_job(&plan, "r", 1, "logs".into()), ("", MASTER_PORT), "t").unwrap();
        assert_eq!((p.pods, p.ranks_per_pod, p.collective, p.cuda, p.token.clone()), (3, 1, false, false, None));
        let at = p.args.iter().position(|a| a == "--worker").unwrap();
        assert_eq!(p.args[at + 1], "$(JOB_COMPLETION_INDEX)/3");
        assert!(p.env.iter().all(|e| e["name"] != "MASTER_ADDR"));
    }

    #[test]
    fn ranks_that_differ_otherwise_are_refused() {
        let mut job = train(2, 2);
        job.ranks[1].args.push("--extra".into());
        assert!(pod_command(&job, ("m", MASTER_PORT), "t").unwrap_err().to_string().contains("arguments"));
        let mut job = train(2, 2);
        job.ranks[1].env.push(("X".into(), "1".into()));
        assert!(pod_command(&job, ("m", MASTER_PORT), "t").unwrap_err().to_string().contains("environment"));
        assert!(pod_command(&train(3, 2), ("m", MASTER_PORT), "t").unwrap_err().to_string().contains("evenly"));
    }
}
