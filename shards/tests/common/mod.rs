//! Fixtures shared by the integration tests: one suite runs against every backend.
#![allow(dead_code, missing_docs)]

use std::sync::Arc;

use s3_shards::{Sample, SampleMeta, StoreLocation, StoreOptions, open_store, synthetic};
use s3_test_support::S3Server;

pub struct Backend {
    pub name: &'static str,
    pub loc: StoreLocation,
    pub _dir: Option<tempfile::TempDir>,
    pub server: Option<Arc<S3Server>>,
}

pub fn s3_options(server: &S3Server) -> StoreOptions {
    StoreOptions::endpoint_with_keys(&server.endpoint(), s3_test_support::ACCESS_KEY, s3_test_support::SECRET_KEY)
}

/// A fresh memory store, a fresh directory and a fresh prefix on a real S3 server.
pub fn backends(test: &str) -> Vec<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(S3Server::start());
    vec![
        Backend {
            name: "memory",
            loc: open_store(&format!("memory://{test}"), &StoreOptions::default()).unwrap(),
            _dir: None,
            server: None,
        },
        Backend {
            name: "file",
            loc: open_store(&format!("file://{}", dir.path().join("store").display()), &StoreOptions::default())
                .unwrap(),
            _dir: Some(dir),
            server: None,
        },
        Backend {
            name: "s3",
            loc: open_store(&server.url(&format!("runs/{test}")), &s3_options(&server)).unwrap(),
            _dir: None,
            server: Some(server),
        },
    ]
}

/// A sample whose image needs a real scale (MR-like floats) and whose mask is a box.
pub fn float_sample(dataset: &str, case: &str, label: i32) -> Sample {
    let n = s3_shards::VOXELS;
    let image: Vec<f32> = (0..n).map(|i| ((i % 977) as f32 * 0.013).sin() * 311.7 + 20.25).collect();
    let mask: Vec<bool> = (0..n).map(|i| (i / 128 / 128) % 128 > 40 && (i / 128) % 128 < 70 && i % 128 > 60).collect();
    let meta = SampleMeta {
        dataset: dataset.into(),
        task: "default".into(),
        case_id: case.into(),
        label_value: label,
        label_name: "tumour".into(),
        category: "lesion".into(),
        modality: "MR".into(),
        channel: String::new(),
        split: s3_shards::Split::for_case(dataset, case, 10),
        affine: std::array::from_fn(|i| i as f64 * 0.5),
        source_shape: [240, 240, 155],
        source_affine: std::array::from_fn(|i| if i % 5 == 0 { 1.0 } else { 0.0 }),
    };
    Sample::from_volumes(meta, &image, &mask).unwrap()
}

/// `n` CT-like samples of one dataset; only 4 distinct volumes are synthesised (it is
/// the slow part in debug builds), the rest reuse them under other case ids.
pub fn ct_samples(dataset: &str, n: usize) -> Vec<Sample> {
    let base: Vec<Sample> =
        (0..4.min(n)).map(|i| synthetic::ct_like(dataset, "default", "x", 1, i as u64).unwrap()).collect();
    (0..n)
        .map(|i| {
            let mut s = base[i % base.len()].clone();
            s.meta.case_id = format!("case{i:03}");
            s.meta.split = s3_shards::Split::for_case(dataset, &s.meta.case_id, 10);
            s
        })
        .collect()
}
