//! Deterministic synthetic samples: CT-like crops with an organ-shaped mask.
//!
//! Used by the benchmark, the `s3-shards synth` example and tests that need
//! realistic bytes (so compression ratios and timings mean something) without any
//! input files.

use crate::error::Result;
use crate::sample::{SIDE, Sample, SampleMeta, Split, VOXELS};

/// splitmix64: small, fast, deterministic.
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A CT-like 128³ crop (HU: air, body, organ, bone; integer noise) with an
/// ellipsoidal organ as the mask. The same arguments give the same sample.
pub fn ct_like(dataset: &str, task: &str, case_id: &str, label_value: i32, seed: u64) -> Result<Sample> {
    let mut rng = Rng::new(seed);
    let c = SIDE as f64 / 2.0;
    let organ = [c + (rng.unit() - 0.5) * 20.0, c + (rng.unit() - 0.5) * 20.0, c + (rng.unit() - 0.5) * 20.0];
    let radii = [12.0 + rng.unit() * 14.0, 12.0 + rng.unit() * 14.0, 10.0 + rng.unit() * 12.0];
    let organ_hu = 30.0 + rng.unit() * 40.0;
    let mut image = vec![0f32; VOXELS];
    let mut mask = vec![false; VOXELS];
    for i in 0..SIDE {
        for j in 0..SIDE {
            for k in 0..SIDE {
                let n = (i * SIDE + j) * SIDE + k;
                let (x, y) = ((i as f64 - c) / 58.0, (j as f64 - c) / 46.0);
                let body = x * x + y * y < 1.0;
                let spine = ((i as f64 - c).powi(2) + (j as f64 - c + 30.0).powi(2)) < 64.0;
                let o = (0..3).map(|a| ((([i, j, k][a] as f64) - organ[a]) / radii[a]).powi(2)).sum::<f64>() < 1.0;
                let base = if o {
                    organ_hu
                } else if spine {
                    700.0
                } else if body {
                    -80.0 + 40.0 * ((k as f64) / 9.0).sin()
                } else {
                    -1000.0
                };
                let noise = if body { (rng.unit() - 0.5) * 40.0 } else { (rng.unit() - 0.5) * 6.0 };
                image[n] = (base + noise).round() as f32;
                mask[n] = o;
            }
        }
    }
    let mut affine = [0.0; 16];
    for d in 0..3 {
        affine[d * 4 + d] = 1.5;
        affine[d * 4 + 3] = -96.0;
    }
    affine[15] = 1.0;
    let meta = SampleMeta {
        dataset: dataset.into(),
        task: task.into(),
        case_id: case_id.into(),
        label_value,
        label_name: format!("organ{label_value}"),
        category: "abdomen&thorax".into(),
        modality: "CT".into(),
        channel: String::new(),
        split: Split::for_case(dataset, case_id, 10),
        affine,
        source_shape: [512, 512, 300],
        source_affine: affine,
    };
    Sample::from_volumes(meta, &image, &mask)
}

/// Fills `store` with `cases` synthetic cases of `labels` labels for each of
/// `datasets` datasets (`SYNTH_CT_0`, ...), writes their label manifests and
/// publishes the index: a complete, readable store for examples and tests.
pub async fn populate(
    store: &std::sync::Arc<dyn object_store::ObjectStore>,
    datasets: usize,
    cases: usize,
    labels: i32,
    opts: crate::writer::WriterOptions,
) -> Result<crate::index::ShardIndex> {
    use crate::labels::{CaseFate, ClassEntry, FgStats, LabelManifest};
    use std::collections::BTreeMap;
    let mut shards = Vec::new();
    let mut names = Vec::new();
    for d in 0..datasets {
        let dataset = format!("SYNTH_CT_{d}");
        let mut writer = crate::writer::ShardWriter::new(store.clone(), &dataset, "default", opts.clone())?;
        let mut fg: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
        let mut fates = BTreeMap::new();
        for c in 0..cases {
            let case_id = format!("case{c:04}");
            for l in 1..=labels {
                let seed = (d as u64) << 40 | (c as u64) << 8 | l as u64;
                let s = ct_like(&dataset, "default", &case_id, l, seed)?;
                fg.entry(l).or_default().push(s.fg_voxels);
                shards.extend(writer.push(s).await?);
            }
            fates.insert(
                case_id,
                CaseFate::Ingested {
                    samples: labels as u64,
                    dropped_labels: BTreeMap::new(),
                    dropped_channels: BTreeMap::new(),
                    image_xxh3: Vec::new(),
                },
            );
        }
        shards.extend(writer.finish().await?);
        let manifest = LabelManifest {
            dataset: dataset.clone(),
            modality: "CT".into(),
            classes: fg
                .iter()
                .map(|(&value, v)| ClassEntry {
                    value,
                    name: format!("organ{value}"),
                    category: "abdomen&thorax".into(),
                    modality: "CT".into(),
                    samples: v.len() as u64,
                    fg_voxels: FgStats::of(v),
                    channels: BTreeMap::new(),
                })
                .collect(),
            quarantine: Vec::new(),
            cases: BTreeMap::from([("default".to_string(), fates)]),
        };
        manifest.write(store.as_ref()).await?;
        names.push(dataset);
    }
    crate::publish::publish(store, concat!("s3-shards synth ", env!("CARGO_PKG_VERSION")), shards, &names).await
}
