//! The epoch order (DESIGN §6): a pure function of (seed, epoch, selection).
//!
//! Shards are shuffled, then the samples of each window of `window` consecutive
//! shards are shuffled together (a rank reads few shards at a time). The global
//! sequence is padded by repeating its head to a multiple of the world size; rank
//! `r` takes positions `consumed + r, consumed + r + world, ...`. The resume state is
//! (epoch, consumed global positions), so a run resumed on another world size
//! continues the same global sequence.

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

/// Resume point: the epoch and how many global positions of it are done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerState {
    /// Epoch number (0-based).
    pub epoch: u64,
    /// Global positions of this epoch already trained on (all ranks together).
    pub consumed: u64,
}

/// Deterministic shuffler over a fixed selection of samples.
#[derive(Clone, Debug)]
pub struct Sampler {
    seed: u64,
    window: usize,
    /// Samples grouped by shard, shards sorted by key, rows sorted: the canonical order.
    shards: Vec<(String, Vec<SampleRef>)>,
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

    /// The global order of `epoch`.
    pub fn epoch_order(&self, epoch: u64) -> Vec<SampleRef> {
        // ChaCha8 is portable and its stream is fixed across rand releases: an epoch's
        // order is the same on every machine and after every upgrade.
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ xxh3_64(&epoch.to_le_bytes()));
        let mut shards: Vec<&(String, Vec<SampleRef>)> = self.shards.iter().collect();
        shards.shuffle(&mut rng);
        let mut out = Vec::with_capacity(self.len());
        for window in shards.chunks(self.window) {
            let mut w: Vec<SampleRef> = window.iter().flat_map(|(_, v)| v.iter().cloned()).collect();
            w.shuffle(&mut rng);
            out.extend(w);
        }
        out
    }

    /// Global positions per epoch once padded for `world` ranks.
    pub fn padded_len(&self, world: usize) -> u64 {
        let n = self.len() as u64;
        let w = world.max(1) as u64;
        n.div_ceil(w) * w
    }

    /// The samples rank `rank` of `world` trains on in `state.epoch`, from `state.consumed`
    /// on: global positions `consumed + rank + k·world`. The remainder after `consumed` is
    /// padded by repeating the epoch's head so every rank gets the same count; nothing is
    /// dropped.
    pub fn rank_positions(&self, state: SamplerState, rank: usize, world: usize) -> Vec<(u64, SampleRef)> {
        let order = self.epoch_order(state.epoch);
        if order.is_empty() {
            return Vec::new();
        }
        let w = world.max(1) as u64;
        let n = order.len() as u64;
        let remaining = n.saturating_sub(state.consumed);
        let total = state.consumed + remaining.div_ceil(w) * w;
        (state.consumed + rank as u64..total)
            .step_by(w as usize)
            .map(|p| (p, order[(p % n) as usize].clone()))
            .collect()
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
                    let p = s.rank_positions(SamplerState { epoch: 3, consumed: 0 }, r, world);
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
        let state = SamplerState { epoch: 2, consumed: 12 };
        let mut merged: Vec<(u64, SampleRef)> = (0..3).flat_map(|r| s.rank_positions(state, r, 3)).collect();
        merged.sort_by_key(|(p, _)| *p);
        let rest: Vec<SampleRef> = merged.into_iter().map(|(_, x)| x).collect();
        assert_eq!(&rest[..global.len() - 12], &global[12..]);
    }
}
