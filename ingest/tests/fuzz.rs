//! The NIfTI fuzzer's short run (the long one: `benches/fuzz_nifti.rs`), its seed
//! corpus, and the inputs it once found, kept as regressions.
//!
//! `FUZZ_N` (default 4000) and `FUZZ_SEED` change the short run.

#![allow(unsafe_code)] // the counting allocator of fuzz_common

mod fuzz_common;

use fuzz_common::{ALLOC_LIMIT, Outcome, corpus_dir, load_seeds, run_one};

#[global_allocator]
static ALLOC: fuzz_common::Counting = fuzz_common::Counting;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn seeds_are_valid_and_reach_the_crop() {
    let seeds = load_seeds();
    assert!(seeds.len() >= 4);
    let mut samples = 0;
    for (name, bytes) in &seeds {
        let (outcome, peak) = run_one(bytes);
        assert!(matches!(outcome, Outcome::Processed(_)), "{name}: {outcome:?}");
        assert!(peak <= ALLOC_LIMIT, "{name}: asked for {peak} bytes");
        if let Outcome::Processed(n) = outcome {
            samples += n;
        }
    }
    assert!(samples > 0, "no seed makes a sample: the crop path would go unfuzzed");
}

#[test]
fn short_fuzz_run_finds_no_panic_and_no_allocation_over_the_cap() {
    let (n, seed) = (env_u64("FUZZ_N", 4000), env_u64("FUZZ_SEED", 1));
    let save = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-found");
    let r = fuzz_common::fuzz(n, seed, &save, |_| {});
    println!("{r}");
    assert_eq!(r.inputs, n);
    assert_eq!((r.panics, r.over_cap), (0, 0), "{r}; inputs saved: {:?}", r.saved);
    // Not vacuous: mutants are refused by the reader, refused by the preprocessing,
    // and preprocessed into samples.
    assert!(r.rejected > 0 && r.case_errors > 0 && r.processed > 0 && r.samples > 0, "{r}");
}

/// Inputs the fuzzer found, each once a panic or an allocation over the cap.
#[test]
fn found_inputs_stay_fixed() {
    let dir = corpus_dir().join("regressions");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let (outcome, peak) = run_one(&bytes);
        assert_ne!(outcome, Outcome::Panicked, "{}", path.display());
        assert!(peak <= ALLOC_LIMIT, "{}: asked for {peak} bytes", path.display());
        n += 1;
    }
    assert!(n > 0, "no regressions in {}", dir.display());
}

/// Regenerates the seeds: `cargo test -p s3-ingest --test fuzz -- --ignored write_seeds`.
#[test]
#[ignore = "writes tests/fuzz_corpus/seeds"]
fn write_seeds() {
    use std::io::Write;
    let dir = corpus_dir().join("seeds");
    std::fs::create_dir_all(&dir).unwrap();
    let blob = |shape: [usize; 3], x: usize, y: usize, z: usize| {
        let c = shape.map(|n| n as f64 / 2.0);
        let d = ((x as f64 - c[0]) / c[0]).powi(2)
            + ((y as f64 - c[1]) / c[1]).powi(2)
            + ((z as f64 - c[2]) / c[2]).powi(2);
        if d < 0.5 { 1.0 } else { 0.0 }
    };
    let voxels = |shape: [usize; 3], f: &dyn Fn(usize, usize, usize) -> f64| -> Vec<f64> {
        let mut v = Vec::new();
        for z in 0..shape[2] {
            for y in 0..shape[1] {
                for x in 0..shape[0] {
                    v.push(f(x, y, z));
                }
            }
        }
        v
    };
    let write = |name: &str, bytes: Vec<u8>| {
        let bytes = if name.ends_with(".gz") {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            e.write_all(&bytes).unwrap();
            e.finish().unwrap()
        } else {
            bytes
        };
        std::fs::write(dir.join(name), bytes).unwrap();
    };

    let s = [14, 12, 10];
    let v = voxels(s, &|x, y, z| -1000.0 + 1060.0 * blob(s, x, y, z) + (x + y + z) as f64);
    let mut h = Header::new(s, 4, 16, [2.0, 2.0, 3.0]);
    h.sform = Some([[-2.0, 0.0, 0.0, 13.0], [0.0, -2.0, 0.0, 11.0], [0.0, 0.0, 3.0, -13.5]]);
    write("ct_i16_lps_sform.nii", h.bytes(&v.iter().flat_map(|&x| (x as i16).to_le_bytes()).collect::<Vec<_>>()));

    let s = [12, 10, 8];
    let v = voxels(s, &|x, y, z| 200.0 * blob(s, x, y, z) + 0.25 * x as f64);
    let mut h = Header::new(s, 16, 32, [1.2, 1.1, 3.0]);
    h.slope = (2.0, 10.0);
    h.sform = Some([[0.0, -1.1, 0.0, 5.0], [1.2, 0.0, 0.0, -7.0], [0.0, 0.0, 3.0, 0.0]]);
    write(
        "mr_f32_swapped_scaled.nii.gz",
        h.bytes(&v.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect::<Vec<_>>()),
    );

    let s = [16, 16, 8];
    let v = voxels(s, &|x, y, z| 3.0 * blob(s, x, y, z) + (y / 4) as f64);
    let mut h = Header::new(s, 2, 8, [1.1, 1.1, 2.0]);
    h.qfac = -1.0;
    let half = 10f64.to_radians();
    h.qform = Some(([0.0, 0.0, half.sin()], [-8.0, 4.0, 2.0]));
    h.extension = Some(b"fuzz-ext".to_vec());
    write("u8_qform_oblique_ext.nii", h.bytes(&v.iter().map(|&x| x as u8).collect::<Vec<_>>()));

    let s = [8, 8, 6];
    let v = voxels(s, &|x, y, z| 5.5 * blob(s, x, y, z) - 0.125 * z as f64);
    let mut h = Header::new(s, 64, 64, [3.0, 3.0, 4.0]);
    h.big_endian = true;
    h.slope = (f32::NAN, f32::NAN); // as nibabel writes "no scaling"
    write("f64_base_bigendian.nii", h.bytes(&v.iter().flat_map(|&x| x.to_be_bytes()).collect::<Vec<_>>()));

    let s = [10, 10, 10];
    let v = voxels(s, &|x, y, z| 40.0 * blob(s, x, y, z) + (x * y) as f64);
    let mut h = Header::new(s, 8, 32, [1.6, 1.6, 1.6]);
    h.dim4 = true;
    h.sform = Some([[1.6, 0.2, 0.0, -8.0], [0.0, 1.6, 0.1, -8.0], [0.1, 0.0, 1.6, -8.0]]);
    write("i32_4d_sheared.nii.gz", h.bytes(&v.iter().flat_map(|&x| (x as i32).to_le_bytes()).collect::<Vec<_>>()));
}

/// A NIfTI-1 single-file header, written by hand so that the seeds can be
/// big-endian, carry an extension and use qform or the base affine.
struct Header {
    shape: [usize; 3],
    datatype: i16,
    bitpix: i16,
    spacing: [f32; 3],
    qfac: f32,
    slope: (f32, f32),
    sform: Option<[[f32; 4]; 3]>,
    qform: Option<([f64; 3], [f32; 3])>,
    extension: Option<Vec<u8>>,
    big_endian: bool,
    dim4: bool,
}

impl Header {
    fn new(shape: [usize; 3], datatype: i16, bitpix: i16, spacing: [f32; 3]) -> Header {
        Header {
            shape,
            datatype,
            bitpix,
            spacing,
            qfac: 1.0,
            slope: (0.0, 0.0),
            sform: None,
            qform: None,
            extension: None,
            big_endian: false,
            dim4: false,
        }
    }

    fn bytes(&self, data: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 348];
        let be = self.big_endian;
        let i16b = |v: i16| if be { v.to_be_bytes() } else { v.to_le_bytes() };
        let i32b = |v: i32| if be { v.to_be_bytes() } else { v.to_le_bytes() };
        let f32b = |v: f32| if be { v.to_be_bytes() } else { v.to_le_bytes() };
        b[0..4].copy_from_slice(&i32b(348));
        let dims: [i16; 8] = if self.dim4 {
            [4, self.shape[0] as i16, self.shape[1] as i16, self.shape[2] as i16, 1, 1, 1, 1]
        } else {
            [3, self.shape[0] as i16, self.shape[1] as i16, self.shape[2] as i16, 1, 1, 1, 1]
        };
        for (k, d) in dims.iter().enumerate() {
            b[40 + 2 * k..42 + 2 * k].copy_from_slice(&i16b(*d));
        }
        b[70..72].copy_from_slice(&i16b(self.datatype));
        b[72..74].copy_from_slice(&i16b(self.bitpix));
        let pixdim = [self.qfac, self.spacing[0], self.spacing[1], self.spacing[2], 1.0, 1.0, 1.0, 1.0];
        for (k, p) in pixdim.iter().enumerate() {
            b[76 + 4 * k..80 + 4 * k].copy_from_slice(&f32b(*p));
        }
        let ext = self.extension.as_ref().map(|e| {
            let esize = (8 + e.len()).div_ceil(16) * 16;
            let mut x = Vec::with_capacity(esize);
            x.extend(i32b(esize as i32));
            x.extend(i32b(4));
            x.extend(e);
            x.resize(esize, 0);
            x
        });
        let vox_offset = 352 + ext.as_ref().map_or(0, Vec::len);
        b[108..112].copy_from_slice(&f32b(vox_offset as f32));
        b[112..116].copy_from_slice(&f32b(self.slope.0));
        b[116..120].copy_from_slice(&f32b(self.slope.1));
        b[123] = 2; // xyzt_units: mm
        if let Some((q, off)) = self.qform {
            b[252..254].copy_from_slice(&i16b(1));
            for k in 0..3 {
                b[256 + 4 * k..260 + 4 * k].copy_from_slice(&f32b(q[k] as f32));
                b[268 + 4 * k..272 + 4 * k].copy_from_slice(&f32b(off[k]));
            }
        }
        if let Some(rows) = self.sform {
            b[254..256].copy_from_slice(&i16b(1));
            for (r, row) in rows.iter().enumerate() {
                for (c, v) in row.iter().enumerate() {
                    let at = 280 + 16 * r + 4 * c;
                    b[at..at + 4].copy_from_slice(&f32b(*v));
                }
            }
        }
        b[344..348].copy_from_slice(b"n+1\0");
        b.extend([u8::from(ext.is_some()), 0, 0, 0]);
        if let Some(x) = ext {
            b.extend(x);
        }
        b.extend(data);
        b
    }
}
