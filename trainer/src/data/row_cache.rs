//! Decoded row groups held for the positions still to come, under a byte budget.
//!
//! The loader knows its whole sequence in advance, so the cache can be exact about
//! the future: a group is dropped as soon as no later position needs it, and when a
//! new group does not fit, the groups needed farthest ahead go first (Belady's
//! rule, optimal for a known sequence). The shard-window shuffle revisits each group
//! several times within a window; a FIFO of the same size re-decodes it instead.

use std::collections::HashMap;
use std::ops::Range;

/// One cached row group.
struct Entry<V> {
    shard: String,
    rows: Range<u64>,
    values: Vec<V>,
    bytes: usize,
}

/// The cache; `V` is one decoded row.
pub struct RowGroupCache<V> {
    budget: usize,
    used: usize,
    entries: Vec<Entry<V>>,
    /// Per shard, every (sequence index, row) of the sequence, in sequence order.
    uses: HashMap<String, Vec<(usize, u64)>>,
}

impl<V> RowGroupCache<V> {
    /// A cache for `sequence` (shard, row) visited in order, holding at most
    /// `budget` bytes (a single group larger than the budget is still held while in use).
    pub fn new<'a>(sequence: impl IntoIterator<Item = (&'a str, u64)>, budget: usize) -> Self {
        let mut uses: HashMap<String, Vec<(usize, u64)>> = HashMap::new();
        for (i, (shard, row)) in sequence.into_iter().enumerate() {
            uses.entry(shard.to_string()).or_default().push((i, row));
        }
        RowGroupCache { budget, used: 0, entries: Vec::new(), uses }
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Groups held now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The row `row` of `shard`, if its group is held.
    pub fn get(&self, shard: &str, row: u64) -> Option<&V> {
        let e = self.entries.iter().find(|e| e.shard == shard && e.rows.contains(&row))?;
        e.values.get((row - e.rows.start) as usize)
    }

    /// The first sequence index after `now` that reads a row of the group.
    fn next_use(&self, shard: &str, rows: &Range<u64>, now: usize) -> Option<usize> {
        let list = self.uses.get(shard)?;
        let from = list.partition_point(|&(i, _)| i <= now);
        list[from..].iter().find(|(_, r)| rows.contains(r)).map(|&(i, _)| i)
    }

    /// Adds the group `rows` of `shard` (decoded `values`, `bytes` in memory) while
    /// serving sequence index `now`, evicting the groups needed farthest ahead (never
    /// needed again first) until it fits.
    pub fn insert(&mut self, now: usize, shard: &str, rows: Range<u64>, values: Vec<V>, bytes: usize) {
        while !self.entries.is_empty() && self.used + bytes > self.budget {
            let victim = (0..self.entries.len())
                .max_by_key(|&k| {
                    let e = &self.entries[k];
                    self.next_use(&e.shard, &e.rows, now).unwrap_or(usize::MAX)
                })
                .expect("not empty");
            self.used -= self.entries.swap_remove(victim).bytes;
        }
        self.used += bytes;
        self.entries.push(Entry { shard: shard.to_string(), rows, values, bytes });
    }

    /// Drops every group that no position after `now` reads.
    pub fn release(&mut self, now: usize) {
        let mut k = 0;
        while k < self.entries.len() {
            let e = &self.entries[k];
            if self.next_use(&e.shard, &e.rows, now).is_none() {
                self.used -= self.entries.swap_remove(k).bytes;
            } else {
                k += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves `seq` through a cache of `budget` bytes with 4-row groups of 10 bytes;
    /// returns how many groups were decoded and the most bytes ever held.
    fn serve(seq: &[(&str, u64)], budget: usize) -> (usize, usize) {
        let mut cache: RowGroupCache<u64> = RowGroupCache::new(seq.iter().copied(), budget);
        let (mut decoded, mut peak) = (0, 0);
        for (now, &(shard, row)) in seq.iter().enumerate() {
            if cache.get(shard, row).is_none() {
                let start = row / 4 * 4;
                cache.insert(now, shard, start..start + 4, (start..start + 4).collect(), 10);
                decoded += 1;
            }
            assert_eq!(cache.get(shard, row), Some(&row), "served the right row");
            peak = peak.max(cache.used());
            cache.release(now);
        }
        assert!(cache.is_empty(), "everything released at the end");
        (decoded, peak)
    }

    #[test]
    fn each_group_is_decoded_once_when_the_budget_holds_the_window() {
        // Two shards interleaved, as the shard-window shuffle does.
        let seq: Vec<(&str, u64)> = (0..8u64).flat_map(|r| [("a", r), ("b", 7 - r)]).collect();
        let (decoded, peak) = serve(&seq, 40);
        assert_eq!(decoded, 4, "a:0-3, a:4-7, b:4-7, b:0-3 once each");
        assert!(peak <= 40);
    }

    #[test]
    fn under_pressure_the_group_needed_farthest_ahead_goes() {
        // Room for two groups. After a0 a4 b0, a FIFO would evict a0 (needed next);
        // Belady evicts a4, needed last.
        let seq = [("a", 0), ("a", 4), ("b", 0), ("a", 1), ("b", 1), ("a", 5)];
        let (decoded, peak) = serve(&seq, 20);
        assert_eq!(decoded, 4, "a:0-3, a:4-7, b:0-3, then a:4-7 again");
        assert!(peak <= 20, "peak {peak}");
    }

    #[test]
    fn finished_groups_are_released_at_once() {
        let seq = [("a", 0), ("a", 1), ("b", 0), ("b", 1)];
        let mut cache: RowGroupCache<u64> = RowGroupCache::new(seq.iter().copied(), 1000);
        cache.insert(0, "a", 0..4, vec![0, 1, 2, 3], 10);
        cache.release(0);
        assert_eq!(cache.len(), 1, "a:0-3 still needed at index 1");
        cache.release(1);
        assert!(cache.is_empty(), "nothing after index 1 reads shard a");
    }
}
