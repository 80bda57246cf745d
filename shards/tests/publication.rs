//! A reader polling `index.json` while it is re-published never sees a partial document.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
    for b in common::backends("publication") {
        let store = b.loc.store().clone();
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let (store, done) = (store.clone(), done.clone());
            tokio::spawn(async move {
                let (mut seen, mut missing) = (0u32, 0u32);
                // Bounded: stops when the writer is done or after 5000 polls.
                for _ in 0..5000 {
                    if done.load(Ordering::Acquire) {
                        break;
                    }
                    match ShardIndex::load(store.as_ref()).await {
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
        for generation in 1..=25 {
            big_index(generation).publish(store.as_ref()).await.unwrap();
        }
        done.store(true, Ordering::Release);
        let (seen, missing) = reader.await.unwrap();
        assert!(seen + missing > 0, "{}: the reader polled", b.name);
        let last = ShardIndex::load(store.as_ref()).await.unwrap();
        assert_eq!(last.created.tool, "generation 25", "{}", b.name);
    }
}
