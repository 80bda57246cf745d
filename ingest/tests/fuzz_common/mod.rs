//! A deterministic mutation fuzzer for the NIfTI reader and the preprocessing
//! behind it, on stable Rust (no cargo-fuzz, no `arbitrary`): seeded mutations of a
//! small corpus of valid files, each input run through `read_nifti_bytes` and, when
//! it is accepted, `process_case` under a small `--max-volume-bytes`.
//!
//! Shared by `tests/fuzz.rs` (a short run in the test suite) and
//! `benches/fuzz_nifti.rs` (a long run). The including crate root must declare
//! `#[global_allocator] static A: fuzz_common::Counting = fuzz_common::Counting;`
//! so that the largest allocation each input asks for is measured.

#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use s3_ingest::catalog::Modality;
use s3_ingest::nifti_io::{ReadOptions, Volume, Voxels, read_nifti_bytes};
use s3_ingest::preprocess::{CaseContext, PreprocessOptions, process_case};
use s3_shards::synthetic::Rng;

/// `--max-volume-bytes` for fuzzed inputs: small, so that a limit that fails to
/// hold shows up as an allocation far above it.
pub const VOLUME_CAP: u64 = 2 << 20;
/// The largest allocation a correct run may ask for: the cap, or the fixed
/// 128³ f32 crop every kept label costs whatever the input (8 MiB).
pub const ALLOC_LIMIT: usize = {
    let crop = 128 * 128 * 128 * 4;
    if (VOLUME_CAP as usize) > crop { VOLUME_CAP as usize } else { crop }
};

thread_local! {
    // Per thread, so that other tests running alongside do not inflate it; a
    // const-initialised Cell needs no allocation (safe inside the allocator).
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = PEAK.try_with(|p| p.set(p.get().max(size)));
}

/// The system allocator, recording the largest request made on each thread
/// (including requests that fail: asking is the bug).
pub struct Counting;

// SAFETY: every method forwards to `System` with the caller's arguments unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// The seed corpus, committed beside the tests.
pub fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus")
}

/// Seeds as raw (gunzipped) NIfTI bytes, sorted by file name.
pub fn load_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(corpus_dir().join("seeds"))
        .expect("tests/fuzz_corpus/seeds")
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), gunzip_if(&std::fs::read(&p).unwrap())))
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds");
    seeds
}

fn gunzip_if(b: &[u8]) -> Vec<u8> {
    if !b.starts_with(&[0x1f, 0x8b]) {
        return b.to_vec();
    }
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(b).read_to_end(&mut out).expect("seed gzip");
    out
}

/// NIfTI-1 fields worth overwriting: (offset, width in bytes, float?).
const FIELDS: &[(usize, usize, bool)] = &[
    (0, 4, false),   // sizeof_hdr
    (40, 2, false),  // dim[0]
    (42, 2, false),  // dim[1]
    (44, 2, false),  // dim[2]
    (46, 2, false),  // dim[3]
    (48, 2, false),  // dim[4]
    (70, 2, false),  // datatype
    (72, 2, false),  // bitpix
    (76, 4, true),   // pixdim[0] (qfac)
    (80, 4, true),   // pixdim[1]
    (84, 4, true),   // pixdim[2]
    (88, 4, true),   // pixdim[3]
    (108, 4, true),  // vox_offset
    (112, 4, true),  // scl_slope
    (116, 4, true),  // scl_inter
    (252, 2, false), // qform_code
    (254, 2, false), // sform_code
    (256, 4, true),  // quatern_b
    (260, 4, true),  // quatern_c
    (264, 4, true),  // quatern_d
    (268, 4, true),  // qoffset_x
    (280, 4, true),  // srow_x[0]
    (284, 4, true),  // srow_x[1]
    (292, 4, true),  // srow_x[3]
    (296, 4, true),  // srow_y[0]
    (300, 4, true),  // srow_y[1]
    (316, 4, true),  // srow_z[1]
    (320, 4, true),  // srow_z[2]
    (324, 4, true),  // srow_z[3]
];

const FLOATS: &[f32] = &[
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.5,
    1.5,
    2.0,
    3.0,
    400.0,
    1e-7,
    -1e-7,
    1e9,
    1e30,
    -1e30,
    f32::MAX,
    f32::MIN,
    f32::MIN_POSITIVE,
    f32::EPSILON,
    f32::NAN,
    f32::INFINITY,
    f32::NEG_INFINITY,
    348.0,
    352.0,
    353.5,
    65536.0,
    4e9,
];

const INTS: &[i32] = &[
    0,
    1,
    -1,
    2,
    3,
    4,
    7,
    8,
    16,
    64,
    128,
    255,
    256,
    348,
    540,
    1000,
    4096,
    i16::MAX as i32,
    i16::MIN as i32,
    i32::MAX,
    i32::MIN,
];

fn below(rng: &mut Rng, n: usize) -> usize {
    (rng.next_u64() % n.max(1) as u64) as usize
}

/// A header position most of the time: that is where the arithmetic is.
fn position(rng: &mut Rng, len: usize) -> usize {
    if !rng.next_u64().is_multiple_of(4) { below(rng, len.min(352)) } else { below(rng, len) }
}

fn put(b: &mut [u8], at: usize, bytes: &[u8]) {
    if at + bytes.len() <= b.len() {
        b[at..at + bytes.len()].copy_from_slice(bytes);
    }
}

/// One to four stacked mutations of a seed; then, one time in three, gzipped
/// (and one time in ten of those, the gzip stream itself damaged).
pub fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    let big_endian = b.len() >= 4 && i32::from_be_bytes([b[0], b[1], b[2], b[3]]) == 348;
    for _ in 0..1 + below(rng, 4) {
        match below(rng, 9) {
            0 | 1 => {
                if !b.is_empty() {
                    let at = position(rng, b.len());
                    b[at] ^= 1 << below(rng, 8);
                }
            }
            2 => {
                if !b.is_empty() {
                    let at = position(rng, b.len());
                    b[at] = [0u8, 0xff, 0x7f, 0x80, rng.next_u64() as u8][below(rng, 5)];
                }
            }
            3..=5 => {
                let (at, width, float) = FIELDS[below(rng, FIELDS.len())];
                let bytes: Vec<u8> = match (float, width) {
                    (true, _) => {
                        let v = if rng.next_u64().is_multiple_of(4) {
                            f32::from_bits(rng.next_u64() as u32)
                        } else {
                            FLOATS[below(rng, FLOATS.len())]
                        };
                        if big_endian { v.to_be_bytes().to_vec() } else { v.to_le_bytes().to_vec() }
                    }
                    (false, 2) => {
                        let v = INTS[below(rng, INTS.len())] as i16;
                        if big_endian { v.to_be_bytes().to_vec() } else { v.to_le_bytes().to_vec() }
                    }
                    _ => {
                        let v = INTS[below(rng, INTS.len())];
                        if big_endian { v.to_be_bytes().to_vec() } else { v.to_le_bytes().to_vec() }
                    }
                };
                put(&mut b, at, &bytes);
            }
            6 => {
                // Truncation, often near the header/data boundary.
                let len = if rng.next_u64().is_multiple_of(2) { below(rng, 400) } else { below(rng, b.len() + 1) };
                b.truncate(len);
            }
            7 => {
                let n = below(rng, 64);
                b.extend((0..n).map(|_| rng.next_u64() as u8));
            }
            _ => {
                // A block of random bytes somewhere in the header.
                let at = below(rng, 348);
                let n = 1 + below(rng, 16);
                for k in at..(at + n).min(b.len()) {
                    b[k] = rng.next_u64() as u8;
                }
            }
        }
    }
    if rng.next_u64().is_multiple_of(3) {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&b).expect("in memory");
        b = e.finish().expect("in memory");
        if rng.next_u64().is_multiple_of(10) && !b.is_empty() {
            let at = below(rng, b.len());
            b[at] ^= 1 << below(rng, 8);
        }
    }
    b
}

/// What became of one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The reader refused it.
    Rejected,
    /// Read, then refused by the preprocessing (a quarantine reason).
    CaseError,
    /// Read and preprocessed: samples made.
    Processed(usize),
    /// A panic: a bug.
    Panicked,
}

/// One NIfTI input end to end; also returns the largest allocation it asked for.
pub fn run_one(bytes: &[u8]) -> (Outcome, usize) {
    run_reader(bytes, |b, opts| read_nifti_bytes(b, "fuzz.nii", opts).map(|v| vec![v]))
}

/// Reads a fuzzed input into volumes (one per channel).
pub type Reader = fn(&[u8], &ReadOptions) -> s3_ingest::Result<Vec<Volume>>;

/// One input end to end through `read` (the first channel is preprocessed); also
/// returns the largest allocation it asked for.
pub fn run_reader(bytes: &[u8], read: Reader) -> (Outcome, usize) {
    PEAK.with(|p| p.set(0));
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let opts = ReadOptions { max_bytes: VOLUME_CAP };
        let Some(image) = read(bytes, &opts).ok().and_then(|v| v.into_iter().next()) else {
            return Outcome::Rejected;
        };
        // A label on the same grid (voxels above the mid-range), so that a header
        // that passed the reader reaches resampling, reorientation and cropping.
        let (lo, hi) =
            (0..image.len()).map(|n| image.value(n)).fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
        let mid = lo / 2.0 + hi / 2.0;
        let label = Volume {
            voxels: Voxels::U8((0..image.len()).map(|n| u8::from(image.value(n) > mid)).collect()),
            slope: 1.0,
            inter: 0.0,
            ..image.clone_header()
        };
        let labels = BTreeMap::new();
        let modality = if bytes.len().is_multiple_of(2) { Modality::CT } else { Modality::MR };
        let ctx = CaseContext { dataset: "FUZZ", task: "default", case_id: "fuzz", modality, labels: &labels };
        match process_case(&image, &label, &ctx, &PreprocessOptions::default()) {
            Ok(s) => Outcome::Processed(s.samples.len()),
            Err(_) => Outcome::CaseError,
        }
    }))
    .unwrap_or(Outcome::Panicked);
    (outcome, PEAK.with(|p| p.get()))
}

/// Counts over a fuzz run.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Inputs run.
    pub inputs: u64,
    /// Inputs that panicked.
    pub panics: u64,
    /// Inputs whose largest allocation request exceeded [`ALLOC_LIMIT`].
    pub over_cap: u64,
    /// Refused by the reader.
    pub rejected: u64,
    /// Read but refused by the preprocessing.
    pub case_errors: u64,
    /// Read and preprocessed.
    pub processed: u64,
    /// Samples made by those.
    pub samples: u64,
    /// Largest single allocation request of any input.
    pub max_alloc: usize,
    /// Where the inputs that panicked or went over the limit were saved.
    pub saved: Vec<PathBuf>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "inputs {} panics {} over-cap allocations {} (limit {} bytes, largest request {}) | rejected by reader {}, \
             refused by preprocessing {}, preprocessed {} ({} samples)",
            self.inputs,
            self.panics,
            self.over_cap,
            ALLOC_LIMIT,
            self.max_alloc,
            self.rejected,
            self.case_errors,
            self.processed,
            self.samples
        )
    }
}

/// Runs `count` inputs from `seed`; failing inputs are written under `save_dir`.
pub fn fuzz(count: u64, seed: u64, save_dir: &Path, mut progress: impl FnMut(&Report)) -> Report {
    let seeds = load_seeds();
    let mut rng = Rng::new(seed);
    let mut r = Report::default();
    // Panics are counted, not printed a million times; the first few messages are kept.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        if PANICS_PRINTED.with(|n| n.replace(n.get() + 1)) < 5 {
            eprintln!("fuzz: panic: {info}");
        }
    }));
    // An abort (a failed allocation, a stack overflow) ends the process before
    // anything can be counted: with FUZZ_KEEP_CURRENT set, each input is written
    // out before it runs, so the one that killed the process is left behind.
    let keep_current = std::env::var_os("FUZZ_KEEP_CURRENT").is_some();
    for i in 0..count {
        let (_, s) = &seeds[below(&mut rng, seeds.len())];
        let input = mutate(&mut rng, s);
        if keep_current {
            let _ = std::fs::create_dir_all(save_dir)
                .and_then(|_| std::fs::write(save_dir.join(format!("current-{seed}.nii.bin")), &input));
        }
        let (outcome, peak) = run_one(&input);
        r.inputs += 1;
        r.max_alloc = r.max_alloc.max(peak);
        match outcome {
            Outcome::Rejected => r.rejected += 1,
            Outcome::CaseError => r.case_errors += 1,
            Outcome::Processed(n) => {
                r.processed += 1;
                r.samples += n as u64;
            }
            Outcome::Panicked => r.panics += 1,
        }
        let over = peak > ALLOC_LIMIT;
        r.over_cap += u64::from(over);
        if (over || outcome == Outcome::Panicked) && r.saved.len() < 20 {
            let kind = if outcome == Outcome::Panicked { "panic" } else { "alloc" };
            let path = save_dir.join(format!("{kind}-{seed}-{i}.nii.bin"));
            if std::fs::create_dir_all(save_dir).and_then(|_| std::fs::write(&path, &input)).is_ok() {
                r.saved.push(path);
            }
        }
        if (i + 1) % 100_000 == 0 {
            progress(&r);
        }
    }
    std::panic::set_hook(hook);
    r
}

thread_local! {
    static PANICS_PRINTED: Cell<u32> = const { Cell::new(0) };
}
