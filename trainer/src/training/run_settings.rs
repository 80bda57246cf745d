//! What an `s3-train train` invocation resolves to, in one place: the stage file with
//! the flags that override it, the launch contract's environment ([`crate::launch_env`])
//! under the flags that override it, and the run's options. Precedence, as for the
//! launcher's settings: flags > environment > stage file > defaults.

use std::path::PathBuf;
use std::time::Duration;

use crate::collective::CollectiveOptions;
use crate::error::{Result, TrainError};
use crate::launch_env::{self, LaunchEnv, LaunchFlags};
use crate::run_spec::RunSpec;
use crate::stage::StageConfig;

/// The flags of `s3-train train` that shape a run (the binary's parser fills it).
#[derive(Clone, Debug, Default)]
pub struct TrainFlags {
    /// The stage file.
    pub stage: PathBuf,
    /// Store with the published shards.
    pub data: String,
    /// The run folder.
    pub run: String,
    /// Start over even if the run has a checkpoint.
    pub no_resume: bool,
    /// Init weights instead of the stage file's.
    pub init: Option<String>,
    /// The xxh3 (16 hex digits) the init file must have.
    pub init_xxh3: Option<String>,
    /// The catalogue instead of the stage file's `datasets.catalog`.
    pub catalog: Option<PathBuf>,
    /// Rank, world and rendezvous instead of the environment's.
    pub launch: LaunchFlags,
    /// Seconds a send or receive between ranks may block (0: no limit).
    pub collective_timeout_s: u64,
    /// Seconds an optimiser step may take before the watchdog ends the process (0: off).
    pub step_timeout_s: u64,
    /// Loader threads.
    pub loader_threads: usize,
    /// How to reach the data and the run folder (the shared store flags).
    pub store_options: s3_shards::StoreOptions,
    /// The node-local shard cache, if any.
    pub shard_cache: Option<crate::shard_cache::CacheSettings>,
    /// `--node-order on|off` (default: on with a shard cache).
    pub node_order: Option<bool>,
}

/// Resolves `flags` and the variables `env` returns into the run's spec and this
/// rank's place in its job (the spec has no preemption flag yet: the caller owns the
/// signals).
pub fn resolve(flags: &TrainFlags, env: &dyn Fn(&str) -> Option<String>) -> Result<(RunSpec, LaunchEnv)> {
    let stage = StageConfig::load(&flags.stage)?.with_flags(flags.init.clone(), flags.catalog.as_deref());
    let launch = launch_env::resolve(&flags.launch, env)?;
    let secs = |s: u64| (s > 0).then(|| Duration::from_secs(s));
    let init_xxh3 = flags
        .init_xxh3
        .as_deref()
        .map(|h| {
            u64::from_str_radix(h, 16).map_err(|_| TrainError::Flag {
                flag: "--init-xxh3",
                value: h.into(),
                expected: "16 hex digits",
            })
        })
        .transpose()?;
    let spec = RunSpec {
        rank: launch.rank,
        world: launch.world,
        master: launch.master.clone(),
        resume: !flags.no_resume,
        collective: CollectiveOptions {
            io_timeout: secs(flags.collective_timeout_s).unwrap_or(Duration::MAX),
            token: launch.job_token.clone(),
            bind: launch.bind.clone(),
            ..Default::default()
        },
        step_timeout: secs(flags.step_timeout_s),
        init_xxh3,
        loader_threads: flags.loader_threads.max(1),
        store_options: flags.store_options.clone(),
        shard_cache: match &flags.shard_cache {
            Some(c) => Some(c.clone()),
            None => stage.data.cache(&stage.name)?,
        },
        nodes: launch.nodes,
        node_order: flags.node_order.or(stage.data.node_order),
        ..RunSpec::new(flags.data.clone(), flags.run.clone(), stage)
    };
    Ok((spec, launch))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn stage_file(dir: &std::path::Path) -> PathBuf {
        let p = dir.join("stage1.toml");
        std::fs::write(&p, "name = \"stage1\"\nepochs = 2\ninit = \"file:///from/the/stage.safetensors\"\n").unwrap();
        p
    }

    #[test]
    fn flags_override_the_environment_which_overrides_the_stage_file() {
        let dir = tempfile::tempdir().unwrap();
        let env: BTreeMap<&str, &str> =
            [("RANK", "1"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "node0"), ("MASTER_PORT", "29500")].into();
        let get = |k: &str| env.get(k).map(|v| v.to_string());
        let flags =
            TrainFlags { stage: stage_file(dir.path()), data: "d".into(), run: "r".into(), ..Default::default() };

        let (spec, launch) = resolve(&flags, &get).unwrap();
        assert_eq!((spec.rank, spec.world, spec.master.as_deref()), (1, 2, Some("node0:29500")), "the environment");
        assert_eq!(spec.stage.init.as_deref(), Some("file:///from/the/stage.safetensors"), "the stage file");
        assert_eq!((launch.rank, spec.resume, spec.step_timeout, spec.loader_threads), (1, true, None, 1), "defaults");
        assert_eq!(spec.collective.io_timeout, Duration::MAX);

        let flags = TrainFlags {
            init: Some("s3://b/w.safetensors".into()),
            init_xxh3: Some("00000000000000ff".into()),
            launch: LaunchFlags { rank: Some(0), world: Some(2), master: Some("127.0.0.1:1".into()) },
            no_resume: true,
            collective_timeout_s: 5,
            step_timeout_s: 7,
            ..flags
        };
        let (spec, _) = resolve(&flags, &get).unwrap();
        assert_eq!((spec.rank, spec.master.as_deref()), (0, Some("127.0.0.1:1")), "the flags win");
        assert_eq!(spec.stage.init.as_deref(), Some("s3://b/w.safetensors"));
        assert_eq!((spec.init_xxh3, spec.resume), (Some(0xff), false));
        assert_eq!(
            (spec.collective.io_timeout, spec.step_timeout),
            (Duration::from_secs(5), Some(Duration::from_secs(7)))
        );
    }

    #[test]
    fn a_bad_flag_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let flags = TrainFlags { stage: stage_file(dir.path()), init_xxh3: Some("xyz".into()), ..Default::default() };
        let e = resolve(&flags, &|_| None).unwrap_err().to_string();
        assert!(e.contains("--init-xxh3") && e.contains("xyz"), "{e}");
    }

    #[test]
    fn the_cache_and_the_node_order_come_from_flags_else_the_stage_files_data_table() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.toml");
        std::fs::write(
            &file,
            "name = \"s\"\nepochs = 1\n[data]\ncache_dir = \"/nvme/c\"\ncache_limit = \"1G\"\nnode_order = false\n",
        )
        .unwrap();
        let env = |k: &str| (k == "S3_NODES").then(|| "2".to_string()).or((k == "RANK").then(|| "0".into()));
        let env = |k: &str| env(k).or((k == "WORLD_SIZE").then(|| "4".into()));
        let flags = TrainFlags { stage: file.clone(), ..Default::default() };
        let (spec, _) = resolve(&flags, &env).unwrap();
        let cache = spec.shard_cache.clone().unwrap();
        assert_eq!((cache.dir.to_str(), cache.limit), (Some("/nvme/c"), 1 << 30));
        assert_eq!((spec.nodes, spec.node_order, spec.order_nodes()), (2, Some(false), 1), "the file turned it off");
        let flags = TrainFlags {
            stage: file,
            shard_cache: Some(crate::shard_cache::CacheSettings { dir: "/flag".into(), limit: 5 }),
            node_order: Some(true),
            ..Default::default()
        };
        let (spec, _) = resolve(&flags, &env).unwrap();
        assert_eq!(spec.shard_cache.as_ref().map(|c| c.limit), Some(5));
        assert_eq!(spec.order_nodes(), 2, "the flag turned it on: 4 ranks on 2 nodes");
    }
}
