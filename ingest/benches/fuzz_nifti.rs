//! The NIfTI fuzzer's long run: seeded mutations of `tests/fuzz_corpus/seeds`
//! through the reader and the preprocessing, counting panics and allocations over
//! the cap. Prints, never asserts (the short run in `tests/fuzz.rs` asserts).
//!
//! `cargo bench -p s3-ingest --bench fuzz_nifti --profile dev -- 1000000`
//! (the dev profile keeps overflow checks, so an arithmetic overflow is a counted
//! panic rather than a silent wrap). Env: `FUZZ_SEED` (default 1), `FUZZ_THREADS`
//! (default: all cores; thread t runs the stream of seed + t), `FUZZ_KEEP_CURRENT`
//! (write each input out before running it, to catch one that aborts the process).
//! Inputs that panic or allocate over the cap are saved under `target/fuzz-found/`.

#![allow(unsafe_code)] // the counting allocator of fuzz_common

#[path = "../tests/fuzz_common/mod.rs"]
mod fuzz_common;

use std::time::Instant;

#[global_allocator]
static ALLOC: fuzz_common::Counting = fuzz_common::Counting;

fn main() {
    // `cargo bench` adds `--bench`; the count is the first numeric argument.
    let count: u64 = std::env::args().skip(1).find_map(|a| a.replace('_', "").parse().ok()).unwrap_or(100_000);
    let seed: u64 = std::env::var("FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let threads: u64 = std::env::var("FUZZ_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u64))
        .clamp(1, count.max(1));
    let save = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-found");
    println!(
        "fuzzing {count} inputs from seed {seed} on {threads} threads (volume cap {} bytes, allocation limit {})",
        fuzz_common::VOLUME_CAP,
        fuzz_common::ALLOC_LIMIT
    );
    let t0 = Instant::now();
    let reports: Vec<fuzz_common::Report> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let n = count / threads + u64::from(t < count % threads);
                let save = &save;
                s.spawn(move || {
                    fuzz_common::fuzz(n, seed + t, save, |r| {
                        eprintln!("thread {t}: {r} ({:.0} s)", t0.elapsed().as_secs_f64())
                    })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("fuzz threads catch their panics")).collect()
    });
    let mut total = fuzz_common::Report::default();
    for r in reports {
        total.inputs += r.inputs;
        total.panics += r.panics;
        total.over_cap += r.over_cap;
        total.rejected += r.rejected;
        total.case_errors += r.case_errors;
        total.processed += r.processed;
        total.samples += r.samples;
        total.max_alloc = total.max_alloc.max(r.max_alloc);
        total.saved.extend(r.saved);
    }
    println!("{total}");
    println!("{:.1} s, {:.0} inputs/s", t0.elapsed().as_secs_f64(), total.inputs as f64 / t0.elapsed().as_secs_f64());
    for p in &total.saved {
        println!("saved {}", p.display());
    }
}
