//! The local backend: every rank a process on this machine, its output in
//! `rank-R.log` under the attempt's log folder; the first rank that fails takes the
//! others down (a group with a missing rank would only wait for it).

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use crate::backend::{Backend, JobEnd, Submission, shell_quote};
use crate::error::{OrchError, Result};
use crate::plan::Job;
use crate::settings::Settings;

/// Rank processes on this machine.
#[derive(Default)]
pub struct Local {
    children: Mutex<HashMap<String, Child>>,
}

impl Local {
    /// The local backend; it has one node.
    pub fn new(settings: &Settings) -> Result<Local> {
        if settings.nodes() > 1 {
            return Err(OrchError::LocalNodes { nodes: settings.nodes() });
        }
        Ok(Local::default())
    }
}

/// Starts one rank with its output in `rank-R.log`.
fn spawn_rank(job: &Job, r: &crate::plan::RankCommand) -> Result<Child> {
    let log_path = job.log_dir.join(format!("rank-{}.log", r.rank));
    let io = |source| OrchError::Io { file: log_path.display().to_string(), source };
    let log = std::fs::File::create(&log_path).map_err(io)?;
    let err = log.try_clone().map_err(io)?;
    Command::new(&r.program)
        .args(&r.args)
        .envs(r.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .map_err(|source| OrchError::Process { what: format!("starting {}", r.program.display()), source })
}

/// Whether a failed rank's log ends with a collective error: it lost a peer, and
/// the peer is the one to blame.
fn lost_a_peer(job: &Job, rank: usize) -> bool {
    let log = std::fs::read_to_string(job.log_dir.join(format!("rank-{rank}.log"))).unwrap_or_default();
    let tail: String = log.lines().rev().take(5).collect::<Vec<_>>().join("\n");
    tail.contains("collective:")
}

/// Whether process `pid` lives and is one of ours (an `s3-*` program): a pid the
/// system reused for another process is neither polled as a rank nor signalled.
fn ours(pid: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| {
        let argv0 = cmd.split(|b| *b == 0).next().unwrap_or_default();
        let name = argv0.rsplit(|b| *b == b'/').next().unwrap_or_default();
        name.starts_with(b"s3-")
    })
}

impl Backend for Local {
    fn name(&self) -> &'static str {
        "local"
    }

    fn render(&self, job: &Job) -> String {
        let mut out = format!("# {} attempt {}: {} local process(es)\n", job.kind, job.attempt, job.ranks.len());
        for r in &job.ranks {
            let env: Vec<String> = r.env.iter().map(|(k, v)| format!("{k}={}", shell_quote(v))).collect();
            let args: Vec<String> = r.args.iter().map(|a| shell_quote(a)).collect();
            let log = job.log_dir.join(format!("rank-{}.log", r.rank));
            out.push_str(&format!(
                "{} {} {} > {} 2>&1 &\n",
                env.join(" "),
                shell_quote(&r.program.display().to_string()),
                args.join(" "),
                shell_quote(&log.display().to_string())
            ));
        }
        out
    }

    fn submit(&self, job: &Job) -> Result<Submission> {
        std::fs::create_dir_all(&job.log_dir)
            .map_err(|source| OrchError::Io { file: job.log_dir.display().to_string(), source })?;
        let mut ids = Vec::new();
        let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        for r in &job.ranks {
            match spawn_rank(job, r) {
                Ok(child) => {
                    ids.push(child.id().to_string());
                    children.insert(child.id().to_string(), child);
                }
                Err(e) => {
                    // A group with a missing rank would wait for it: stop the started ones.
                    for id in &ids {
                        if let Some(mut c) = children.remove(id) {
                            let _ = c.kill();
                            let _ = c.wait();
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(Submission { ids })
    }

    fn wait(&self, job: &Job, submission: &Submission) -> Result<JobEnd> {
        let mut codes: Vec<Option<Option<i32>>> = vec![None; submission.ids.len()];
        let mut failed_rank = None;
        loop {
            {
                let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
                let mut failed_now: Vec<(usize, Option<i32>)> = Vec::new();
                for (rank, id) in submission.ids.iter().enumerate() {
                    if codes[rank].is_some() {
                        continue;
                    }
                    let Some(child) = children.get_mut(id) else {
                        codes[rank] = Some(None);
                        continue;
                    };
                    match child.try_wait() {
                        Ok(Some(status)) => {
                            codes[rank] = Some(status.code());
                            children.remove(id);
                            if s3_shards::exit::is_failure(status.code()) {
                                failed_now.push((rank, status.code()));
                            }
                        }
                        Ok(None) => {}
                        Err(source) => {
                            for c in children.values_mut() {
                                let _ = c.kill();
                                let _ = c.wait();
                            }
                            children.clear();
                            return Err(OrchError::Process { what: format!("waiting for rank {rank}"), source });
                        }
                    }
                }
                // When one rank dies its peers fail right after it (their all-reduce
                // loses the peer): blame a rank killed by a signal, then one whose log
                // does not end with a collective error, then the lowest.
                if failed_rank.is_none() {
                    failed_rank = failed_now
                        .iter()
                        .find(|(_, c)| c.is_none())
                        .or_else(|| failed_now.iter().find(|(r, _)| !lost_a_peer(job, *r)))
                        .or(failed_now.first())
                        .map(|(r, _)| *r);
                }
                if failed_rank.is_some() {
                    // The first failure ends the attempt: the other ranks would block in
                    // the all-reduce until their timeout.
                    for (rank, id) in submission.ids.iter().enumerate() {
                        if let Some(mut c) = children.remove(id) {
                            let _ = c.kill();
                            codes[rank] = Some(c.wait().ok().and_then(|s| s.code()));
                        }
                    }
                }
            }
            if codes.iter().all(Option::is_some) {
                return Ok(JobEnd {
                    exit_codes: codes.into_iter().map(Option::unwrap_or_default).collect(),
                    failed_rank,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn cancel(&self, submission: &Submission) -> Result<()> {
        for id in submission.ids.iter().filter(|id| ours(id)) {
            // SIGTERM first: a rank checkpoints and exits 75 (DESIGN §10).
            let _ = Command::new("kill").args(["-TERM", id]).status();
        }
        Ok(())
    }

    fn is_running(&self, submission: &Submission) -> bool {
        submission.ids.iter().any(|id| ours(id))
    }
}
