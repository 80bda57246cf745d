//! The orchestrator library's error type.

/// What can go wrong launching, tracking or cancelling a stage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OrchError {
    /// Store access failed (the ledger, a checkpoint, logs).
    #[error(transparent)]
    Shards(#[from] s3_shards::ShardError),
    /// A setting (flag, profile or stage file key) has a value it cannot take.
    #[error("{name}: {value:?} is not {expected}")]
    Setting {
        /// The setting (`mem_per_rank`, `k8s_kind`, `backend`, ...).
        name: &'static str,
        /// The value given.
        value: String,
        /// What it may be, with an example where that helps.
        expected: String,
    },
    /// An `S3_ORCH_<NAME>` variable does not parse as its setting's type.
    #[error("{var}={value:?} in the environment")]
    Env {
        /// The variable.
        var: String,
        /// Its value.
        value: String,
        /// What the parser said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The ranks do not divide evenly over the nodes or pods.
    #[error("{ranks} ranks do not spread evenly over {over} {unit}")]
    Shape {
        /// Total ranks.
        ranks: usize,
        /// Nodes or pods.
        over: usize,
        /// `nodes` or `pods`.
        unit: &'static str,
    },
    /// A pod would hold more ranks than GPUs.
    #[error(
        "{ranks_per_pod} ranks per pod but gpus_per_node = {gpus_per_node}: one GPU per rank (--ranks, --nodes, --gpus-per-node)"
    )]
    Gpus {
        /// Ranks each pod runs.
        ranks_per_pod: usize,
        /// GPUs each pod gets.
        gpus_per_node: usize,
    },
    /// More than one node asked of the local backend.
    #[error(
        "the local backend runs every rank on this machine: {nodes} nodes asked (use --nodes 1, or --backend slurm|k8s)"
    )]
    LocalNodes {
        /// Nodes asked.
        nodes: usize,
    },
    /// A container setting without the image it runs.
    #[error("{needed_by} needs an image (--image, or image = \"...\" in the cluster profile)")]
    NeedsImage {
        /// What needs it (`container = "pyxis"`, `the k8s backend`).
        needed_by: String,
    },
    /// A file or program named by a flag or a default is not there.
    #[error("{what} {path} not found: {hint}")]
    NotFound {
        /// What it is (`cluster profile`, `stage file`, `s3-train`).
        what: &'static str,
        /// Where it was looked for.
        path: String,
        /// What to do about it.
        hint: &'static str,
    },
    /// A settings file lacks a key (or its value is not of the key's type).
    #[error("{file}: no {key}")]
    MissingKey {
        /// The file.
        file: String,
        /// The key (`epochs`).
        key: &'static str,
    },
    /// A planned job has no rank to run (a planner bug, not a setting).
    #[error("{stage}: a job without ranks")]
    NoRanks {
        /// The job's stage.
        stage: String,
    },
    /// A training job reached the Slurm backend without the hooks that record it.
    #[error("{stage} on Slurm needs its ledger hooks")]
    NoHooks {
        /// The job's stage.
        stage: String,
    },
    /// The ranks of a job differ where one Kubernetes pod template must serve them all.
    #[error(
        "{stage} attempt {attempt}: the ranks differ in {differ}, which one Kubernetes pod template cannot express"
    )]
    PodTemplate {
        /// The job's stage.
        stage: String,
        /// The attempt.
        attempt: u32,
        /// What differs (`their program`, `their environment`, ...).
        differ: &'static str,
    },
    /// The local files the job reads are too large to travel with it.
    #[error("{files} files of {bytes} bytes for the job: a ConfigMap or batch script carries at most {limit}")]
    ConfigMapFull {
        /// Number of files.
        files: usize,
        /// Their total size.
        bytes: usize,
        /// What a ConfigMap holds.
        limit: usize,
    },
    /// A submission id in the ledger is not one the k8s backend wrote.
    #[error("{id:?} is no k8s job id (namespace/name or namespace/jobset/name)")]
    K8sJobId {
        /// The id.
        id: String,
    },
    /// A scheduler command printed something other than the job id it should.
    #[error("{command} printed {said:?}, not a job id")]
    NotAJobId {
        /// The command (`sbatch`).
        command: &'static str,
        /// What it printed.
        said: String,
    },
    /// A scheduler command or a helper program ran and failed.
    #[error("{command} failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line, or what it was doing.
        command: String,
        /// How it exited.
        status: std::process::ExitStatus,
        /// What it printed on stderr, trimmed.
        stderr: String,
    },
    /// Kubernetes objects without the labels that scope a delete to one attempt;
    /// deleting by a partial selector could take other attempts' pods with them.
    #[error("{id} lacks the s3/run, s3/stage, s3/attempt labels: not deleting it")]
    Unlabelled {
        /// The submission id.
        id: String,
    },
    /// A job hook names an attempt that is not the ledger's newest (a stale requeue).
    #[error("run {run}: {stage} attempt {attempt} of job {job} is not the newest attempt in the ledger")]
    StaleAttempt {
        /// The run.
        run: String,
        /// The stage.
        stage: String,
        /// The attempt the hook names.
        attempt: u32,
        /// The scheduler job it runs in.
        job: String,
    },
    /// The stage's newest attempt still runs: a second one would write the same checkpoints.
    #[error(
        "run {run}: {stage} attempt {attempt} is still running on {backend} (jobs {}); wait for it, or `s3-orch cancel` it first",
        jobs.join(", ")
    )]
    StillRunning {
        /// The run.
        run: String,
        /// The stage.
        stage: String,
        /// The running attempt.
        attempt: u32,
        /// The backend it runs on.
        backend: String,
        /// Its scheduler jobs.
        jobs: Vec<String>,
    },
    /// No ledger under the runs folder for this run.
    #[error("no run {run} under {runs} (no ledger.json)")]
    NoRun {
        /// The run id.
        run: String,
        /// The runs folder or URL.
        runs: String,
    },
    /// The run's ledger has no record of the stage.
    #[error("run {run} has no stage {stage} in its ledger")]
    NoStage {
        /// The run.
        run: String,
        /// The stage.
        stage: String,
    },
    /// The stage has no attempt of that number.
    #[error("{stage} of run {run} has no attempt {attempt}")]
    NoAttempt {
        /// The run.
        run: String,
        /// The stage.
        stage: String,
        /// The attempt asked for.
        attempt: u32,
    },
    /// Stage 2 may not start (a dry run shows it anyway, with a placeholder).
    #[error(transparent)]
    Gate(#[from] GateError),
    /// Eval asked for a stage that has no final weights yet.
    #[error("run {run}: eval reads {stage}'s final weights, and {stage} has not succeeded")]
    NothingToEvaluate {
        /// The run.
        run: String,
        /// The stage to evaluate.
        stage: String,
    },
    /// A training stage asked for before the ingest published its data.
    #[error("no published data at {url}; run s3-orch launch ingest first")]
    NoData {
        /// The data store.
        url: String,
        /// Why its index could not be read.
        #[source]
        source: Box<OrchError>,
    },
    /// The demo's folder holds files the demo did not write; clearing them could lose work.
    #[error("{dir} is not empty and no demo made it; give the demo an empty or new --dir")]
    ForeignDir {
        /// The folder.
        dir: String,
    },
    /// A step the demo waited for did not succeed.
    #[error("{what} ended {state}: {error}")]
    Ended {
        /// The step (`stage 1`, `the ingest`).
        what: String,
        /// Its state in the ledger.
        state: &'static str,
        /// The attempt's error, if it has one.
        error: String,
    },
    /// The demo's evaluation of a stage failed.
    #[error("evaluating {stage} failed (log: {log})")]
    EvalFailed {
        /// The stage evaluated.
        stage: String,
        /// Its log.
        log: String,
    },
    /// A settings table could not be written as TOML.
    #[error("{what} cannot be written as TOML")]
    Render {
        /// What was written (`demo stage`).
        what: &'static str,
        /// What the writer said.
        #[source]
        source: toml::ser::Error,
    },
    /// A metrics segment is not the CSV the trainer writes.
    #[error("metrics segment {segment}")]
    Metrics {
        /// The segment's key in the stage's run folder.
        segment: String,
        /// What the reader said.
        #[source]
        source: csv::Error,
    },
    /// The caller's own step failed inside a launch callback (the command line's
    /// report of a stage's end); carried whole so its chain still reads out.
    #[error(transparent)]
    Caller(Box<dyn std::error::Error + Send + Sync>),
    /// A settings file (stage file, cluster profile) is not the TOML it should be.
    #[error("{file}: {source}")]
    Parse {
        /// The file, and the table within it where that is the problem.
        file: String,
        /// What the parser said.
        #[source]
        source: toml::de::Error,
    },
    /// A Kubernetes job was given a store on this machine's disk, which its pods
    /// cannot reach.
    #[error(
        "{flag} {path} is on this machine: the pods reach only their image and the network, so the data would be \
         missing and checkpoints would land in a pod's ephemeral storage; use an s3:// URL"
    )]
    UnreachableFromPods {
        /// The rank argument (`--run`, `--data`, `--out`, `--init`).
        flag: String,
        /// Its value.
        path: String,
    },
    /// The run folder's store cannot write the ledger conditionally, so concurrent
    /// writers could lose each other's changes.
    #[error(
        "{url}: the store does not support conditional writes (If-Match), which the run ledger needs; on an \
         S3-compatible store that has them, check AWS_CONDITIONAL_PUT"
    )]
    LedgerUnsafe {
        /// The run folder.
        url: String,
    },
    /// Other writers kept changing the ledger while this one tried to.
    #[error("{url}: the run ledger changed under this writer {tries} times in a row; try again")]
    LedgerContended {
        /// The run folder.
        url: String,
        /// Conditional writes tried.
        tries: u32,
    },
    /// The command needs a flag it was not given.
    #[error("{flag} is needed to {what}")]
    NeedsFlag {
        /// The flag (`--manifest`).
        flag: &'static str,
        /// What it is needed for.
        what: &'static str,
    },
    /// Starting, signalling or waiting for a process failed.
    #[error("{what}")]
    Process {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be read or written.
    #[error("{file}")]
    Io {
        /// The file.
        file: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Why stage 2 may not start from stage 1's final checkpoint: it starts only from the
/// checkpoint the ledger recorded, byte for byte.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GateError {
    /// Stage 1 of the run has not succeeded.
    #[error(
        "run {run}: stage 2 starts from stage 1's final checkpoint, and stage 1 has not succeeded \
         (launch stage1 --run {run} first)"
    )]
    Stage1NotSucceeded {
        /// The run.
        run: String,
    },
    /// Stage 1 succeeded but the ledger names no final checkpoint.
    #[error("run {run}: the ledger records no final stage-1 checkpoint")]
    NoCheckpoint {
        /// The run.
        run: String,
    },
    /// The recorded checkpoint URL names no file.
    #[error("stage-1 checkpoint URL {url} has no file name")]
    BadUrl {
        /// The URL.
        url: String,
    },
    /// The checkpoint cannot be read to check it.
    #[error("stage 1's final checkpoint {url} cannot be read")]
    Unreadable {
        /// The checkpoint.
        url: String,
        /// Why.
        #[source]
        source: Box<OrchError>,
    },
    /// The checkpoint is not the one the ledger recorded.
    #[error(
        "stage 1's final checkpoint {url} has xxh3 {found:016x}, the ledger recorded {recorded:016x}: it changed \
         since stage 1 ended; not starting stage 2 from it"
    )]
    Changed {
        /// The checkpoint.
        url: String,
        /// Its hash now.
        found: u64,
        /// Its hash when stage 1 ended.
        recorded: u64,
    },
}

/// Result alias.
pub type Result<T, E = OrchError> = std::result::Result<T, E>;
