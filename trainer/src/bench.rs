//! Measurements behind `s3-train bench` (the GPU check `tests/gpu/run.sh` runs them
//! on CUDA): a training micro-step's samples/s, the loader's samples/s on the user's
//! own shards, and the gradient all-reduce's bandwidth through whichever
//! [`Collective`] the device calls for. They measure; they assert nothing beyond the
//! all-reduce's sum.

use std::time::Instant;

use burn::prelude::*;
use s3_shards::synthetic::Rng;

use crate::collective::Collective;
use crate::config::{AttentionMode, Precision};
use crate::error::{Result, TrainError};
use crate::loader::Item;
use crate::run_inputs::{model_config, seeded_model};
use crate::stage::StageConfig;
use crate::step::micro_step;

/// A sphere "organ" in noise, `side`³ (the shard crop size for the real presets).
pub fn phantom_item(side: usize, seed: u64) -> Item {
    let mut rng = Rng::new(seed);
    let c = side as f64 / 2.0;
    let r = side as f64 * 0.15;
    let mut image = vec![0f32; side * side * side];
    let mut mask = vec![0f32; side * side * side];
    for n in 0..image.len() {
        let (i, j, k) = ((n / (side * side)) as f64, (n / side % side) as f64, (n % side) as f64);
        let inside = ((i - c).powi(2) + (j - c * 0.8).powi(2) + (k - c * 1.1).powi(2)).sqrt() < r;
        mask[n] = f32::from(u8::from(inside));
        image[n] = if inside { 1.5 } else { -0.2 } + (rng.unit() as f32 - 0.5) * 0.3;
    }
    Item { position: seed, sample_id: format!("bench/{seed}"), image, mask }
}

/// Writes a small synthetic store at `url` (one dataset of `cases` CT-like cases, one
/// label each, as `s3-shards synth` does) for a training run to measure on.
pub fn phantom_store(url: &str, cases: usize) -> Result<()> {
    let loc = s3_shards::open_store(url, &s3_shards::StoreOptions::default())?;
    let opts = s3_shards::WriterOptions { row_group_rows: 2, ..Default::default() };
    s3_shards::io_runtime::io_runtime()?.block_on(s3_shards::synthetic::populate(loc.store(), 1, cases, 1, opts))?;
    Ok(())
}

/// What a model step is measured with.
#[derive(Clone, Debug)]
pub struct ModelBench {
    /// Preset (`vit_b_ori`, `small`).
    pub preset: String,
    /// Attention of the windowed blocks.
    pub attention: AttentionMode,
    /// Arithmetic of the encoder.
    pub precision: Precision,
    /// Samples per micro-batch.
    pub batch: usize,
    /// Decoder passes per sample (the paper trains with 11).
    pub clicks: usize,
    /// Timed micro-steps (after one warm-up).
    pub steps: usize,
}

/// Forward + backward of training micro-steps ([`micro_step`] and its backward, no
/// optimiser step): samples per second on `device`.
pub fn model_step(b: &ModelBench, device: &Device) -> Result<f64> {
    let stage: StageConfig = toml::from_str(&format!(
        "name = \"bench\"\npreset = \"{}\"\nepochs = 1\nclicks = {}\nbatch = {}\nattention = \"{}\"\nprecision = \"{}\"\n",
        b.preset,
        b.clicks,
        b.batch,
        serde_json::to_value(b.attention).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
        serde_json::to_value(b.precision).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
    ))
    .map_err(|e| TrainError::Parse { file: "the bench's stage".into(), source: Box::new(e) })?;
    let cfg = model_config(&stage)?;
    if cfg.precision == Precision::Bf16 && !device.supports_dtype(burn::tensor::FloatDType::BF16) {
        return Err(TrainError::Stage {
            stage: stage.name.clone(),
            reason: "precision bf16: this device has no bf16".into(),
        });
    }
    let ad = device.clone().autodiff();
    let model = seeded_model(&cfg, &ad, 1);
    let items: Vec<Item> = (0..b.batch as u64).map(|k| phantom_item(cfg.img_size, k + 1)).collect();
    let sync = || ad.sync().map_err(|e| TrainError::Device { device: format!("{ad:?}"), reason: format!("{e:?}") });
    let loss = micro_step(&model, &items, &stage, &cfg, 0, &ad).loss;
    drop(loss.backward()); // warm-up: kernels compiled, memory pools sized
    sync()?;
    let t = Instant::now();
    for k in 0..b.steps {
        let loss = micro_step(&model, &items, &stage, &cfg, k as u64 + 1, &ad).loss;
        drop(loss.backward());
    }
    sync()?;
    Ok((b.steps * b.batch) as f64 / t.elapsed().as_secs_f64())
}

/// One all-reduce size's timing.
#[derive(Clone, Copy, Debug)]
pub struct AllReduceRate {
    /// Mean seconds per all-reduce.
    pub secs: f64,
    /// Buffer bytes / time (nccl-tests' "algbw"), GB/s.
    pub algbw: f64,
    /// algbw × 2(world − 1)/world (nccl-tests' "busbw": what each link carried), GB/s.
    pub busbw: f64,
}

/// Sums a flat f32 buffer of `bytes` on `device` through `c`, `iters` times after one
/// warm-up (which also checks the sum).
pub fn all_reduce(c: &mut dyn Collective, bytes: usize, iters: usize, device: &Device) -> Result<AllReduceRate> {
    let n = bytes / 4;
    let world = c.world() as f32;
    let mut t = c.all_reduce_sum_tensor(Tensor::<1>::ones([n], device))?; // every element: world
    let probe: Vec<f32> = t.clone().slice(0..1).into_data().convert::<f32>().try_into_vec::<f32>().expect("f32");
    if probe[0] != world {
        return Err(TrainError::Collective(format!("all-reduce of ones gave {} on {world} ranks", probe[0])));
    }
    let start = Instant::now();
    for _ in 0..iters {
        t = c.all_reduce_sum_tensor(t)?;
    }
    device.sync().map_err(|e| TrainError::Device { device: format!("{device:?}"), reason: format!("{e:?}") })?;
    let secs = start.elapsed().as_secs_f64() / iters.max(1) as f64;
    let algbw = bytes as f64 / secs / 1e9;
    let w = c.world() as f64;
    Ok(AllReduceRate { secs, algbw, busbw: algbw * 2.0 * (w - 1.0) / w })
}

/// `v[i] = (i mod 997) / 2 + rank`: values that differ along the buffer and between
/// ranks, exact in f32, whose average over `world` ranks is `(i mod 997) / 2 + (world - 1) / 2`.
fn verify_value(i: usize, rank: f32) -> f32 {
    (i % 997) as f32 * 0.5 + rank
}

/// What the average over ranks must leave at element `i`.
fn verify_expected(i: usize, world: usize) -> f32 {
    verify_value(i, (world as f32 - 1.0) / 2.0)
}

/// The elements whose read-back proves each bucket was reduced where it lies: the
/// first and last of every bucket, and one in its middle.
fn probes(len: usize, bucket: usize) -> Vec<usize> {
    let mut at: Vec<usize> = crate::collective::flat::buckets(len, bucket)
        .into_iter()
        .flat_map(|b| [b.start, b.start + b.len() / 2, b.end - 1])
        .collect();
    at.dedup();
    at
}

/// Checks `got` (the average read back) at the probes against what the ranks sent:
/// the number of probes checked, or the first that is wrong.
fn check_average(got: &[f32], world: usize, bucket: usize) -> std::result::Result<usize, String> {
    let at = probes(got.len(), bucket);
    for &i in &at {
        let want = verify_expected(i, world);
        if (got[i] - want).abs() > 1e-3 {
            return Err(format!(
                "element {i} (bucket {}): {} where the average over {world} rank(s) is {want}",
                i / bucket,
                got[i]
            ));
        }
    }
    Ok(at.len())
}

/// `bench all-reduce --verify`: averages non-trivial values of `n` elements over the
/// ranks, out of place, through the buckets training uses, and reads every bucket's
/// first, middle and last element back against what they must be (and the sent
/// tensor unchanged). What it checked, in one line.
pub fn verify_all_reduce(c: &mut dyn Collective, n: usize, device: &Device) -> Result<String> {
    let rank = c.rank() as f32;
    let world = c.world();
    let values: Vec<f32> = (0..n).map(|i| verify_value(i, rank)).collect();
    let send = Tensor::<1>::from_data(TensorData::new(values, [n]), device);
    let got = c.all_reduce_avg_into_new(&send)?;
    let read = |t: Tensor<1>| t.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 after convert");
    let bucket = crate::collective::flat::bucket_elems();
    let checked = check_average(&read(got), world, bucket)
        .map_err(|e| TrainError::Collective(format!("all-reduce verify: {e}")))?;
    let sent = read(send);
    if let Some(i) = probes(n, bucket).into_iter().find(|&i| sent[i] != verify_value(i, rank)) {
        return Err(TrainError::Collective(format!("all-reduce verify: the sent buffer changed at element {i}")));
    }
    Ok(format!(
        "verified: {checked} probes over {} bucket(s) of {n} elements, average over {world} rank(s) via {}",
        n.div_ceil(bucket),
        c.kind()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::{self, CollectiveOptions};

    #[test]
    fn the_verify_check_catches_a_bucket_reduced_elsewhere() {
        let (world, bucket, n) = (2, 1000, 2500);
        let good: Vec<f32> = (0..n).map(|i| verify_expected(i, world)).collect();
        assert_eq!(check_average(&good, world, bucket), Ok(9), "3 probes in each of 3 buckets");
        // The second bucket was never written (a wrong offset): zeros where values belong.
        let mut missed = good.clone();
        missed[1000..2000].fill(0.0);
        let e = check_average(&missed, world, bucket).unwrap_err();
        assert!(e.contains("bucket 1"), "{e}");
        // Summed instead of averaged.
        let summed: Vec<f32> = good.iter().map(|v| v * 2.0).collect();
        assert!(check_average(&summed, world, bucket).is_err());
    }

    /// `each` on both ranks of a two-rank TCP collective, one thread each; their results.
    fn on_two_tcp_ranks<T: Send + 'static>(
        each: impl Fn(&mut dyn Collective, &Device) -> T + Send + Sync + Copy + 'static,
    ) -> Vec<T> {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let hs: Vec<_> = (0..2)
            .map(|rank| {
                let addr = addr.clone();
                std::thread::spawn(move || {
                    let device = Device::flex();
                    let mut c = collective::join(&addr, rank, 2, &CollectiveOptions::default(), &device).unwrap();
                    each(c.as_mut(), &device)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn verify_passes_over_two_tcp_ranks() {
        for line in on_two_tcp_ranks(|c, device| verify_all_reduce(c, 5000, device).unwrap()) {
            assert!(line.contains("average over 2 rank(s) via tcp"), "{line}");
        }
    }

    #[test]
    fn the_all_reduce_bench_runs_through_the_collective_the_device_picks() {
        let rates = on_two_tcp_ranks(|c, device| {
            assert_eq!(c.kind(), "tcp");
            all_reduce(c, 1 << 20, 2, device).unwrap()
        });
        for r in rates {
            assert!(r.secs > 0.0 && r.busbw == r.algbw, "{r:?}");
        }
    }
}

/// What the loader bench read.
#[derive(Clone, Debug)]
pub struct LoaderRate {
    /// Samples decoded, verified, flipped and normalised.
    pub samples: usize,
    /// Samples that could not be read (named in the loader's errors).
    pub failed: usize,
    /// Wall seconds.
    pub seconds: f64,
    /// What was read, in order: (shard key, row), for a reference to read the same.
    pub order: Vec<(String, u64)>,
}

impl LoaderRate {
    /// Samples per second.
    pub fn per_second(&self) -> f64 {
        self.samples as f64 / self.seconds.max(1e-9)
    }
}

/// The loader on a published store, as one rank of the trainer reads it (the
/// sampler's order, shard window 4) with `threads` decoding threads, over the first
/// `samples` positions (how many loader threads one GPU's step rate needs).
pub fn loader(data: &s3_shards::StoreLocation, threads: usize, samples: usize) -> Result<LoaderRate> {
    let rt = s3_shards::io_runtime::io_runtime()?;
    let rows = rt.block_on(s3_shards::samples_table::read(data.store().as_ref()))?;
    if rows.is_empty() {
        return Err(TrainError::Data { store: data.url().to_string(), reason: "has no samples".into() });
    }
    let sampler = crate::sampler::Sampler::from_rows(&rows, 1, 4);
    let mut positions = sampler.rank_positions(crate::sampler::SamplerState::default(), 0, 1);
    positions.truncate(samples.max(1));
    let order = positions.iter().map(|(_, r)| (r.shard.clone(), r.row)).collect();
    let start = Instant::now();
    let cfg = crate::loader::LoaderConfig { threads: threads.max(1), ..crate::loader::LoaderConfig::default() };
    let (samples, failed) =
        crate::loader::Loader::start(data.store().clone(), positions, cfg).fold((0, 0), |(ok, bad), l| match l {
            crate::loader::Loaded::Item(_) => (ok + 1, bad),
            _ => (ok, bad + 1),
        });
    let seconds = start.elapsed().as_secs_f64();
    Ok(LoaderRate { samples, failed, seconds, order })
}

/// `bench loader --epochs`: one rank of a job reading whole epochs, as training
/// reads them (the node-aware order with a cache, the plan told to the cache).
#[derive(Clone, Debug)]
pub struct LoaderEpochs {
    /// Epochs to read.
    pub epochs: u64,
    /// This rank, its world and the job's nodes (ranks in blocks per node).
    pub rank: usize,
    /// Ranks of the job.
    pub world: usize,
    /// Nodes of the job.
    pub nodes: usize,
    /// Decoding threads.
    pub threads: usize,
    /// The node-local cache (`None`: every read streams).
    pub cache: Option<crate::shard_cache::CacheSettings>,
    /// Node-aware order (`None`: on with a cache).
    pub node_order: Option<bool>,
}

/// What one epoch of [`loader_epochs`] read.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EpochRead {
    /// Epoch (0-based).
    pub epoch: u64,
    /// Samples delivered.
    pub samples: usize,
    /// Samples that could not be read.
    pub failed: usize,
    /// Bytes read from the data store (downloads and streamed reads).
    pub store_bytes: u64,
    /// Shards fetched into the cache by this rank.
    pub downloads: u64,
    /// Wall seconds.
    pub seconds: f64,
}

/// Reads `b.epochs` epochs of rank `b.rank`'s share of `data`, counting the bytes
/// that crossed the network per epoch. Without a cache the reads go through a cache
/// that holds nothing, which streams every read and counts it the same way.
pub fn loader_epochs(data: &s3_shards::StoreLocation, b: &LoaderEpochs) -> Result<Vec<EpochRead>> {
    use std::sync::atomic::Ordering::Relaxed;
    let rt = s3_shards::io_runtime::io_runtime()?;
    let index = rt.block_on(s3_shards::ShardIndex::load(data.store().as_ref()))?;
    let rows = rt.block_on(s3_shards::samples_table::read(data.store().as_ref()))?;
    let rows: Vec<_> = rows.into_iter().filter(|r| r.split == s3_shards::Split::Train).collect();
    if rows.is_empty() {
        return Err(TrainError::Data { store: data.url().to_string(), reason: "has no train samples".into() });
    }
    if b.world == 0 || b.rank >= b.world || b.nodes == 0 || b.nodes > b.world {
        return Err(TrainError::Launch(format!("rank {} of {} on {} node(s)", b.rank, b.world, b.nodes)));
    }
    let scratch = crate::checkpoint::temp_dir()?;
    let (dir, limit) = match &b.cache {
        Some(c) => (c.dir.clone(), c.limit),
        None => (scratch.path().to_path_buf(), 0),
    };
    let cache = crate::shard_cache::ShardCache::new(data.store().clone(), &index, dir.clone(), limit)
        .map_err(|error| TrainError::Io { file: dir.display().to_string(), error })?;
    let store: std::sync::Arc<dyn object_store::ObjectStore> = cache.clone();
    let stats = cache.stats();
    let on = b.node_order.unwrap_or(b.cache.is_some());
    let nodes = if on && b.world % b.nodes == 0 { b.nodes as u64 } else { 1 };
    let sampler = crate::sampler::Sampler::from_rows(&rows, 1, 4);
    let mut out = Vec::new();
    for epoch in 0..b.epochs {
        let positions = sampler.rank_positions(crate::sampler::SamplerState::start(epoch, nodes), b.rank, b.world);
        cache.plan(positions.iter().map(|(_, r)| r.shard.clone()));
        let (bytes0, downloads0) = (stats.store_bytes.load(Relaxed), stats.downloads.load(Relaxed));
        let start = Instant::now();
        let cfg = crate::loader::LoaderConfig { threads: b.threads.max(1), epoch, ..Default::default() };
        let (samples, failed) =
            crate::loader::Loader::start(store.clone(), positions, cfg).fold((0, 0), |(ok, bad), l| match l {
                crate::loader::Loaded::Item(_) => (ok + 1, bad),
                _ => (ok, bad + 1),
            });
        rt.block_on(cache.settle());
        out.push(EpochRead {
            epoch,
            samples,
            failed,
            store_bytes: stats.store_bytes.load(Relaxed) - bytes0,
            downloads: stats.downloads.load(Relaxed) - downloads0,
            seconds: start.elapsed().as_secs_f64(),
        });
    }
    Ok(out)
}

/// `s3-train bench all-reduce`: joins the job's collective as the launch environment
/// (and the flags) say, times `iters` all-reduces of `mb` MB, and says how it went.
pub fn all_reduce_launched(
    flags: &crate::launch_env::LaunchFlags,
    mb: usize,
    iters: usize,
    io_timeout: std::time::Duration,
    device_name: &str,
    device: Device,
    verify: bool,
) -> Result<String> {
    let launch = crate::launch_env::from_env(flags)?;
    let device = crate::device::rank_device(device_name, launch.local_rank, device)?;
    // One rank needs no peers: any free port will do.
    let addr = match (&launch.master, launch.world) {
        (Some(a), _) => a.clone(),
        (None, 1) => "127.0.0.1:0".into(),
        (None, w) => {
            return Err(TrainError::Launch(format!(
                "world size {w} needs --master HOST:PORT (or MASTER_ADDR and MASTER_PORT)"
            )));
        }
    };
    let options =
        crate::collective::CollectiveOptions { io_timeout, token: launch.job_token.clone(), ..Default::default() };
    let mut c = crate::collective::join(&addr, launch.rank, launch.world, &options, &device)?;
    let verified = match verify {
        true => format!("{}\n", verify_all_reduce(c.as_mut(), mb * 1_000_000 / 4, &device)?),
        false => String::new(),
    };
    let r = all_reduce(c.as_mut(), mb * 1_000_000, iters, &device)?;
    Ok(format!(
        "{verified}bench all-reduce rank {}/{} {} {mb} MB: {:.2} ms, algbw {:.2} GB/s, busbw {:.2} GB/s",
        launch.rank,
        launch.world,
        c.kind(),
        r.secs * 1e3,
        r.algbw,
        r.busbw
    ))
}
