//! Streaming samples of one rank from shards on any store (DESIGN §6): prefetched on a
//! background thread within a bounded queue, checksums verified (a corrupted sample
//! is reported and skipped, never trained on), decoded, randomly flipped per axis and
//! z-normalised per sample over voxels > 0.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use object_store::ObjectStore;
use object_store::path::Path;
use s3_shards::synthetic::Rng;
use s3_shards::{SIDE, Sample, ShardReader};
use xxhash_rust::xxh3::xxh3_64;

use crate::row_cache::RowGroupCache;
use crate::sampler::SampleRef;

/// Loader settings.
#[derive(Clone, Debug)]
pub struct LoaderConfig {
    /// Decoded samples queued ahead of the trainer.
    pub prefetch: usize,
    /// Bytes of decoded row groups kept for later positions (a group of 16 rows is
    /// ~68 MiB): the shard-window shuffle revisits groups, and a group evicted too
    /// early is decoded again. See [`crate::row_cache`].
    pub cache_bytes: usize,
    /// RandomFlip on each axis with p = 0.5.
    pub flip: bool,
    /// Seed of the flips (combined with epoch and position).
    pub seed: u64,
    /// Epoch (for the flip seed).
    pub epoch: u64,
    /// Attempts after the first for a read that fails at the store (the store
    /// client has retried each request already); then the loader yields
    /// [`Loaded::Failed`].
    pub read_retries: u32,
    /// First pause between those attempts; doubles each time.
    pub retry_backoff: std::time::Duration,
    /// Decoding threads. Each takes whole row groups (so no two decode the same one)
    /// with its share of `cache_bytes`; the items still come in position order.
    pub threads: usize,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            prefetch: 4,
            cache_bytes: 512 << 20,
            flip: true,
            seed: 0,
            epoch: 0,
            read_retries: 3,
            retry_backoff: std::time::Duration::from_millis(500),
            threads: 1,
        }
    }
}

/// One decoded training sample.
#[derive(Clone, Debug)]
pub struct Item {
    /// Global position in the epoch.
    pub position: u64,
    /// `dataset/task/case/label`
    pub sample_id: String,
    /// 128³ z-normalised intensities, C order.
    pub image: Vec<f32>,
    /// 128³ mask, 0/1.
    pub mask: Vec<f32>,
}

/// What the loader yields.
#[derive(Debug)]
pub enum Loaded {
    /// A sample to train on.
    Item(Item),
    /// A sample whose data is bad (checksum mismatch, an undecodable row), with why:
    /// reported and never trained on.
    Skipped {
        /// Global position.
        position: u64,
        /// Sample.
        sample_id: String,
        /// Why.
        reason: String,
    },
    /// The store kept failing for this sample (a GET that failed after every retry,
    /// a shard the sample table lists but the store does not have). Nothing follows:
    /// the run must stop, not train without it.
    Failed {
        /// Global position.
        position: u64,
        /// Sample.
        sample_id: String,
        /// The last store error.
        error: s3_shards::ShardError,
    },
}

/// Why a sample could not be prepared.
enum Fault {
    /// The data is bad: skip the sample.
    Data(String),
    /// The store failed: retry, then stop.
    Store(s3_shards::ShardError),
}

impl From<s3_shards::ShardError> for Fault {
    fn from(e: s3_shards::ShardError) -> Fault {
        if is_store_failure(&e) { Fault::Store(e) } else { Fault::Data(e.to_string()) }
    }
}

/// True when an object-store error is anywhere in the chain (a Parquet read wraps
/// the GET that failed under it).
fn is_store_failure(e: &s3_shards::ShardError) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<object_store::Error>().is_some() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Rows per row group the partition between threads assumes (the writer's default):
/// when a store's groups differ, two threads may decode one group, which costs time,
/// never correctness.
fn group_rows() -> u64 {
    s3_shards::WriterOptions::default().row_group_rows.max(1) as u64
}

/// One decoding thread and its queue.
struct Part {
    rx: Receiver<Loaded>,
    thread: Option<JoinHandle<()>>,
}

/// A running loader; iterate it.
pub struct Loader {
    parts: Vec<Part>,
    /// Which part holds each position, in order.
    order: Vec<u16>,
    next: usize,
    stopped: bool,
}

impl Iterator for Loader {
    type Item = Loaded;
    fn next(&mut self) -> Option<Loaded> {
        if self.stopped || self.next >= self.order.len() {
            return None;
        }
        let part = &mut self.parts[usize::from(self.order[self.next])];
        self.next += 1;
        match part.rx.recv() {
            Ok(l) => {
                // Nothing follows a failure, from any thread.
                self.stopped = matches!(l, Loaded::Failed { .. });
                Some(l)
            }
            Err(_) => {
                // The producer is gone before its last position: it panicked. That must
                // not look like the end of the epoch (samples would be silently dropped).
                self.stopped = true;
                if let Some(t) = part.thread.take()
                    && let Err(payload) = t.join()
                {
                    std::panic::resume_unwind(payload);
                }
                None
            }
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Dropping a receiver makes its producer's next send fail; then join.
        for part in &mut self.parts {
            let (_tx, rx) = sync_channel(1);
            drop(std::mem::replace(&mut part.rx, rx));
        }
        for part in &mut self.parts {
            if let Some(t) = part.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Loader {
    /// Starts streaming `positions` (in order) from `store`.
    pub fn start(store: Arc<dyn ObjectStore>, positions: Vec<(u64, SampleRef)>, cfg: LoaderConfig) -> Loader {
        let threads = cfg.threads.clamp(1, 64);
        // Row groups go to the threads in turn, in the order they are first needed.
        let group = group_rows();
        let mut owner: HashMap<(&str, u64), u16> = HashMap::new();
        let order: Vec<u16> = positions
            .iter()
            .map(|(_, r)| {
                let n = owner.len();
                *owner.entry((r.shard.as_str(), r.row / group)).or_insert((n % threads) as u16)
            })
            .collect();
        drop(owner);
        let mut shares: Vec<Vec<(u64, SampleRef)>> = vec![Vec::new(); threads];
        for (p, &t) in positions.into_iter().zip(&order) {
            shares[usize::from(t)].push(p);
        }
        let cfg = LoaderConfig { cache_bytes: cfg.cache_bytes / threads, ..cfg };
        let parts = shares
            .into_iter()
            .enumerate()
            .map(|(t, share)| {
                let (tx, rx) = sync_channel(cfg.prefetch.max(1));
                let (store, cfg) = (store.clone(), cfg.clone());
                let thread = std::thread::Builder::new()
                    .name(format!("loader-{t}"))
                    .spawn(move || produce(store, share, cfg, tx))
                    .expect("spawn loader");
                Part { rx, thread: Some(thread) }
            })
            .collect();
        Loader { parts, order, next: 0, stopped: false }
    }
}

/// One thread's work: its positions in order, each sample read through the row-group
/// cache, prepared and queued; stops after a store failure.
fn produce(
    store: Arc<dyn ObjectStore>,
    positions: Vec<(u64, SampleRef)>,
    cfg: LoaderConfig,
    tx: std::sync::mpsc::SyncSender<Loaded>,
) {
    let rt = match s3_shards::io_runtime::io_runtime() {
        Ok(rt) => rt,
        Err(error) => {
            let first = positions.first().map(|(p, r)| (*p, r.sample_id.clone())).unwrap_or_default();
            let _ = tx.send(Loaded::Failed { position: first.0, sample_id: first.1, error });
            return;
        }
    };
    let mut readers: HashMap<String, Arc<ShardReader>> = HashMap::new();
    let mut cache: RowGroupCache<Result<Sample, String>> =
        RowGroupCache::new(positions.iter().map(|(_, r)| (r.shard.as_str(), r.row)), cfg.cache_bytes);
    for (now, (position, r)) in positions.iter().enumerate() {
        let mut attempt = 0;
        let got = loop {
            // Prepared straight from the cached row: no copy of the decoded sample.
            let got = rt
                .block_on(ensure_cached(&store, &mut readers, &mut cache, now, r))
                .and_then(|()| cached_sample(&cache, r).map_err(Fault::Data))
                .map(|sample| prepare(*position, &r.sample_id, sample, &cfg));
            match got {
                Err(Fault::Store(e)) if attempt < cfg.read_retries => {
                    let pause = cfg.retry_backoff * 2u32.saturating_pow(attempt);
                    tracing::warn!("reading {}: {e}; retrying in {pause:?}", r.sample_id);
                    std::thread::sleep(pause);
                    readers.remove(&r.shard);
                    attempt += 1;
                }
                other => break other,
            }
        };
        cache.release(now);
        let (out, stop) = match got {
            Ok(item) => (Loaded::Item(item), false),
            Err(Fault::Data(reason)) => {
                (Loaded::Skipped { position: *position, sample_id: r.sample_id.clone(), reason }, false)
            }
            Err(Fault::Store(error)) => {
                (Loaded::Failed { position: *position, sample_id: r.sample_id.clone(), error }, true)
            }
        };
        if tx.send(out).is_err() || stop {
            return;
        }
    }
}

/// Decodes the row group holding `r` into the cache unless it is there.
async fn ensure_cached(
    store: &Arc<dyn ObjectStore>,
    readers: &mut HashMap<String, Arc<ShardReader>>,
    cache: &mut RowGroupCache<Result<Sample, String>>,
    now: usize,
    r: &SampleRef,
) -> Result<(), Fault> {
    if cache.get(&r.shard, r.row).is_none() {
        if !readers.contains_key(&r.shard) {
            let reader = ShardReader::open(store.clone(), &Path::from(r.shard.as_str())).await?;
            readers.insert(r.shard.clone(), Arc::new(reader));
        }
        let reader = readers[&r.shard].clone();
        let mut start = 0u64;
        let mut group = None;
        for (g, n) in reader.row_group_rows().into_iter().enumerate() {
            if r.row < start + n {
                group = Some((g, start..start + n));
                break;
            }
            start += n;
        }
        let (g, rows) = group.ok_or_else(|| Fault::Data(format!("row {} beyond the end of {}", r.row, r.shard)))?;
        let decoded: Vec<Result<Sample, String>> =
            reader.read_row_group_each(g).await?.into_iter().map(|s| s.map_err(|e| e.to_string())).collect();
        let bytes = decoded.iter().map(|s| s.as_ref().map_or(64, |s| s.image.len() * 2 + s.mask.len() + 512)).sum();
        cache.insert(now, &r.shard, rows, decoded, bytes);
    }
    Ok(())
}

/// The cached row for `r`, checked to be the sample the table names.
fn cached_sample<'a>(cache: &'a RowGroupCache<Result<Sample, String>>, r: &SampleRef) -> Result<&'a Sample, String> {
    let s = cache
        .get(&r.shard, r.row)
        .ok_or_else(|| format!("row {} missing in {}", r.row, r.shard))?
        .as_ref()
        .map_err(Clone::clone)?;
    if s.sample_id() != r.sample_id {
        return Err(format!(
            "{} row {} holds {}, the sample table says {}",
            r.shard,
            r.row,
            s.sample_id(),
            r.sample_id
        ));
    }
    Ok(s)
}

/// Decode, flip and normalise one sample, in two passes over the stored int16
/// voxels (the z-normalisation's sums, then one write of each output voxel from its
/// flipped source) instead of five over f32 copies: the loader is memory-bound.
pub fn prepare(position: u64, sample_id: &str, s: &Sample, cfg: &LoaderConfig) -> Item {
    let axes = if cfg.flip {
        let mut rng = Rng::new(cfg.seed ^ xxh3_64(&[cfg.epoch.to_le_bytes(), position.to_le_bytes()].concat()));
        std::array::from_fn(|_| rng.unit() < 0.5)
    } else {
        [false; 3]
    };
    let (scale, offset) = (s.image_scale, s.image_offset);
    let (m, inv) = positive_stats(s.image.iter().map(|&q| f32::from(q) * scale + offset)).unwrap_or((0.0, 1.0));
    let n = SIDE;
    let mut image = Vec::with_capacity(s.image.len());
    let mut mask = Vec::with_capacity(s.image.len());
    let (mut img_row, mut mask_row) = ([0f32; SIDE], [0f32; SIDE]);
    for i in 0..n {
        let si = if axes[0] { n - 1 - i } else { i };
        for j in 0..n {
            let sj = if axes[1] { n - 1 - j } else { j };
            let row = (si * n + sj) * n;
            // Whole rows through small buffers: straight loops the compiler vectorises,
            // then one reversal of 128 values where k flips.
            for (o, &q) in img_row.iter_mut().zip(&s.image[row..row + n]) {
                *o = (f32::from(q) * scale + offset - m) * inv;
            }
            for (o, &byte) in mask_row.chunks_exact_mut(8).zip(&s.mask[row / 8..(row + n) / 8]) {
                o.copy_from_slice(&MASK_BYTE[usize::from(byte)]);
            }
            if axes[2] {
                img_row.reverse();
                mask_row.reverse();
            }
            image.extend_from_slice(&img_row);
            mask.extend_from_slice(&mask_row);
        }
    }
    Item { position, sample_id: sample_id.to_string(), image, mask }
}

/// Each mask byte as its 8 voxels (LSB first), 0.0 or 1.0.
static MASK_BYTE: [[f32; 8]; 256] = {
    let mut t = [[0f32; 8]; 256];
    let mut b = 0;
    while b < 256 {
        let mut k = 0;
        while k < 8 {
            t[b][k] = ((b >> k) & 1) as f32;
            k += 1;
        }
        b += 1;
    }
    t
};

/// Mean and 1/std over the values > 0 (f64 sums), or None when there are too few
/// or they are constant (the volume is then left as it is).
fn positive_stats(values: impl Iterator<Item = f32>) -> Option<(f32, f32)> {
    let (mut n, mut sum, mut sq) = (0f64, 0f64, 0f64);
    for x in values.filter(|&x| x > 0.0) {
        n += 1.0;
        sum += f64::from(x);
        sq += f64::from(x) * f64::from(x);
    }
    if n < 2.0 {
        return None;
    }
    let mean = sum / n;
    let std = ((sq / n - mean * mean).max(0.0)).sqrt();
    // The sums need f64; the per-voxel map does not (one f32 multiply-add).
    (std >= 1e-8).then_some((mean as f32, (1.0 / std) as f32))
}

/// The packed mask (LSB first) as 0/1 floats, in one pass and one allocation.
#[cfg(test)]
fn mask_f32(bits: &[u8], voxels: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(voxels);
    for &byte in bits {
        out.extend((0..8).map(|b| f32::from((byte >> b) & 1)));
    }
    out.truncate(voxels);
    out.resize(voxels, 0.0);
    out
}

/// Flips a C-order 128³ volume along the chosen axes, in place: rows reversed,
/// rows swapped within each plane, planes swapped; no copy of the volume and no
/// per-voxel index arithmetic.
pub fn flip(v: &mut [f32], axes: [bool; 3]) {
    let n = SIDE;
    let plane = n * n;
    if axes[2] {
        v.chunks_exact_mut(n).for_each(<[f32]>::reverse);
    }
    if axes[1] {
        for p in v.chunks_exact_mut(plane) {
            for j in 0..n / 2 {
                let (front, back) = p.split_at_mut((n - 1 - j) * n);
                front[j * n..(j + 1) * n].swap_with_slice(&mut back[..n]);
            }
        }
    }
    if axes[0] {
        for i in 0..n / 2 {
            let (front, back) = v.split_at_mut((n - 1 - i) * plane);
            front[i * plane..(i + 1) * plane].swap_with_slice(&mut back[..plane]);
        }
    }
}

/// z-normalisation with mean and std over voxels > 0, applied to the whole sample
/// (per sample: the reference normalised a whole batch together, a bug).
pub fn znormalize(v: &mut [f32]) {
    if let Some((m, inv)) = positive_stats(v.iter().copied()) {
        for x in v.iter_mut() {
            *x = (*x - m) * inv;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flip as the index formula states it: out[i,j,k] = in[i', j', k'].
    fn flip_by_index(src: &[f32], axes: [bool; 3]) -> Vec<f32> {
        let n = SIDE;
        let mut out = vec![0.0; src.len()];
        for i in 0..n {
            let si = if axes[0] { n - 1 - i } else { i };
            for j in 0..n {
                let sj = if axes[1] { n - 1 - j } else { j };
                for k in 0..n {
                    let sk = if axes[2] { n - 1 - k } else { k };
                    out[(i * n + j) * n + k] = src[(si * n + sj) * n + sk];
                }
            }
        }
        out
    }

    #[test]
    fn the_in_place_flip_equals_the_index_formula_on_every_axis_combination() {
        let orig: Vec<f32> = (0..SIDE * SIDE * SIDE).map(|i| i as f32).collect();
        for a in 0..8u8 {
            let axes = [a & 1 != 0, a & 2 != 0, a & 4 != 0];
            let mut v = orig.clone();
            flip(&mut v, axes);
            assert!(v == flip_by_index(&orig, axes), "axes {axes:?}");
        }
    }

    #[test]
    fn the_mask_decodes_lsb_first() {
        assert_eq!(
            mask_f32(&[0b0000_0101, 0b1000_0000], 16),
            [1., 0., 1., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 1.]
        );
        let bits: Vec<u8> = (0..=255).collect();
        let bools = s3_shards::mask::unpack(&bits, 2048);
        let floats = mask_f32(&bits, 2048);
        assert!(bools.iter().zip(&floats).all(|(&b, &f)| f == f32::from(u8::from(b))));
    }

    #[test]
    fn flip_twice_is_identity_and_moves_voxels() {
        let mut v: Vec<f32> = (0..SIDE * SIDE * SIDE).map(|i| i as f32).collect();
        let orig = v.clone();
        flip(&mut v, [true, false, true]);
        assert_eq!(v[0], orig[(127 * SIDE) * SIDE + 127]);
        flip(&mut v, [true, false, true]);
        assert_eq!(v, orig);
    }

    /// The fused decode equals the pipeline it replaces: dequantise, flip the image
    /// and the mask, z-normalise.
    #[test]
    fn prepare_equals_decode_then_flip_then_normalise() {
        let sample = s3_shards::synthetic::ct_like("D", "t", "c", 1, 5).unwrap();
        for epoch in 0..6 {
            let cfg = LoaderConfig { flip: true, epoch, ..LoaderConfig::default() };
            let item = prepare(3, "x", &sample, &cfg);
            let mut rng = Rng::new(cfg.seed ^ xxh3_64(&[cfg.epoch.to_le_bytes(), 3u64.to_le_bytes()].concat()));
            let axes: [bool; 3] = std::array::from_fn(|_| rng.unit() < 0.5);
            let mut image = sample.image_f32();
            let mut mask = mask_f32(&sample.mask, image.len());
            flip(&mut image, axes);
            flip(&mut mask, axes);
            znormalize(&mut image);
            assert!(item.mask == mask, "mask, axes {axes:?}");
            let worst = item.image.iter().zip(&image).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst <= 1e-5, "image, axes {axes:?}: {worst}");
        }
    }

    /// Three threads deliver what one does, item for item, in the same order.
    #[test]
    fn threads_take_whole_row_groups_and_keep_the_order() {
        let rt = s3_shards::io_runtime::io_runtime().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let opts = s3_shards::WriterOptions { row_group_rows: group_rows() as usize, ..Default::default() };
        rt.block_on(s3_shards::synthetic::populate(&store, 2, 20, 1, opts)).unwrap();
        let rows = rt.block_on(s3_shards::samples_table::read(store.as_ref())).unwrap();
        let sampler = crate::sampler::Sampler::from_rows(&rows, 3, 2);
        let positions = sampler.rank_positions(crate::sampler::SamplerState::default(), 0, 1);
        let run = |threads| {
            let cfg = LoaderConfig { threads, ..LoaderConfig::default() };
            Loader::start(store.clone(), positions.clone(), cfg)
                .map(|l| match l {
                    Loaded::Item(i) => {
                        let bytes: Vec<u8> = i.image.iter().chain(&i.mask).flat_map(|v| v.to_le_bytes()).collect();
                        (i.position, i.sample_id, xxh3_64(&bytes))
                    }
                    other => panic!("{other:?}"),
                })
                .collect::<Vec<_>>()
        };
        let one = run(1);
        assert_eq!(one.len(), positions.len());
        assert!(one.windows(2).all(|w| w[0].0 < w[1].0), "positions in order");
        assert_eq!(run(3), one);
    }

    #[test]
    fn znormalize_uses_positive_voxels() {
        let mut v = vec![0.0f32, 0.0, 2.0, 4.0, 6.0];
        znormalize(&mut v);
        let fg: Vec<f32> = v[2..].to_vec();
        let mean: f32 = fg.iter().sum::<f32>() / 3.0;
        assert!(mean.abs() < 1e-6, "{v:?}");
        assert!(v[0] < -1.0, "background maps below the foreground mean: {v:?}");
    }
}
