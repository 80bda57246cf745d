//! Shard write/read throughput against plain zstd, printed as ratios (never asserted).
//!
//! `cargo bench -p s3-shards --bench shard_io` (env `N` = samples, default 48).

use std::time::Instant;

use s3_shards::sample::{IMAGE_BYTES, MASK_BYTES, image_le_bytes};
use s3_shards::{ShardReader, WriterOptions, open_store, synthetic, write_samples};

fn main() {
    let n: usize = std::env::var("N").ok().and_then(|v| v.parse().ok()).unwrap_or(48);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let samples: Vec<_> =
        (0..n).map(|i| synthetic::ct_like("BENCH", "default", &format!("case{i:04}"), 1, i as u64).unwrap()).collect();
    let raw = (n * (IMAGE_BYTES + MASK_BYTES)) as f64;
    let mib = |b: f64| b / 1048576.0;
    println!("{n} synthetic CT-like 128³ samples, {:.0} MiB raw (image int16 + packed mask), one core", mib(raw));

    for level in [1, 3] {
        let loc = open_store(&format!("memory://bench-{level}"), &Default::default()).unwrap();
        let opts = WriterOptions { zstd_level: level, ..Default::default() };
        let t = Instant::now();
        let shards =
            rt.block_on(write_samples(loc.store().clone(), "BENCH", "default", samples.clone(), opts)).unwrap();
        let secs = t.elapsed().as_secs_f64();
        let stored: u64 = shards.iter().map(|s| s.bytes).sum();
        println!(
            "write zstd-{level}: {:7.1} MiB/s raw in, ratio {:.2} ({:.0} MiB stored)",
            mib(raw) / secs,
            raw / stored as f64,
            mib(stored as f64)
        );
        if level != 3 {
            continue;
        }
        let t = Instant::now();
        let mut read = 0;
        for s in &shards {
            let r = rt.block_on(ShardReader::open(loc.store().clone(), &s.path.as_str().into())).unwrap();
            read += rt.block_on(r.read_all()).unwrap().len();
        }
        let shard_rate = read as f64 / t.elapsed().as_secs_f64();
        // The floor: the same image+mask bytes as independent zstd-3 frames, decoded.
        let frames: Vec<Vec<u8>> = samples
            .iter()
            .map(|s| {
                let mut b = image_le_bytes(&s.image);
                b.extend_from_slice(&s.mask);
                zstd::encode_all(&b[..], 3).unwrap()
            })
            .collect();
        let t = Instant::now();
        let mut total = 0usize;
        for f in &frames {
            total += zstd::decode_all(&f[..]).unwrap().len();
        }
        let zstd_rate = n as f64 / t.elapsed().as_secs_f64();
        assert_eq!(total as f64, raw);
        println!(
            "read+decode+checksum: {shard_rate:7.1} samples/s ({:.0} MiB/s raw out)",
            shard_rate * raw / n as f64 / 1048576.0
        );
        println!(
            "plain zstd decode:    {zstd_rate:7.1} samples/s ({:.0} MiB/s raw out)",
            zstd_rate * raw / n as f64 / 1048576.0
        );
        println!("ratio shard read / plain zstd: {:.2}", shard_rate / zstd_rate);
    }
}
