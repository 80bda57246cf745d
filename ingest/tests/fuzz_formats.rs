//! The fuzzer on the text-header formats: seeded mutations of MetaImage and NRRD
//! files (numbers in header lines swapped for hostile ones, lines dropped or
//! repeated, data truncated or damaged, compressed streams broken) never panic and
//! never ask for more memory than `--max-volume-bytes` allows; the detached-file
//! cases (a missing `.raw`, a truncated `.zraw`) are quarantine reasons.
//!
//! `FUZZ_N` (default 800 per format) and `FUZZ_SEED` change the run.

#![allow(unsafe_code)] // the counting allocator of fuzz_common

mod fuzz_common;

use std::io::Write;

use fuzz_common::{ALLOC_LIMIT, Outcome, Reader, run_reader};
use s3_ingest::IngestError;
use s3_ingest::formats::{metaimage, nrrd};
use s3_ingest::nifti_io::ReadOptions;
use s3_shards::synthetic::Rng;

#[global_allocator]
static ALLOC: fuzz_common::Counting = fuzz_common::Counting;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

const SIDE: usize = 40;

/// A 40³ int16 volume with a bright ball: big enough to make a sample at 1.5 mm.
fn phantom() -> Vec<u8> {
    let c = SIDE as f64 / 2.0;
    (0..SIDE * SIDE * SIDE)
        .flat_map(|n| {
            let (x, y, z) = ((n % SIDE) as f64, ((n / SIDE) % SIDE) as f64, (n / SIDE / SIDE) as f64);
            let r2 = (x - c).powi(2) + (y - c).powi(2) + (z - c).powi(2);
            let v: i16 = if r2 < 64.0 { 300 } else { (x as i16) - 50 };
            v.to_le_bytes()
        })
        .collect()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn mha(compressed: bool) -> Vec<u8> {
    let data = phantom();
    let (data, extra) =
        if compressed { (zlib(&data), "CompressedData = True\n".to_string()) } else { (data, String::new()) };
    let mut b = format!(
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n{extra}\
TransformMatrix = 0.8 0.6 0 -0.6 0.8 0 0 0 1\nOffset = -20 10.5 3\nElementSpacing = 1.5 1.6 1.4\n\
DimSize = {SIDE} {SIDE} {SIDE}\nElementType = MET_SHORT\nElementDataFile = LOCAL\n"
    )
    .into_bytes();
    b.extend(data);
    b
}

fn nrrd(encoding: &str, four_d: bool) -> Vec<u8> {
    let mut data = phantom();
    if four_d {
        data.extend(phantom());
    }
    let data = if encoding == "gzip" { gzip(&data) } else { data };
    let (dim, sizes, dirs, kinds) = if four_d {
        (4, format!("{SIDE} {SIDE} {SIDE} 2"), "(1.5,0,0) (0,1.5,0) (0,0,1.5) none", "domain domain domain list")
    } else {
        (3, format!("{SIDE} {SIDE} {SIDE}"), "(-1.5,0,0) (0,-1.5,0.1) (0,0,1.5)", "domain domain domain")
    };
    let mut b = format!(
        "NRRD0004\n# a comment\ntype: short\ndimension: {dim}\nspace: left-posterior-superior\nsizes: {sizes}\n\
space directions: {dirs}\nkinds: {kinds}\nendian: little\nencoding: {encoding}\nspace origin: (10,-4.5,7)\n\n"
    )
    .into_bytes();
    b.extend(data);
    b
}

const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "2",
    "3",
    "4",
    "5",
    "-0",
    "1e308",
    "-1e308",
    "nan",
    "inf",
    "1e-300",
    "65535",
    "65536",
    "2147483647",
    "2147483648",
    "4294967296",
    "18446744073709551616",
    "99999999",
    "0.0001",
    "",
];

fn below(rng: &mut Rng, n: usize) -> usize {
    (rng.next_u64() % n.max(1) as u64) as usize
}

/// Mutates the header text (numbers, lines) or the data after it.
fn mutate(rng: &mut Rng, seed: &[u8], header_end: usize) -> Vec<u8> {
    let (mut header, mut data) =
        (String::from_utf8_lossy(&seed[..header_end]).into_owned(), seed[header_end..].to_vec());
    for _ in 0..1 + below(rng, 3) {
        let mut lines: Vec<String> = header.lines().map(String::from).collect();
        while lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        match below(rng, 8) {
            0..=3 => {
                // A number in a header line becomes a hostile one.
                let i = below(rng, lines.len());
                let tokens: Vec<String> = lines[i].split_inclusive([' ', ',', '(', ')']).map(String::from).collect();
                let numeric: Vec<usize> = (0..tokens.len())
                    .filter(|&t| tokens[t].trim_matches([' ', ',', '(', ')']).parse::<f64>().is_ok())
                    .collect();
                if let Some(&t) = numeric.get(below(rng, numeric.len().max(1))) {
                    let end: String = tokens[t].chars().filter(|c| [' ', ',', '(', ')'].contains(c)).collect();
                    let mut out = tokens.clone();
                    out[t] = format!("{}{end}", NUMBERS[below(rng, NUMBERS.len())]);
                    lines[i] = out.concat();
                }
            }
            4 => {
                let i = below(rng, lines.len().saturating_sub(1));
                lines.remove(i);
            }
            5 => {
                let i = below(rng, lines.len());
                let l = lines[i].clone();
                lines.insert(below(rng, lines.len()), l);
            }
            6 => data.truncate(below(rng, data.len() + 1)),
            _ => {
                for _ in 0..1 + below(rng, 8) {
                    if !data.is_empty() {
                        let at = below(rng, data.len().min(64));
                        data[at] ^= 1 << below(rng, 8);
                    }
                }
            }
        }
        header = lines.join("\n") + "\n";
        if header_end < seed.len() && seed[..header_end].ends_with(b"\n\n") {
            header.push('\n'); // NRRD's blank line before the data
        }
    }
    let mut b = header.into_bytes();
    b.extend(data);
    b
}

fn header_end(seed: &[u8], marker: &[u8]) -> usize {
    seed.windows(marker.len()).position(|w| w == marker).expect("marker") + marker.len()
}

#[test]
fn mutated_metaimage_and_nrrd_headers_never_panic_or_overallocate() {
    let mha_reader: Reader = |b, o| metaimage::read_bytes(b, "fuzz.mha", o);
    let nrrd_reader: Reader = |b, o| nrrd::read_bytes(b, "fuzz.nrrd", o);
    let seeds: Vec<(&str, Vec<u8>, usize, Reader)> = vec![
        ("mha", mha(false), 0, mha_reader),
        ("mha-zlib", mha(true), 0, mha_reader),
        ("nrrd-raw", nrrd("raw", false), 0, nrrd_reader),
        ("nrrd-gzip", nrrd("gzip", false), 0, nrrd_reader),
        ("nrrd-4d", nrrd("raw", true), 0, nrrd_reader),
    ]
    .into_iter()
    .map(|(n, b, _, r)| {
        let end = if n.starts_with("mha") { header_end(&b, b"LOCAL\n") } else { header_end(&b, b"\n\n") };
        (n, b, end, r)
    })
    .collect();
    for (name, seed, _, read) in &seeds {
        let (outcome, peak) = run_reader(seed, *read);
        assert!(matches!(outcome, Outcome::Processed(n) if n > 0), "seed {name}: {outcome:?}");
        assert!(peak <= ALLOC_LIMIT, "seed {name}: asked for {peak} bytes");
    }
    let (n, seed) = (env_u64("FUZZ_N", 800), env_u64("FUZZ_SEED", 1));
    let mut rng = Rng::new(seed);
    for (name, bytes, end, read) in &seeds {
        let (mut rejected, mut processed) = (0, 0);
        for i in 0..n {
            let input = mutate(&mut rng, bytes, *end);
            let (outcome, peak) = run_reader(&input, *read);
            let show = || String::from_utf8_lossy(&input[..input.len().min(*end + 40)]).into_owned();
            assert_ne!(outcome, Outcome::Panicked, "{name} input {i} panicked:\n{}", show());
            assert!(peak <= ALLOC_LIMIT, "{name} input {i} asked for {peak} bytes:\n{}", show());
            rejected += u64::from(outcome == Outcome::Rejected);
            processed += u64::from(matches!(outcome, Outcome::Processed(_)));
        }
        // Not vacuous: some mutants are refused, some still make samples.
        assert!(rejected > 0 && processed > 0, "{name}: {rejected} rejected, {processed} processed of {n}");
    }
}

#[test]
fn detached_data_that_is_missing_or_cut_short_is_a_quarantine_reason() {
    let dir = tempfile::tempdir().unwrap();
    let opts = ReadOptions::default();
    let header = |data_file: &str, compressed: bool| {
        format!(
            "ObjectType = Image\nNDims = 3\nBinaryData = True\nCompressedData = {}\nElementSpacing = 1 1 1\n\
DimSize = {SIDE} {SIDE} {SIDE}\nElementType = MET_SHORT\nElementDataFile = {data_file}\n",
            if compressed { "True" } else { "False" }
        )
    };
    // A missing .raw names the file.
    std::fs::write(dir.path().join("a.mhd"), header("a.raw", false)).unwrap();
    let e = metaimage::read(&dir.path().join("a.mhd"), &opts).unwrap_err();
    assert!(matches!(&e, IngestError::Io { file, .. } if file.contains("a.raw")), "{e}");
    // A truncated .zraw is truncated data.
    let z = zlib(&phantom());
    std::fs::write(dir.path().join("b.zraw"), &z[..z.len() / 2]).unwrap();
    std::fs::write(dir.path().join("b.mhd"), header("b.zraw", true)).unwrap();
    let e = metaimage::read(&dir.path().join("b.mhd"), &opts).unwrap_err();
    assert!(matches!(e, IngestError::Truncated { .. }), "{e}");
    // A header that lies about the size of its .raw.
    std::fs::write(dir.path().join("c.raw"), &phantom()[..1000]).unwrap();
    std::fs::write(dir.path().join("c.mhd"), header("c.raw", false)).unwrap();
    let e = metaimage::read(&dir.path().join("c.mhd"), &opts).unwrap_err();
    assert!(matches!(e, IngestError::Truncated { .. }), "{e}");
    // A data file outside the header's folder is refused, not read.
    std::fs::write(dir.path().join("d.mhd"), header("../etc/passwd", false)).unwrap();
    let e = metaimage::read(&dir.path().join("d.mhd"), &opts).unwrap_err();
    assert!(e.to_string().contains("outside"), "{e}");
    // And the intact detached pair reads.
    std::fs::write(dir.path().join("e.raw"), phantom()).unwrap();
    std::fs::write(dir.path().join("e.mhd"), header("e.raw", false)).unwrap();
    assert_eq!(metaimage::read(&dir.path().join("e.mhd"), &opts).unwrap()[0].shape, [SIDE; 3]);
}
