//! A reader polling `index.json` while it is re-published never sees a partial
//! document, and the test counts the reads that overlapped a write (so it cannot pass
//! by never racing).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use s3_shards::{ShardError, ShardIndex, ShardMeta};

fn big_index(generation: u64) -> ShardIndex {
    // ~1 MiB of JSON so a non-atomic write would be caught mid-way.
    let shards = (0..4000)
        .map(|i| ShardMeta {
            path: format!("shards/DS{}/default/part-{i:05}.parquet", i % 40),
            dataset: format!("DS{}", i % 40),
            task: "default".into(),
            rows: generation,
            bytes: 1000 + i,
            xxh3: generation.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i,
        })
        .collect();
    ShardIndex::new(&format!("generation {generation}"), shards)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_reader_sees_whole_indexes_only() {
    /// Reads that overlapped a write required per backend.
    const OVERLAPS: u64 = 20;
    for b in common::backends("publication") {
        let store = b.loc.store().clone();
        let done = Arc::new(AtomicBool::new(false));
        // Writes started / finished, and reads that overlapped one: a read overlapped a
        // write iff some write started before the read ended and had not finished
        // before it began (started-after > finished-before).
        let (started, finished, overlapped) =
            (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let reader = {
            let (store, done) = (store.clone(), done.clone());
            let (started, finished, overlapped) = (started.clone(), finished.clone(), overlapped.clone());
            tokio::spawn(async move {
                let (mut seen, mut missing) = (0u32, 0u32);
                // Bounded: stops when the writer is done or after 100000 polls.
                for _ in 0..100_000 {
                    if done.load(Ordering::Acquire) {
                        break;
                    }
                    let finished_before = finished.load(Ordering::SeqCst);
                    let got = ShardIndex::load(store.as_ref()).await;
                    if started.load(Ordering::SeqCst) > finished_before {
                        overlapped.fetch_add(1, Ordering::SeqCst);
                    }
                    match got {
                        Ok(idx) => {
                            let generation: u64 = idx.created.tool.trim_start_matches("generation ").parse().unwrap();
                            assert_eq!(idx, ShardIndex { created: idx.created.clone(), ..big_index(generation) });
                            seen += 1;
                        }
                        Err(ShardError::NotFound(_)) => missing += 1,
                        Err(e) => panic!("reader saw a broken index: {e}"),
                    }
                    tokio::task::yield_now().await;
                }
                (seen, missing)
            })
        };
        // Keep re-publishing until enough reads raced a write (bounded).
        let mut generation = 0;
        while generation < 25 || (overlapped.load(Ordering::SeqCst) < OVERLAPS && generation < 2000) {
            generation += 1;
            started.fetch_add(1, Ordering::SeqCst);
            big_index(generation).publish(store.as_ref()).await.unwrap();
            finished.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
        }
        done.store(true, Ordering::Release);
        let (seen, missing) = reader.await.unwrap();
        let overlaps = overlapped.load(Ordering::SeqCst);
        eprintln!(
            "{}: {generation} publications, {seen} whole reads ({missing} before the first), {overlaps} overlapping a write",
            b.name
        );
        assert!(overlaps >= OVERLAPS, "{}: only {overlaps} reads overlapped a write", b.name);
        assert!(seen > 0, "{}: the reader read whole indexes", b.name);
        let last = ShardIndex::load(store.as_ref()).await.unwrap();
        assert_eq!(last.created.tool, format!("generation {generation}"), "{}", b.name);
    }
}
