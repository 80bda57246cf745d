//! Ingest throughput on realistic CT sizes against gunzip of the same files (the
//! floor: every ingest must at least decompress its input). Prints, never asserts.
//!
//! `cargo bench -p s3-ingest --bench ingest` (env `N` cases, default 4; `SLICES`, default 200).
//! The torchio reference for the same files: `ingest/bench/torchio_ingest.py`.

use std::io::Read;
use std::time::Instant;

use ndarray::Array3;
use nifti::NiftiHeader;
use nifti::writer::WriterOptions;
use s3_ingest::catalog::Catalog;
use s3_ingest::run::{IngestConfig, run};

fn main() {
    let n: usize = std::env::var("N").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    let slices: usize = std::env::var("SLICES").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let dir = std::env::var("BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join("s3-ingest-bench"));
    let ds = dir.join("BenchCT");
    std::fs::create_dir_all(ds.join("imagesTr")).unwrap();
    std::fs::create_dir_all(ds.join("labelsTr")).unwrap();
    let shape = (512, 512, slices);
    let (sx, sz) = (0.7f32, 2.5f32);
    let mut header =
        NiftiHeader { sform_code: 1, pixdim: [1.0, sx, sx, sz, 1.0, 1.0, 1.0, 1.0], ..NiftiHeader::default() };
    header.srow_x = [-sx, 0.0, 0.0, 180.0];
    header.srow_y = [0.0, -sx, 0.0, 180.0];
    header.srow_z = [0.0, 0.0, sz, -250.0];
    let mut input_bytes = 0u64;
    for c in 0..n {
        let img_path = ds.join(format!("imagesTr/ct{c:02}_0000.nii.gz"));
        let lab_path = ds.join(format!("labelsTr/ct{c:02}.nii.gz"));
        if !img_path.exists() || !lab_path.exists() {
            let mut seed = 0x2545F4914F6CDD1Du64 ^ c as u64;
            let mut noise = move || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed % 41) as i16 - 20
            };
            let image = Array3::<i16>::from_shape_fn(shape, |(x, y, z)| {
                let (dx, dy) = (x as f64 - 256.0, y as f64 - 256.0);
                let body = (dx / 230.0).powi(2) + (dy / 180.0).powi(2) < 1.0;
                let organ =
                    (dx + 60.0).powi(2) / 70f64.powi(2) + (dy / 50.0).powi(2) + ((z as f64 - 100.0) / 50.0).powi(2)
                        < 1.0;
                let v = if organ {
                    60
                } else if body {
                    -40 + (z % 17) as i16
                } else {
                    -1000
                };
                v + noise()
            });
            let label = Array3::<u8>::from_shape_fn(shape, |(x, y, z)| {
                let (dx, dy) = (x as f64 - 256.0, y as f64 - 256.0);
                let organ =
                    (dx + 60.0).powi(2) / 70f64.powi(2) + (dy / 50.0).powi(2) + ((z as f64 - 100.0) / 50.0).powi(2)
                        < 1.0;
                let kidney = (dx - 90.0).powi(2) / 30f64.powi(2)
                    + ((dy - 60.0) / 35.0).powi(2)
                    + ((z as f64 - 80.0) / 20.0).powi(2)
                    < 1.0;
                if organ {
                    1
                } else if kidney {
                    2
                } else {
                    0
                }
            });
            WriterOptions::new(&img_path).reference_header(&header).write_nifti(&image).unwrap();
            WriterOptions::new(&lab_path).reference_header(&header).write_nifti(&label).unwrap();
        }
        input_bytes += std::fs::metadata(&img_path).unwrap().len() + std::fs::metadata(&lab_path).unwrap().len();
    }
    std::fs::write(ds.join("dataset.json"), r#"{"labels": {"0": "background", "1": "liver", "2": "kidney"}}"#).unwrap();
    let manifest = format!(
        "[[datasets]]\nname = \"BenchCT\"\nmodality = \"CT\"\npretrain = true\nfinetune = true\n[[datasets.tasks]]\nname = \"default\"\nlayout = \"nnunet\"\nsource = \"{}\"\n",
        ds.display()
    );
    let catalog = Catalog::parse(&manifest, "bench").unwrap();
    let mb = input_bytes as f64 / 1e6;
    println!("{n} CT cases of 512x512x{slices} int16 (0.7x0.7x2.5 mm) + labels, {mb:.0} MB gzipped input, one job");

    let t = Instant::now();
    let mut raw = 0usize;
    for e in walk(&ds) {
        if e.extension().is_some_and(|x| x == "gz") {
            let mut buf = Vec::new();
            flate2::read::MultiGzDecoder::new(std::fs::File::open(&e).unwrap()).read_to_end(&mut buf).unwrap();
            raw += buf.len();
        }
    }
    let gunzip = t.elapsed().as_secs_f64();
    println!(
        "gunzip alone:  {:6.2} volumes/s  {:7.1} MB/s input  ({:.0} MB decompressed)",
        n as f64 / gunzip,
        mb / gunzip,
        raw as f64 / 1e6
    );

    let cfg = IngestConfig { jobs: 1, ..IngestConfig::new("memory://ingest-bench") };
    let t = Instant::now();
    let summary = run(&catalog, &cfg, &|_| {}).unwrap();
    let ingest = t.elapsed().as_secs_f64();
    let samples: u64 = summary.datasets.iter().map(|d| d.samples).sum();
    println!("s3-ingest -j1: {:6.2} volumes/s  {:7.1} MB/s input  ({samples} samples)", n as f64 / ingest, mb / ingest);
    println!("ratio ingest / gunzip time: {:.2}", ingest / gunzip);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out.sort();
    out
}
