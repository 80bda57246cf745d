//! The launch contract (DESIGN §10) as a trainer rank reads it: the one place that
//! knows the launchers' environment variables.
//!
//! | what | first found wins |
//! |---|---|
//! | rank, world | `--rank`/`--world` · `RANK`, `WORLD_SIZE` (torchrun) · `SLURM_PROCID`, `SLURM_NTASKS` · `JOB_COMPLETION_INDEX` × `S3_RANKS_PER_POD` (default 1) + local rank, with `--world` |
//! | local rank (the GPU) | `LOCAL_RANK` · `SLURM_LOCALID` · 0 |
//! | nodes (for the node-aware sample order) | `S3_NODES` · `SLURM_JOB_NUM_NODES`/`SLURM_NNODES` with Slurm's rank · world ÷ `LOCAL_WORLD_SIZE` (torchrun) · world ÷ `S3_RANKS_PER_POD` · 1 |
//! | rendezvous | `--master HOST:PORT` · `MASTER_ADDR` + `MASTER_PORT` (what the others dial; rank 0 listens on every interface, or `S3_BIND_ADDR`) |
//! | join token | `S3_JOB_TOKEN` (every rank of a job gets the same one from its launcher) |
//! | job identity | `S3_RUN_ID`, `S3_STAGE`, `S3_ATTEMPT` (logged) |
//!
//! A value that does not parse, a rank outside the world, or half of a pair is an
//! error: a launcher that set something wrong must not start a rank that trains the
//! wrong share or waits forever for peers that will never come.

use crate::error::{Result, TrainError};

/// What the command line said (each overrides the environment).
#[derive(Clone, Debug, Default)]
pub struct LaunchFlags {
    /// `--rank`.
    pub rank: Option<usize>,
    /// `--world`.
    pub world: Option<usize>,
    /// `--master`.
    pub master: Option<String>,
}

impl LaunchEnv {
    /// Logs where this rank stands in its job.
    pub fn log(&self) {
        tracing::info!(
            rank = self.rank,
            world = self.world,
            local_rank = self.local_rank,
            nodes = self.nodes,
            from = self.source,
            run_id = self.run_id.as_deref().unwrap_or("-"),
            attempt = self.attempt.unwrap_or(0),
            "launch"
        );
    }
}

/// A rank's place in its job, resolved and checked.
#[derive(Clone, PartialEq, Eq)]
pub struct LaunchEnv {
    /// This rank, below `world`.
    pub rank: usize,
    /// Number of ranks, at least 1.
    pub world: usize,
    /// Rank on this node: the GPU index.
    pub local_rank: usize,
    /// Nodes of the job (ranks `k·world/nodes ..` on node `k`, the launchers' block
    /// layout), at least 1 and at most `world`.
    pub nodes: usize,
    /// Rendezvous `host:port` of the collective (what the other ranks dial).
    pub master: Option<String>,
    /// `S3_BIND_ADDR`: where rank 0 listens instead of every interface.
    pub bind: Option<String>,
    /// Shared secret of the job's ranks; a peer without it cannot join the collective.
    pub job_token: Option<String>,
    /// `S3_RUN_ID`, `S3_STAGE`, `S3_ATTEMPT`, for the logs.
    pub run_id: Option<String>,
    /// Stage name given by the launcher.
    pub stage: Option<String>,
    /// Attempt number given by the launcher.
    pub attempt: Option<u32>,
    /// Where rank and world came from (for the log line).
    pub source: &'static str,
}

impl std::fmt::Debug for LaunchEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaunchEnv")
            .field("rank", &self.rank)
            .field("world", &self.world)
            .field("local_rank", &self.local_rank)
            .field("nodes", &self.nodes)
            .field("master", &self.master)
            .field("bind", &self.bind)
            .field("job_token", &self.job_token.as_ref().map(|_| "<set>"))
            .field("run_id", &self.run_id)
            .field("stage", &self.stage)
            .field("attempt", &self.attempt)
            .field("source", &self.source)
            .finish()
    }
}

fn bad(m: impl Into<String>) -> TrainError {
    TrainError::Launch(m.into())
}

/// Resolves the launch contract from the process environment.
pub fn from_env(flags: &LaunchFlags) -> Result<LaunchEnv> {
    resolve(flags, &|k| std::env::var(k).ok())
}

/// Resolves the launch contract from `flags` and the variables `env` returns.
pub fn resolve(flags: &LaunchFlags, env: &dyn Fn(&str) -> Option<String>) -> Result<LaunchEnv> {
    let var = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    let num = |k: &str| -> Result<Option<usize>> {
        var(k)
            .map(|v| v.trim().parse::<usize>().map_err(|_| bad(format!("{k}={v:?} is not a non-negative integer"))))
            .transpose()
    };
    let pair = |r: &str, w: &str| -> Result<Option<(usize, usize)>> {
        match (num(r)?, num(w)?) {
            (Some(a), Some(b)) => Ok(Some((a, b))),
            (None, None) => Ok(None),
            (Some(_), None) => Err(bad(format!("{r} is set but {w} is not"))),
            (None, Some(_)) => Err(bad(format!("{w} is set but {r} is not"))),
        }
    };
    let local_rank = match num("LOCAL_RANK")? {
        Some(v) => v,
        None => num("SLURM_LOCALID")?.unwrap_or(0),
    };
    let (mut rank, mut world, mut source) = (None, None, "default (one rank)");
    if let Some((r, w)) = pair("RANK", "WORLD_SIZE")? {
        (rank, world, source) = (Some(r), Some(w), "RANK/WORLD_SIZE");
    } else if let Some((r, w)) = pair("SLURM_PROCID", "SLURM_NTASKS")? {
        (rank, world, source) = (Some(r), Some(w), "SLURM_PROCID/SLURM_NTASKS");
    } else if let Some(index) = num("JOB_COMPLETION_INDEX")? {
        let per_pod = num("S3_RANKS_PER_POD")?.unwrap_or(1);
        if per_pod == 0 {
            return Err(bad("S3_RANKS_PER_POD=0: a pod runs at least one rank"));
        }
        if flags.world.is_none() {
            return Err(bad("JOB_COMPLETION_INDEX is set but the world size is not: pass --world N"));
        }
        if local_rank >= per_pod {
            return Err(bad(format!("LOCAL_RANK {local_rank} is not below S3_RANKS_PER_POD {per_pod}")));
        }
        let r = index.checked_mul(per_pod).and_then(|x| x.checked_add(local_rank));
        rank = Some(r.ok_or_else(|| bad("JOB_COMPLETION_INDEX × S3_RANKS_PER_POD overflows"))?);
        source = "JOB_COMPLETION_INDEX";
    }
    if flags.rank.is_some() || flags.world.is_some() {
        source = if source.starts_with("default") { "command line" } else { source };
    }
    let rank = flags.rank.or(rank).unwrap_or(0);
    let world = flags.world.or(world).unwrap_or(1);
    if world == 0 {
        return Err(bad("the world size is 0: a job has at least one rank"));
    }
    if rank >= world {
        return Err(bad(format!("rank {rank} is not below the world size {world} (from {source})")));
    }
    let per_node = |k: &str, ranks: Option<usize>| -> Result<Option<usize>> {
        match ranks {
            Some(0) => Err(bad(format!("{k}=0: a node runs at least one rank"))),
            Some(r) => Ok(Some(world.div_ceil(r))),
            None => Ok(None),
        }
    };
    let nodes = match num("S3_NODES")? {
        Some(n) => Some(n),
        None if source.starts_with("SLURM") => match num("SLURM_JOB_NUM_NODES")? {
            Some(n) => Some(n),
            None => num("SLURM_NNODES")?,
        },
        None if source == "JOB_COMPLETION_INDEX" => per_node("S3_RANKS_PER_POD", num("S3_RANKS_PER_POD")?)?,
        None => per_node("LOCAL_WORLD_SIZE", num("LOCAL_WORLD_SIZE")?)?,
    }
    .unwrap_or(1);
    if nodes == 0 || nodes > world {
        return Err(bad(format!("{nodes} nodes for a world of {world} ranks: a node runs at least one rank")));
    }
    let master = match &flags.master {
        Some(m) => Some(check_addr(m, "--master")?),
        None => match (var("MASTER_ADDR"), var("MASTER_PORT")) {
            (Some(a), Some(p)) => {
                p.trim().parse::<u16>().map_err(|_| bad(format!("MASTER_PORT={p:?} is not a port number")))?;
                Some(format!("{}:{}", a.trim(), p.trim()))
            }
            (None, None) => None,
            (Some(_), None) => return Err(bad("MASTER_ADDR is set but MASTER_PORT is not")),
            (None, Some(_)) => return Err(bad("MASTER_PORT is set but MASTER_ADDR is not")),
        },
    };
    let attempt = var("S3_ATTEMPT")
        .map(|v| v.trim().parse::<u32>().map_err(|_| bad(format!("S3_ATTEMPT={v:?} is not a number"))))
        .transpose()?;
    Ok(LaunchEnv {
        rank,
        world,
        local_rank,
        nodes,
        master,
        bind: var("S3_BIND_ADDR"),
        job_token: var("S3_JOB_TOKEN"),
        run_id: var("S3_RUN_ID"),
        stage: var("S3_STAGE"),
        attempt,
        source,
    })
}

fn check_addr(a: &str, what: &str) -> Result<String> {
    match a.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(a.to_string()),
        _ => Err(bad(format!("{what} {a:?} is not HOST:PORT"))),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn with(vars: &[(&str, &str)], flags: LaunchFlags) -> Result<LaunchEnv> {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        resolve(&flags, &|k| m.get(k).cloned())
    }

    #[test]
    fn torchrun_names_win_over_slurm_and_flags_win_over_both() {
        let vars = [("RANK", "3"), ("WORLD_SIZE", "4"), ("SLURM_PROCID", "1"), ("SLURM_NTASKS", "2")];
        let e = with(&vars, LaunchFlags::default()).unwrap();
        assert_eq!((e.rank, e.world, e.source), (3, 4, "RANK/WORLD_SIZE"));
        let e = with(&vars[2..], LaunchFlags::default()).unwrap();
        assert_eq!((e.rank, e.world), (1, 2));
        let e = with(&vars, LaunchFlags { rank: Some(0), ..Default::default() }).unwrap();
        assert_eq!((e.rank, e.world), (0, 4));
        let e = with(&[], LaunchFlags::default()).unwrap();
        assert_eq!((e.rank, e.world, e.local_rank, e.master.clone()), (0, 1, 0, None));
    }

    #[test]
    fn indexed_jobs_take_the_world_from_the_command_line() {
        let vars = [("JOB_COMPLETION_INDEX", "2"), ("S3_RANKS_PER_POD", "4"), ("LOCAL_RANK", "1")];
        let e = with(&vars, LaunchFlags { world: Some(16), ..Default::default() }).unwrap();
        assert_eq!((e.rank, e.world, e.local_rank), (9, 16, 1));
        let err = with(&vars, LaunchFlags::default()).unwrap_err().to_string();
        assert!(err.contains("--world"), "{err}");
    }

    #[test]
    fn the_node_count_comes_from_each_launcher() {
        let nodes = |vars: &[(&str, &str)], world: Option<usize>| {
            with(vars, LaunchFlags { world, ..Default::default() }).map(|e| e.nodes)
        };
        assert_eq!(nodes(&[("RANK", "0"), ("WORLD_SIZE", "8"), ("LOCAL_WORLD_SIZE", "4")], None).unwrap(), 2);
        let slurm = [("SLURM_PROCID", "5"), ("SLURM_NTASKS", "8"), ("SLURM_NNODES", "4")];
        assert_eq!(nodes(&slurm, None).unwrap(), 4);
        let pod = [("JOB_COMPLETION_INDEX", "1"), ("S3_RANKS_PER_POD", "2")];
        assert_eq!(nodes(&pod, Some(6)).unwrap(), 3);
        assert_eq!(
            nodes(&[("RANK", "0"), ("WORLD_SIZE", "4"), ("S3_NODES", "2"), ("LOCAL_WORLD_SIZE", "1")], None).unwrap(),
            2,
            "S3_NODES first"
        );
        assert_eq!(
            nodes(&[("RANK", "0"), ("WORLD_SIZE", "4"), ("SLURM_NNODES", "4")], None).unwrap(),
            1,
            "Slurm's count only with Slurm's rank"
        );
        assert_eq!(nodes(&[], None).unwrap(), 1);
        let e = nodes(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("S3_NODES", "3")], None).unwrap_err().to_string();
        assert!(e.contains("3 nodes for a world of 2"), "{e}");
    }

    #[test]
    fn bad_values_are_errors_not_defaults() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("RANK", "one"), ("WORLD_SIZE", "2")], "RANK=\"one\""),
            (&[("RANK", "2"), ("WORLD_SIZE", "2")], "rank 2 is not below the world size 2"),
            (&[("RANK", "0"), ("WORLD_SIZE", "0")], "world size is 0"),
            (&[("RANK", "1")], "WORLD_SIZE is not"),
            (&[("SLURM_NTASKS", "2")], "SLURM_PROCID is not"),
            (&[("LOCAL_RANK", "-1")], "LOCAL_RANK"),
            (&[("MASTER_ADDR", "10.0.0.1")], "MASTER_PORT is not"),
            (&[("MASTER_ADDR", "h"), ("MASTER_PORT", "99999")], "not a port"),
            (&[("S3_ATTEMPT", "x")], "S3_ATTEMPT"),
        ];
        for (vars, want) in cases {
            let e = with(vars, LaunchFlags::default()).unwrap_err().to_string();
            assert!(e.contains(want), "{vars:?}: {e}");
        }
        let e = with(&[], LaunchFlags { master: Some("nohost".into()), ..Default::default() }).unwrap_err();
        assert!(e.to_string().contains("HOST:PORT"), "{e}");
    }

    #[test]
    fn rendezvous_and_identity_come_from_the_launcher() {
        let vars = [("MASTER_ADDR", "node1"), ("MASTER_PORT", "29500"), ("S3_JOB_TOKEN", "t0k"), ("S3_ATTEMPT", "2")];
        let e = with(&vars, LaunchFlags::default()).unwrap();
        assert_eq!(e.master.as_deref(), Some("node1:29500"));
        assert_eq!(e.job_token.as_deref(), Some("t0k"));
        assert_eq!(e.attempt, Some(2));
        assert!(!format!("{e:?}").contains("t0k"), "the token is never printed");
    }
}
