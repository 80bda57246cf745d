//! The epoch order (DESIGN §6): a pure function of (seed, epoch, selection, nodes).
//!
//! Shards are shuffled, then the samples of each window of `window` consecutive
//! shards are shuffled together (a rank reads few shards at a time). The global
//! sequence is padded by repeating its head to a multiple of the world size; rank
//! `r` takes positions `consumed + r, consumed + r + world, ...`. The resume state is
//! (epoch, consumed global positions), so a run resumed on another world size
//! continues the same global sequence.
//!
//! **Node-aware order** (issue 28, after MosaicML Streaming's canonical nodes): with
//! `nodes` > 1 the samples, in a shard order drawn once from the seed alone, are cut
//! into `nodes` contiguous spans of equal size (±1) that stay the same every epoch.
//! Each epoch shuffles each span as above on its own, and the global sequence
//! interleaves them: position `j·nodes + k` is the `j`-th sample of span `k`. The
//! ranks of node `k` (ranks `k·R .. (k+1)·R`, `R = world / nodes`, the launchers'
//! block layout) take span `k`'s samples only, so a node's cache of its span's
//! shards serves every epoch after the first. Each step consumes `R` samples of every
//! span, so `consumed` is always a prefix of the global sequence: resume is exact on
//! any world that is a multiple of `nodes`; a resume on another layout finishes the
//! epoch with the plain rank interleave over the same sequence (every sample still
//! once) and the next epoch is drawn for the new node count. One node is the plain
//! order, bit for bit.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use s3_shards::samples_table::SampleRow;

/// Where a sample lives.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SampleRef {
    /// `dataset/task/case/label`
    pub sample_id: String,
    /// Shard key.
    pub shard: String,
    /// Row in the shard.
    pub row: u64,
}

/// Resume point: the epoch, how many global positions of it are done, and the node
/// count its order was drawn for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerState {
    /// Epoch number (0-based).
    pub epoch: u64,
    /// Global positions of this epoch already trained on (all ranks together).
    pub consumed: u64,
    /// Nodes the epoch's order is drawn for; 0 and 1 both mean the plain order
    /// (checkpoints written before node-aware order have none).
    #[serde(default, skip_serializing_if = "is_plain")]
    pub nodes: u64,
}

fn is_plain(nodes: &u64) -> bool {
    *nodes <= 1
}

impl SamplerState {
    /// The start of `epoch`, drawn for `nodes` nodes.
    pub fn start(epoch: u64, nodes: u64) -> SamplerState {
        SamplerState { epoch, consumed: 0, nodes: if nodes > 1 { nodes } else { 0 } }
    }
}

/// Deterministic shuffler over a fixed selection of samples.
#[derive(Clone, Debug)]
pub struct Sampler {
    seed: u64,
    window: usize,
    /// Samples grouped by shard, shards sorted by key, rows sorted: the canonical order.
    shards: Vec<(String, Vec<SampleRef>)>,
}

/// One epoch's sequence for a node count: each span's samples in order.
struct NodeOrder {
    spans: Vec<Vec<SampleRef>>,
    len: u64,
}

impl NodeOrder {
    /// The sample at global position `p` (past the end: the span's own head again).
    fn at(&self, p: u64) -> &SampleRef {
        let n = self.spans.len() as u64;
        let span = &self.spans[(p % n) as usize];
        &span[((p / n) % span.len() as u64) as usize]
    }
}

impl Sampler {
    /// A sampler over `samples` (order irrelevant) with a shard window of `window`.
    pub fn new(samples: impl IntoIterator<Item = SampleRef>, seed: u64, window: usize) -> Sampler {
        let mut by_shard: BTreeMap<String, Vec<SampleRef>> = BTreeMap::new();
        for s in samples {
            by_shard.entry(s.shard.clone()).or_default().push(s);
        }
        let shards = by_shard
            .into_iter()
            .map(|(k, mut v)| {
                v.sort();
                (k, v)
            })
            .collect();
        Sampler { seed, window: window.max(1), shards }
    }

    /// From sample-table rows (the caller filters datasets and split first).
    pub fn from_rows(rows: &[SampleRow], seed: u64, window: usize) -> Sampler {
        Sampler::new(
            rows.iter().map(|r| SampleRef {
                sample_id: r.sample_id.clone(),
                shard: r.shard.clone(),
                row: r.row as u64,
            }),
            seed,
            window,
        )
    }

    /// Number of distinct samples.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|(_, v)| v.len()).sum()
    }

    /// True when nothing was selected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The global order of `epoch` on one node (the plain order).
    pub fn epoch_order(&self, epoch: u64) -> Vec<SampleRef> {
        self.order(epoch, 1)
    }

    /// The global order of `epoch` drawn for `nodes` nodes: every sample once.
    pub fn order(&self, epoch: u64, nodes: u64) -> Vec<SampleRef> {
        let o = self.node_order(epoch, nodes);
        (0..o.len).map(|p| o.at(p).clone()).collect()
    }

    /// Node count actually used: at least 1 and at most one per sample (a span is
    /// never empty).
    fn effective_nodes(&self, nodes: u64) -> usize {
        (nodes.max(1) as usize).min(self.len().max(1))
    }

    /// The shards of each node's span (a shard cut by a span boundary is in both):
    /// what a node's cache holds after its first epoch.
    pub fn node_shards(&self, nodes: u64) -> Vec<Vec<String>> {
        self.spans(nodes)
            .into_iter()
            .map(|span| {
                let mut keys: Vec<String> = span.into_iter().map(|(k, _)| k.to_string()).collect();
                keys.dedup();
                keys
            })
            .collect()
    }

    /// The spans for `nodes`: the samples in a shard order drawn from the seed alone,
    /// cut into equal runs (the first `len % nodes` one longer), each as its shards'
    /// pieces in key order.
    fn spans(&self, nodes: u64) -> Vec<Vec<(&str, Vec<&SampleRef>)>> {
        let n = self.effective_nodes(nodes);
        if n == 1 {
            return vec![self.shards.iter().map(|(k, v)| (k.as_str(), v.iter().collect())).collect()];
        }
        // A stream of its own, never the epochs': the spans stay put for the whole run.
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ xxh3_64(b"canonical node spans"));
        let mut shards: Vec<&(String, Vec<SampleRef>)> = self.shards.iter().collect();
        shards.shuffle(&mut rng);
        let all: Vec<&SampleRef> = shards.iter().flat_map(|(_, v)| v.iter()).collect();
        let (base, extra) = (all.len() / n, all.len() % n);
        let mut spans = Vec::with_capacity(n);
        let mut start = 0;
        for k in 0..n {
            let end = start + base + usize::from(k < extra);
            let mut pieces: BTreeMap<&str, Vec<&SampleRef>> = BTreeMap::new();
            for s in &all[start..end] {
                pieces.entry(s.shard.as_str()).or_default().push(s);
            }
            spans.push(pieces.into_iter().collect());
            start = end;
        }
        spans
    }

    fn node_order(&self, epoch: u64, nodes: u64) -> NodeOrder {
        let spans = self.spans(nodes);
        let n = spans.len() as u64;
        let spans = spans
            .into_iter()
            .enumerate()
            .map(|(k, mut pieces)| {
                // ChaCha8 is portable and its stream is fixed across rand releases: an
                // epoch's order is the same on every machine and after every upgrade. One
                // node keeps the plain order's seed exactly.
                let stream = if n == 1 {
                    xxh3_64(&epoch.to_le_bytes())
                } else {
                    xxh3_64(&[epoch, k as u64, n].map(u64::to_le_bytes).concat())
                };
                let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ stream);
                pieces.shuffle(&mut rng);
                let mut out = Vec::with_capacity(pieces.iter().map(|(_, v)| v.len()).sum());
                for window in pieces.chunks(self.window) {
                    let mut w: Vec<SampleRef> =
                        window.iter().flat_map(|(_, v)| v.iter().map(|s| (*s).clone())).collect();
                    w.shuffle(&mut rng);
                    out.extend(w);
                }
                out
            })
            .collect();
        NodeOrder { spans, len: self.len() as u64 }
    }

    /// Global positions per epoch once padded for `world` ranks.
    pub fn padded_len(&self, world: usize) -> u64 {
        let n = self.len() as u64;
        let w = world.max(1) as u64;
        n.div_ceil(w) * w
    }

    /// The samples rank `rank` of `world` trains on in `state.epoch`, from
    /// `state.consumed` on, in the order drawn for `state.nodes`. The remainder after
    /// `consumed` is padded to the same count for every rank (each span repeats its
    /// own head); nothing is dropped.
    ///
    /// When `world` is a multiple of the node count, rank `r` is on node `r / R` and
    /// takes its span's samples `consumed/nodes + r%R + m·R`: global positions
    /// `(consumed/nodes + r%R + m·R)·nodes + r/R`. Otherwise (a resume on another
    /// layout) rank `r` takes global positions `consumed + r + m·world`. Both cover
    /// each position from `consumed` on exactly once.
    pub fn rank_positions(&self, state: SamplerState, rank: usize, world: usize) -> Vec<(u64, SampleRef)> {
        if self.is_empty() {
            return Vec::new();
        }
        let order = self.node_order(state.epoch, state.nodes);
        let nodes = order.spans.len() as u64;
        let w = world.max(1) as u64;
        let steps = order.len.saturating_sub(state.consumed).div_ceil(w);
        let at = |p: u64| (p, order.at(p).clone());
        if nodes > 1 && w % nodes == 0 && state.consumed % nodes == 0 {
            let per_node = w / nodes;
            let (node, local) = (rank as u64 / per_node, rank as u64 % per_node);
            let first = state.consumed / nodes + local;
            (0..steps).map(|m| at((first + m * per_node) * nodes + node)).collect()
        } else {
            (0..steps).map(|m| at(state.consumed + rank as u64 + m * w)).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(shards: usize, per: usize) -> Vec<SampleRef> {
        (0..shards)
            .flat_map(|s| {
                (0..per).map(move |r| SampleRef {
                    sample_id: format!("D/t/c{s}_{r}/1"),
                    shard: format!("shards/D/t/part-{s:05}.parquet"),
                    row: r as u64,
                })
            })
            .collect()
    }

    #[test]
    fn epochs_are_pure_permutations_and_differ() {
        let s = Sampler::new(refs(7, 5), 42, 2);
        let (a, b) = (s.epoch_order(0), s.epoch_order(1));
        assert_eq!(a, Sampler::new(refs(7, 5).into_iter().rev(), 42, 2).epoch_order(0), "input order does not matter");
        assert_ne!(a, b);
        let mut sa = a.clone();
        sa.sort();
        let mut all = refs(7, 5);
        all.sort();
        assert_eq!(sa, all, "each sample exactly once per epoch");
        // A window of 2 shards: the first 10 samples come from at most 2 shards.
        let first: std::collections::BTreeSet<&str> = a[..10].iter().map(|r| r.shard.as_str()).collect();
        assert!(first.len() <= 2, "{first:?}");
    }

    #[test]
    fn ranks_cover_the_epoch_without_loss() {
        let s = Sampler::new(refs(5, 7), 1, 2); // 35 samples
        for world in [1, 2, 3, 4, 8] {
            let mut seen: BTreeMap<String, usize> = BTreeMap::new();
            let counts: Vec<usize> = (0..world)
                .map(|r| {
                    let p = s.rank_positions(SamplerState { epoch: 3, consumed: 0, nodes: 0 }, r, world);
                    for (_, x) in &p {
                        *seen.entry(x.sample_id.clone()).or_default() += 1;
                    }
                    p.len()
                })
                .collect();
            assert!(counts.iter().all(|&c| c == counts[0]), "equal lengths {counts:?}");
            assert_eq!(seen.len(), 35, "world {world}: nothing missed");
            let repeats: usize = seen.values().map(|c| c - 1).sum();
            assert_eq!(repeats as u64, s.padded_len(world) - 35, "only padding repeats");
        }
    }

    #[test]
    fn resume_on_another_world_size_keeps_the_global_order() {
        let s = Sampler::new(refs(6, 4), 9, 3);
        let global = s.epoch_order(2);
        // 4 ranks did 3 steps (12 positions), then the run continues on 3 ranks.
        let state = SamplerState { epoch: 2, consumed: 12, nodes: 0 };
        let mut merged: Vec<(u64, SampleRef)> = (0..3).flat_map(|r| s.rank_positions(state, r, 3)).collect();
        merged.sort_by_key(|(p, _)| *p);
        let rest: Vec<SampleRef> = merged.into_iter().map(|(_, x)| x).collect();
        assert_eq!(&rest[..global.len() - 12], &global[12..]);
    }

    /// Each rank's positions for one epoch of `world` ranks from `state` on.
    fn epoch_of(s: &Sampler, state: SamplerState, world: usize) -> Vec<Vec<(u64, SampleRef)>> {
        (0..world).map(|r| s.rank_positions(state, r, world)).collect()
    }

    #[test]
    fn one_node_is_the_plain_order_bit_for_bit() {
        let s = Sampler::new(refs(9, 4), 5, 3);
        for epoch in 0..3 {
            let plain = s.rank_positions(SamplerState { epoch, consumed: 0, nodes: 0 }, 1, 3);
            assert_eq!(s.rank_positions(SamplerState::start(epoch, 1), 1, 3), plain);
            assert_eq!(s.order(epoch, 1), s.epoch_order(epoch));
        }
    }

    #[test]
    fn node_aware_order_keeps_each_node_on_its_own_shards_every_epoch() {
        let s = Sampler::new(refs(12, 5), 7, 2); // 60 samples in 12 shards
        let spans = s.node_shards(2);
        assert_eq!(spans.len(), 2);
        let shared = spans[0].iter().filter(|k| spans[1].contains(k)).count();
        assert!(shared <= 1, "only a boundary shard is in both spans: {spans:?}");
        let world = 4; // 2 nodes × 2 ranks
        let mut firsts = Vec::new();
        for epoch in 0..3 {
            let state = SamplerState::start(epoch, 2);
            let ranks = epoch_of(&s, state, world);
            let mut seen: BTreeMap<String, usize> = BTreeMap::new();
            for (rank, positions) in ranks.iter().enumerate() {
                let node = rank / 2;
                for (p, x) in positions {
                    assert!(spans[node].contains(&x.shard), "epoch {epoch} rank {rank} read {} off its node", x.shard);
                    assert_eq!(x, &s.order(epoch, 2)[*p as usize], "position {p} is the global order's");
                    *seen.entry(x.sample_id.clone()).or_default() += 1;
                }
            }
            assert_eq!(seen.len(), 60, "every sample");
            assert!(seen.values().all(|&c| c == 1), "once per epoch (60 = 15 steps of 4)");
            firsts.push(s.order(epoch, 2));
        }
        assert_ne!(firsts[0], firsts[1], "each epoch shuffles its spans anew");
        assert_ne!(s.order(0, 2), s.order(0, 1), "the order depends on the node count");
        assert_eq!(Sampler::new(refs(12, 5).into_iter().rev(), 7, 2).order(1, 2), firsts[1], "a pure function");
    }

    #[test]
    fn node_aware_resume_on_another_world_continues_the_same_sequence() {
        let s = Sampler::new(refs(7, 5), 3, 2); // 35 samples: padding at the end
        let global = s.order(4, 2);
        let state = SamplerState { consumed: 8, ..SamplerState::start(4, 2) }; // 2 steps of 2 nodes × 2 ranks
        for world in [2, 4, 6, 3, 5] {
            let mut rest: Vec<(u64, SampleRef)> = epoch_of(&s, state, world).into_iter().flatten().collect();
            rest.sort_by_key(|(p, _)| *p);
            let counts: Vec<usize> = epoch_of(&s, state, world).iter().map(Vec::len).collect();
            assert!(counts.iter().all(|&c| c == counts[0]), "world {world}: equal shares {counts:?}");
            let positions: Vec<u64> = rest.iter().map(|(p, _)| *p).collect();
            assert_eq!(positions, (8..8 + positions.len() as u64).collect::<Vec<_>>(), "world {world}: no gap");
            let real: Vec<SampleRef> = rest.iter().filter(|(p, _)| *p < 35).map(|(_, x)| x.clone()).collect();
            assert_eq!(&real[..], &global[8..], "world {world}: the rest of the same epoch, each sample once");
            if world % 2 == 0 {
                // Still node-aware: each node's ranks stay on their span.
                let spans = s.node_shards(2);
                for (rank, positions) in epoch_of(&s, state, world).iter().enumerate() {
                    let node = rank / (world / 2);
                    assert!(positions.iter().all(|(_, x)| spans[node].contains(&x.shard)), "world {world} rank {rank}");
                }
            }
        }
    }

    #[test]
    fn more_nodes_than_samples_never_leave_a_span_empty() {
        let s = Sampler::new(refs(1, 3), 1, 2);
        let ranks = epoch_of(&s, SamplerState::start(0, 8), 8);
        let ids: std::collections::BTreeSet<String> =
            ranks.iter().flatten().map(|(_, x)| x.sample_id.clone()).collect();
        assert_eq!(ids.len(), 3);
        assert!(ranks.iter().all(|r| r.len() == 1), "{ranks:?}");
    }

    #[test]
    fn the_state_keeps_its_old_json_on_one_node() {
        let plain = SamplerState::start(2, 1);
        assert_eq!(serde_json::to_string(&plain).unwrap(), r#"{"epoch":2,"consumed":0}"#);
        let old: SamplerState = serde_json::from_str(r#"{"epoch":2,"consumed":0}"#).unwrap();
        assert_eq!(old, plain);
        let two = SamplerState::start(2, 2);
        assert_eq!(serde_json::from_str::<SamplerState>(&serde_json::to_string(&two).unwrap()).unwrap(), two);
    }
}
