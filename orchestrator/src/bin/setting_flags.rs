//! The setting flags `launch` and `demo` share: the top layer of the settings.

use s3_orch::settings::Layer;

/// Settings a flag may give; each also comes from `S3_ORCH_<NAME>`, the cluster
/// profile or the stage file's `[launch]` table, in that order.
#[derive(clap::Args)]
#[command(next_help_heading = "Settings (flag > $S3_ORCH_<NAME> > cluster profile > stage [launch] > default)")]
pub struct SettingFlags {
    /// Total number of ranks [default: 1].
    #[arg(long)]
    ranks: Option<usize>,
    /// Nodes (pods) the ranks spread over, evenly [default: 1].
    #[arg(long)]
    nodes: Option<usize>,
    /// `--device` of every rank: cpu, or cuda (rank's GPU = LOCAL_RANK) [default: cpu].
    #[arg(long)]
    device: Option<String>,
    /// GPUs per node.
    #[arg(long)]
    gpus_per_node: Option<u32>,
    /// CPUs per rank.
    #[arg(long)]
    cpus_per_rank: Option<u32>,
    /// Memory per rank (e.g. 64G).
    #[arg(long)]
    mem_per_rank: Option<String>,
    /// Wall-clock limit.
    #[arg(long)]
    time_limit: Option<String>,
    /// Slurm partition.
    #[arg(long)]
    partition: Option<String>,
    /// Slurm account.
    #[arg(long)]
    account: Option<String>,
    /// Slurm QoS.
    #[arg(long)]
    qos: Option<String>,
    /// Container image.
    #[arg(long)]
    image: Option<String>,
    /// Kubernetes namespace.
    #[arg(long)]
    namespace: Option<String>,
    /// Secret holding the object-store credentials (Kubernetes; referenced by name).
    #[arg(long)]
    secret: Option<String>,
    /// Slurm container runtime: none, pyxis, apptainer.
    #[arg(long)]
    container: Option<String>,
    /// Node folders the Slurm container sees: SRC:DST[:ro],...
    #[arg(long, value_name = "SRC:DST[:ro],...")]
    container_mounts: Option<String>,
    /// Seconds from the stop signal to the kill (time to checkpoint) [default: 300].
    #[arg(long)]
    grace_seconds: Option<u64>,
    /// Attempts started by themselves after a preempted one (exit 75, a disrupted pod),
    /// each resuming from the last checkpoint [default: 0].
    #[arg(long)]
    max_retries: Option<u32>,
    /// Ingest worker processes, each `--worker I/N`, then one merge [default: 1].
    #[arg(long)]
    workers: Option<usize>,
    /// Cases each ingest worker processes in parallel [default: 1].
    #[arg(long)]
    jobs: Option<usize>,
    /// The s3-train program (local default: $S3_TRAIN_BIN, else next to s3-orch, else PATH).
    #[arg(long)]
    train_bin: Option<String>,
    /// The s3-ingest program (local default: $S3_INGEST_BIN, else next to s3-orch, else PATH).
    #[arg(long)]
    ingest_bin: Option<String>,
    /// The s3-orch program where the jobs run (Slurm; default: this one).
    #[arg(long)]
    orch_bin: Option<String>,
    /// Kubernetes object per stage: job (Indexed Job + headless Service) or jobset [default: job].
    #[arg(long, value_parser = ["job", "jobset"])]
    k8s_kind: Option<String>,
    /// Log folder when the run folder is not a local directory [default: s3-orch-logs].
    #[arg(long)]
    log_dir: Option<String>,
    /// Container image of the Kubernetes ingest and merge pods [default: --image].
    #[arg(long)]
    ingest_image: Option<String>,
    /// Kubernetes node selector of the pods: KEY=VALUE,...
    #[arg(long, value_name = "KEY=VALUE,...")]
    node_selector: Option<String>,
    /// Taints the Kubernetes pods tolerate: KEY[=VALUE][:EFFECT],...
    #[arg(long, value_name = "KEY[=VALUE][:EFFECT],...")]
    tolerations: Option<String>,
    /// Gang admission of the Kubernetes pods: none, kueue or volcano [default: none].
    #[arg(long, value_parser = ["none", "kueue", "volcano"])]
    k8s_gang: Option<String>,
    /// Kueue LocalQueue (needed with kueue) or Volcano queue.
    #[arg(long)]
    k8s_queue: Option<String>,
    /// Kubernetes volumes: pvc:CLAIM:/MNT[:ro], hostPath:/HOST:/MNT[:ro], emptyDir:/MNT[:SIZE], ...
    #[arg(long, value_name = "KIND:...:/MNT,...")]
    k8s_volumes: Option<String>,
    /// Kubernetes pods on the host's network [default: false].
    #[arg(long, value_name = "BOOL")]
    host_network: Option<bool>,
    /// RDMA device resource per Kubernetes rank container, e.g. rdma/hca_shared_devices_a=1.
    #[arg(long, value_name = "DOMAIN/NAME=COUNT")]
    rdma_resource: Option<String>,
    /// Slurm partition of the eval job (one GPU) [default: --partition].
    #[arg(long)]
    eval_partition: Option<String>,
    /// Wall-clock limit of the eval job [default: --time-limit].
    #[arg(long)]
    eval_time_limit: Option<String>,
    /// Slurm partition of the ingest workers and merge (CPU only) [default: --partition].
    #[arg(long)]
    ingest_partition: Option<String>,
    /// Wall-clock limit of the ingest jobs [default: --time-limit].
    #[arg(long)]
    ingest_time_limit: Option<String>,
    /// Extra environment of every rank, KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = s3_orch::settings::parse_env)]
    env: Vec<(String, String)>,
}

impl SettingFlags {
    /// These flags as the top layer of the settings.
    pub fn layer(&self) -> Layer {
        Layer {
            ranks: self.ranks,
            nodes: self.nodes,
            device: self.device.clone(),
            gpus_per_node: self.gpus_per_node,
            cpus_per_rank: self.cpus_per_rank,
            mem_per_rank: self.mem_per_rank.clone(),
            time_limit: self.time_limit.clone(),
            partition: self.partition.clone(),
            eval_partition: self.eval_partition.clone(),
            eval_time_limit: self.eval_time_limit.clone(),
            ingest_partition: self.ingest_partition.clone(),
            ingest_time_limit: self.ingest_time_limit.clone(),
            account: self.account.clone(),
            qos: self.qos.clone(),
            image: self.image.clone(),
            namespace: self.namespace.clone(),
            secret: self.secret.clone(),
            container: self.container.clone(),
            container_mounts: self.container_mounts.clone(),
            grace_seconds: self.grace_seconds,
            max_retries: self.max_retries,
            workers: self.workers,
            jobs: self.jobs,
            train_bin: self.train_bin.clone(),
            ingest_bin: self.ingest_bin.clone(),
            orch_bin: self.orch_bin.clone(),
            k8s_kind: self.k8s_kind.clone(),
            log_dir: self.log_dir.clone(),
            ingest_image: self.ingest_image.clone(),
            node_selector: self.node_selector.clone(),
            tolerations: self.tolerations.clone(),
            k8s_gang: self.k8s_gang.clone(),
            k8s_queue: self.k8s_queue.clone(),
            k8s_volumes: self.k8s_volumes.clone(),
            host_network: self.host_network,
            rdma_resource: self.rdma_resource.clone(),
            env: self.env.iter().cloned().collect(),
        }
    }
}
