//! Launch settings, resolved in one place: flags over environment (`S3_ORCH_<NAME>`)
//! over the cluster profile (`manifests/clusters/<backend>.toml`) over the stage
//! file's `[launch]` table over built-in defaults. Every backend reads the same
//! [`Settings`]; the dry run prints where each value came from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{OrchError, Result};

/// Where a setting's value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag.
    Flag,
    /// Its `S3_ORCH_<NAME>` environment variable.
    Env,
    /// The cluster profile (its file).
    Profile(PathBuf),
    /// The stage file's `[launch]` table (its file).
    Stage(PathBuf),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Flag => write!(f, "flag"),
            Origin::Env => write!(f, "environment"),
            Origin::Profile(p) => write!(f, "profile {}", p.display()),
            Origin::Stage(p) => write!(f, "stage {}", p.display()),
        }
    }
}

/// The environment variable that sets `field` (`ranks` → `S3_ORCH_RANKS`).
pub fn env_var(field: &str) -> String {
    format!("S3_ORCH_{}", field.to_ascii_uppercase())
}

macro_rules! layer {
    ($($(#[doc = $doc:literal])* $field:ident : $ty:ty),* $(,)?) => {
        /// One source of settings (flags, environment, profile or stage file); every
        /// field optional, the first source that sets it wins.
        #[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
        #[serde(deny_unknown_fields)]
        pub struct Layer {
            $($(#[doc = $doc])* #[serde(default, skip_serializing_if = "Option::is_none")] pub $field: Option<$ty>,)*
            /// Extra environment for every rank (e.g. `NCCL_SOCKET_IFNAME`); merged
            /// key by key, a higher source winning.
            #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
            pub env: BTreeMap<String, String>,
        }

        impl Layer {
            /// The settings `S3_ORCH_<NAME>` variables give (`get` reads one).
            pub fn from_env(get: &dyn Fn(&str) -> Option<String>) -> Result<Layer> {
                Ok(Layer {
                    $($field: match get(&env_var(stringify!($field))) {
                        Some(v) if !v.is_empty() => Some(v.parse::<$ty>().map_err(|e| OrchError::Env {
                            var: env_var(stringify!($field)),
                            value: v.clone(),
                            source: Box::new(e),
                        })?),
                        _ => None,
                    },)*
                    env: BTreeMap::new(),
                })
            }

            /// Fields set here, as text.
            fn set(&self) -> Vec<(&'static str, String)> {
                let mut out = Vec::new();
                $(if let Some(v) = &self.$field { out.push((stringify!($field), v.to_string())); })*
                out
            }

            /// `self` with what it leaves unset taken from `lower`.
            fn over(self, lower: Layer) -> Layer {
                let mut env = lower.env;
                env.extend(self.env);
                Layer { $($field: self.$field.or(lower.$field),)* env }
            }
        }
    };
}

layer! {
    /// Total number of ranks.
    ranks: usize,
    /// Nodes (Slurm) or pods (Kubernetes) the ranks spread over.
    nodes: usize,
    /// `--device` of every rank: `cpu`, or `cuda` (one GPU per rank, `cuda:LOCAL_RANK`).
    device: String,
    /// GPUs per node (Slurm `--gpus-per-node`, Kubernetes `nvidia.com/gpu` per pod).
    gpus_per_node: u32,
    /// CPUs per rank.
    cpus_per_rank: u32,
    /// Memory per rank, e.g. `16G`.
    mem_per_rank: String,
    /// Wall-clock limit, e.g. `2-00:00:00` (Slurm) or `48h` (Kubernetes `activeDeadlineSeconds`).
    time_limit: String,
    /// Slurm partition.
    partition: String,
    /// Slurm partition of the eval job (one GPU; default: `partition`).
    eval_partition: String,
    /// Wall-clock limit of the eval job (default: `time_limit`).
    eval_time_limit: String,
    /// Slurm partition of the ingest workers and merge (CPU only; default: `partition`).
    ingest_partition: String,
    /// Wall-clock limit of the ingest jobs (default: `time_limit`).
    ingest_time_limit: String,
    /// Slurm account.
    account: String,
    /// Slurm QoS.
    qos: String,
    /// Container image (Kubernetes; Slurm with `container`).
    image: String,
    /// Kubernetes namespace.
    namespace: String,
    /// Name of the secret holding the object-store credentials (referenced, never read).
    secret: String,
    /// How Slurm ranks run in the image: `none`, `pyxis` or `apptainer`.
    container: String,
    /// What the Slurm container sees of the node: `src:dst[:ro],...` (pyxis
    /// `--container-mounts`, apptainer `--bind`).
    container_mounts: String,
    /// Seconds between the stop signal and the kill: long enough to write a checkpoint.
    grace_seconds: u64,
    /// Attempts the launcher starts by itself after a preempted one (a rank exited 75,
    /// or Kubernetes disrupted a pod), each resuming from the last checkpoint; a real
    /// failure or `s3-orch cancel` is never retried. Backends whose jobs requeue
    /// themselves (Slurm) do not use it.
    max_retries: u32,
    /// Ingest worker processes (each `--worker I/N`, then one merge).
    workers: usize,
    /// Cases each ingest worker processes in parallel.
    jobs: usize,
    /// The `s3-train` program where the ranks run.
    train_bin: String,
    /// The `s3-ingest` program where the workers run.
    ingest_bin: String,
    /// The `s3-orch` program where the jobs run (Slurm jobs record their attempts in
    /// the ledger with it, and stage 2 checks its gate).
    orch_bin: String,
    /// Kubernetes object per stage: `job` (Indexed Job + headless Service) or `jobset`.
    k8s_kind: String,
    /// Folder for the logs when the run folder is not a local directory (Slurm:
    /// a shared filesystem path).
    log_dir: String,
    /// Container image of the Kubernetes ingest and merge pods (default: `image`).
    ingest_image: String,
    /// Kubernetes `nodeSelector` of the pods: `key=value,...`.
    node_selector: String,
    /// Taints the Kubernetes pods tolerate: `key[=value][:effect],...` (`kubectl taint`'s notation).
    tolerations: String,
    /// Gang admission of the Kubernetes pods: `none`, `kueue` or `volcano`.
    k8s_gang: String,
    /// The Kueue LocalQueue (needed with `kueue`) or Volcano queue.
    k8s_queue: String,
    /// Volumes of the Kubernetes pods: `pvc:CLAIM:/mnt[:ro]`, `hostPath:/host:/mnt[:ro]`,
    /// `emptyDir:/mnt[:SIZE]`, comma-separated.
    k8s_volumes: String,
    /// Kubernetes pods on the host's network (the rendezvous port then differs per attempt).
    host_network: bool,
    /// An RDMA device resource per rank container: `DOMAIN/NAME=COUNT`.
    rdma_resource: String,
}

/// The resolved settings, with the origin of every value that is not a default.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// The merged values.
    pub values: Layer,
    /// Where each set value came from.
    pub origins: BTreeMap<&'static str, Origin>,
}

impl Settings {
    /// Merges `layers`, highest first.
    pub fn resolve(layers: Vec<(Origin, Layer)>) -> Settings {
        let mut values = Layer::default();
        let mut origins = BTreeMap::new();
        for (origin, layer) in layers {
            for (name, _) in layer.set() {
                origins.entry(name).or_insert_with(|| origin.clone());
            }
            values = values.over(layer);
        }
        Settings { values, origins }
    }

    /// Total ranks (default 1).
    pub fn ranks(&self) -> usize {
        self.values.ranks.unwrap_or(1).max(1)
    }
    /// Nodes (default 1).
    pub fn nodes(&self) -> usize {
        self.values.nodes.unwrap_or(1).max(1)
    }
    /// Ranks per node; the ranks must spread evenly.
    pub fn ranks_per_node(&self) -> Result<usize> {
        let (r, n) = (self.ranks(), self.nodes());
        if r % n != 0 {
            return Err(OrchError::Shape { ranks: r, over: n, unit: "nodes" });
        }
        Ok(r / n)
    }
    /// Device (default `cpu`).
    pub fn device(&self) -> &str {
        self.values.device.as_deref().unwrap_or("cpu")
    }
    /// Ingest workers (default 1).
    pub fn workers(&self) -> usize {
        self.values.workers.unwrap_or(1).max(1)
    }
    /// Cases per ingest worker at once (default 1).
    pub fn jobs(&self) -> usize {
        self.values.jobs.unwrap_or(1).max(1)
    }
    /// Preempted attempts to follow with another (default 0).
    pub fn max_retries(&self) -> u32 {
        self.values.max_retries.unwrap_or(0)
    }
    /// Grace between the stop signal and the kill (default 300 s).
    pub fn grace_seconds(&self) -> u64 {
        self.values.grace_seconds.unwrap_or(300)
    }

    /// `# settings:` lines for the dry run: each value set and where it came from.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for (name, value) in self.values.set() {
            let origin = match self.origins.get(name) {
                Some(Origin::Env) => format!("${}", env_var(name)),
                Some(o) => o.to_string(),
                None => "default".into(),
            };
            s.push_str(&format!("#   {name} = {value} ({origin})\n"));
        }
        for (k, v) in &self.values.env {
            s.push_str(&format!("#   env {k} = {v}\n"));
        }
        if s.is_empty() { "# settings: all defaults\n".into() } else { format!("# settings:\n{s}") }
    }
}

/// A cluster profile: a [`Layer`] in TOML.
pub fn load_profile(path: &Path) -> Result<Layer> {
    let text =
        std::fs::read_to_string(path).map_err(|source| OrchError::Io { file: path.display().to_string(), source })?;
    toml::from_str(&text)
        .map_err(|source| OrchError::Parse { file: format!("cluster profile {}", path.display()), source })
}

/// The `[launch]` table of a stage file, if it has one.
pub fn stage_layer(path: &Path) -> Result<Layer> {
    let text =
        std::fs::read_to_string(path).map_err(|source| OrchError::Io { file: path.display().to_string(), source })?;
    let v: toml::Table =
        toml::from_str(&text).map_err(|source| OrchError::Parse { file: path.display().to_string(), source })?;
    match v.get("launch") {
        None => Ok(Layer::default()),
        Some(t) => t
            .clone()
            .try_into()
            .map_err(|source| OrchError::Parse { file: format!("{}: [launch]", path.display()), source }),
    }
}

/// `KEY=VALUE`, as `--env` takes it.
pub fn parse_env(s: &str) -> std::result::Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or("expected KEY=VALUE")?;
    if k.is_empty() {
        return Err("empty variable name".into());
    }
    Ok((k.to_string(), v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_environment_beat_profile_beat_stage() {
        let flags = Layer { ranks: Some(8), ..Default::default() };
        let env = Layer::from_env(&|k| match k {
            "S3_ORCH_RANKS" => Some("4".into()),
            "S3_ORCH_PARTITION" => Some("gpu-env".into()),
            _ => None,
        })
        .unwrap();
        let profile: Layer = toml::from_str(
            "ranks = 2\npartition = \"gpu\"\naccount = \"lab\"\ntime_limit = \"1:00:00\"\n[env]\nNCCL_SOCKET_IFNAME = \"ib0\"\nA = \"profile\"\n",
        )
        .unwrap();
        let stage: Layer =
            toml::from_str("time_limit = \"2-00:00:00\"\nnodes = 2\n[env]\nA = \"stage\"\nB = \"stage\"\n").unwrap();
        let s = Settings::resolve(vec![
            (Origin::Flag, flags),
            (Origin::Env, env),
            (Origin::Profile("p.toml".into()), profile),
            (Origin::Stage("s.toml".into()), stage),
        ]);
        assert_eq!(s.ranks(), 8);
        assert_eq!(s.origins["ranks"], Origin::Flag);
        assert_eq!(s.values.partition.as_deref(), Some("gpu-env"));
        assert_eq!(s.values.account.as_deref(), Some("lab"));
        assert_eq!(s.origins["account"], Origin::Profile("p.toml".into()));
        assert_eq!(s.values.time_limit.as_deref(), Some("1:00:00"), "the profile beats the stage file");
        assert_eq!(s.nodes(), 2);
        assert_eq!(s.origins["nodes"], Origin::Stage("s.toml".into()));
        assert_eq!(s.values.env["A"], "profile");
        assert_eq!(s.values.env["B"], "stage");
        assert_eq!(s.values.env["NCCL_SOCKET_IFNAME"], "ib0");
        assert_eq!(s.ranks_per_node().unwrap(), 4);
        assert_eq!(s.device(), "cpu", "the default");
        assert!(s.describe().contains("ranks = 8 (flag)"), "{}", s.describe());
        assert!(s.describe().contains("partition = gpu-env ($S3_ORCH_PARTITION)"), "{}", s.describe());
    }

    #[test]
    fn bad_values_and_unknown_keys_are_named() {
        let e = Layer::from_env(&|k| (k == "S3_ORCH_RANKS").then(|| "two".into())).unwrap_err();
        assert!(e.to_string().contains("S3_ORCH_RANKS=\"two\""), "{e}");
        let e = toml::from_str::<Layer>("rank = 2\n").unwrap_err();
        assert!(e.to_string().contains("rank"), "{e}");
        let s = Settings::resolve(vec![(Origin::Flag, Layer { ranks: Some(3), nodes: Some(2), ..Default::default() })]);
        assert!(s.ranks_per_node().unwrap_err().to_string().contains("3 ranks do not spread evenly over 2 nodes"));
    }

    #[test]
    fn the_shipped_profiles_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/clusters");
        for name in ["local", "slurm", "k8s"] {
            let p = dir.join(format!("{name}.toml"));
            load_profile(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        }
    }
}
