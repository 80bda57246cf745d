//! What a training run is asked to do ([`RunSpec`]), what it reports as it goes
//! ([`TrainEvent`]) and what it did ([`TrainOutcome`]): the loop's interface, apart
//! from the loop ([`crate::train`]) so that callers and the loop share no more.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use s3_shards::StoreOptions;

use crate::launch::collective::CollectiveOptions;
pub use crate::training::checkpoint::TrainState;
pub use crate::training::metrics::StepMetrics;
use crate::training::stage::StageConfig;

/// What to train, where.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// Store with the published shards.
    pub data: String,
    /// Run folder (checkpoints, metrics, config) on any store.
    pub run: String,
    /// The stage.
    pub stage: StageConfig,
    /// This rank.
    pub rank: usize,
    /// Number of ranks.
    pub world: usize,
    /// Rendezvous `host:port` of the gradient all-reduce (rank 0 listens); needed when `world` > 1.
    pub master: Option<String>,
    /// Continue from the run's latest checkpoint when there is one.
    pub resume: bool,
    /// S3 settings.
    pub store_options: StoreOptions,
    /// Timeouts and the join token of the collective.
    pub collective: CollectiveOptions,
    /// End the process (exit 2) when an optimiser step makes no progress for this long.
    pub step_timeout: Option<Duration>,
    /// The xxh3 the init weights file must have (the launcher verified it before
    /// starting stage 2; each rank checks the copy it actually read).
    pub init_xxh3: Option<u64>,
    /// Set (by a SIGTERM/SIGUSR2 handler) to ask for a preemption: every rank stops at
    /// the same step boundary (the flag travels through the all-reduce), rank 0
    /// checkpoints, and the outcome says `preempted` (the binary exits 75).
    pub preempt: Option<Arc<AtomicBool>>,
    /// Set while a stop signal should end the process at once (exit 75, by the
    /// handler itself): before the first step nothing is worth a checkpoint, and
    /// loading data or `--init`, or waiting for peers, can take minutes. The loop
    /// clears it around rank 0's writes (a write is never cut in half) and for good
    /// once training starts, from when the stop waits for the step boundary.
    pub exit_at_once: Option<Arc<AtomicBool>>,
    /// The loader's decoding threads (outside the run's identity: the samples and
    /// their order are the same for any count).
    pub loader_threads: usize,
    /// A node-local copy of the shards (outside the run's identity too: the bytes
    /// read are the same, verified against the index).
    pub shard_cache: Option<crate::shard_cache::CacheSettings>,
    /// Nodes of the job (the launch contract's count), for the node-aware order.
    pub nodes: usize,
    /// Node-aware sample order: each node's ranks draw from a fixed span of the
    /// shards (see [`crate::sampler`]); `None` turns it on with a shard cache.
    pub node_order: Option<bool>,
}

impl RunSpec {
    /// The node count the next epoch's order is drawn for: the job's nodes when the
    /// node-aware order is on and the ranks split evenly over them, else 1.
    pub fn order_nodes(&self) -> u64 {
        let on = self.node_order.unwrap_or(self.shard_cache.is_some());
        if on && self.nodes > 1 && self.world % self.nodes == 0 { self.nodes as u64 } else { 1 }
    }

    /// A single-rank run of `stage` on `data` into `run`, resuming, with default options.
    pub fn new(data: impl Into<String>, run: impl Into<String>, stage: StageConfig) -> RunSpec {
        RunSpec {
            data: data.into(),
            run: run.into(),
            stage,
            rank: 0,
            world: 1,
            master: None,
            resume: true,
            store_options: StoreOptions::default(),
            collective: CollectiveOptions::default(),
            step_timeout: None,
            init_xxh3: None,
            preempt: None,
            exit_at_once: None,
            loader_threads: 1,
            shard_cache: None,
            nodes: 1,
            node_order: None,
        }
    }
}

/// Progress of a run.
#[derive(Clone, Debug)]
pub enum TrainEvent {
    /// Training starts or resumes.
    Started {
        /// Samples selected.
        samples: usize,
        /// Optimiser steps per epoch.
        steps_per_epoch: u64,
        /// Total steps planned.
        total_steps: u64,
        /// Starting point.
        from: TrainState,
    },
    /// A step finished.
    Step {
        /// Its numbers (means over all ranks).
        metrics: StepMetrics,
        /// The samples this rank trained on in the step, in order.
        samples: Vec<String>,
    },
    /// A sample was skipped.
    Skipped {
        /// Sample.
        sample_id: String,
        /// Why.
        reason: String,
    },
    /// A checkpoint was written.
    Checkpoint {
        /// Step.
        step: u64,
        /// Folder on the run store.
        dir: String,
    },
}

/// What a run did. Nothing in it grows with the run's length: per-step detail goes
/// through [`TrainEvent::Step`] and the run's `metrics/` segments.
#[derive(Clone, Debug)]
pub struct TrainOutcome {
    /// Final state.
    pub state: TrainState,
    /// Steps this process ran.
    pub steps_run: u64,
    /// The last step's metrics.
    pub last: Option<StepMetrics>,
    /// Stopped by max_steps/max_minutes before the last epoch.
    pub stopped_early: bool,
    /// Stopped by a preemption request, after a checkpoint at that step.
    pub preempted: bool,
    /// xxh3 of the final parameters: equal on every rank of a synchronised run.
    pub weights_digest: u64,
}
