//! Training on synthetic shards: loss goes down, a killed run resumes with exactly
//! the remaining samples, checkpoints round-trip, corrupted samples are skipped.

use std::sync::Arc;

use burn::prelude::*;
use object_store::ObjectStoreExt;
use s3_shards::{StoreOptions, WriterOptions, open_store, synthetic};
use s3_trainer::schedule::Schedule;
use s3_trainer::stage::{LossResolution, Selection, StageConfig};
use s3_trainer::train::{RunSpec, TrainEvent, train};

fn stage(epochs: u64) -> StageConfig {
    StageConfig {
        name: "test".into(),
        preset: "small".into(),
        attention: Default::default(),
        precision: Default::default(),
        datasets: Selection { select: "all".into(), ..Default::default() },
        epochs,
        lr: 2e-3,
        decoder_lr_factor: 1.0,
        weight_decay: 0.1,
        batch: 1,
        accumulation: 1,
        clicks: 2,
        seed: 5,
        schedule: Schedule::Constant {},
        checkpoint_every: 2,
        init: None,
        legacy_loss: false,
        loss_resolution: LossResolution::Full,
        shard_window: 2,
        max_steps: None,
        max_minutes: None,
    }
}

fn data_store(cases: usize) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("data").display().to_string();
    let loc = open_store(&url, &StoreOptions::default()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(synthetic::populate(
        loc.store(),
        1,
        cases,
        1,
        WriterOptions { row_group_rows: 2, ..Default::default() },
    ))
    .unwrap();
    (dir, url)
}

fn spec(data: &str, run: &str, stage: StageConfig) -> RunSpec {
    RunSpec {
        data: data.into(),
        run: run.into(),
        stage,
        rank: 0,
        world: 1,
        master: None,
        resume: true,
        store_options: StoreOptions::default(),
    }
}

#[test]
fn loss_decreases_on_synthetic_organs() {
    // The paper's objective at full resolution (3 cases), and the demo's: Dice only on
    // the low-res logits, which starts slower (one case, more and cheaper steps).
    for (resolution, legacy, cases, clicks, steps) in
        [(LossResolution::Full, false, 3, 2, 24), (LossResolution::Low, true, 1, 3, 60)]
    {
        let (dir, data) = data_store(cases);
        let run = dir.path().join("run").display().to_string();
        let st = StageConfig {
            max_steps: Some(steps),
            checkpoint_every: 100,
            loss_resolution: resolution,
            legacy_loss: legacy,
            clicks,
            ..stage(200)
        };
        let out = train(&spec(&data, &run, st), &Device::flex(), &|_| {}).unwrap();
        assert_eq!(out.metrics.len(), steps as usize);
        let mean = |m: &[s3_trainer::train::StepMetrics]| m.iter().map(|x| x.loss).sum::<f64>() / m.len() as f64;
        let w = steps as usize / 4;
        let (first, last) = (mean(&out.metrics[..w]), mean(&out.metrics[steps as usize - w..]));
        assert!(last < first * 0.9, "{resolution:?} legacy={legacy}: loss {first:.4} → {last:.4}");
        assert!(out.stopped_early);
        // The run folder has its curves plotted.
        let png = std::fs::read(dir.path().join("run/metrics.png")).expect("metrics.png written");
        assert!(png.starts_with(b"\x89PNG"), "metrics.png is a PNG");
    }
}

#[test]
fn killed_run_resumes_with_exactly_the_remaining_samples() {
    let (dir, data) = data_store(3);
    let full_run = dir.path().join("full").display().to_string();
    let full = train(&spec(&data, &full_run, stage(2)), &Device::flex(), &|_| {}).unwrap();
    assert!(!full.stopped_early);
    assert_eq!(full.trained.len() as u64, full.state.step, "batch 1: one sample per step");

    // The same run stopped after 3 steps (as a kill right after a checkpoint), then resumed.
    let run = dir.path().join("resumed").display().to_string();
    let first =
        train(&spec(&data, &run, StageConfig { max_steps: Some(3), ..stage(2) }), &Device::flex(), &|_| {}).unwrap();
    assert!(first.stopped_early);
    for (a, b) in first.metrics.iter().zip(&full.metrics) {
        assert!(
            (a.loss - b.loss).abs() <= 1e-6 * b.loss.abs(),
            "step {}: the computation is deterministic ({} vs {})",
            a.step,
            a.loss,
            b.loss
        );
    }
    let events = std::sync::Mutex::new(Vec::new());
    let second = train(&spec(&data, &run, stage(2)), &Device::flex(), &|e| {
        if let TrainEvent::Started { from, .. } = e {
            events.lock().unwrap().push(*from);
        }
    })
    .unwrap();
    let events = events.into_inner().unwrap();
    assert_eq!(events[0].step, 3, "resumed from the checkpoint at step 3");
    let mut seq = first.trained.clone();
    seq.extend(second.trained.clone());
    assert_eq!(seq, full.trained, "the resumed run sees exactly the remaining sequence");
    assert_eq!(second.state, full.state);
    // Optimiser state came back too: the resumed steps match the uninterrupted ones.
    for (a, b) in second.metrics.iter().zip(&full.metrics[3..]) {
        assert!((a.loss - b.loss).abs() <= 1e-3 * b.loss.abs().max(1.0), "step {}: {} vs {}", a.step, a.loss, b.loss);
    }
    // And the checkpoint's weights load into a fresh model.
    let cfg = s3_trainer::train::model_config(&stage(2)).unwrap();
    let (_, step) =
        s3_trainer::train::load_latest_weights(&run, &StoreOptions::default(), &cfg, &Device::flex()).unwrap();
    assert_eq!(step, full.state.step);
}

/// Rewrites the first shard with its first training sample's stored checksum broken;
/// returns that sample's id and the number of training samples.
fn corrupt_first_train_sample(data: &str) -> (String, usize) {
    let loc = open_store(data, &StoreOptions::default()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let index = rt.block_on(s3_shards::ShardIndex::load(loc.store().as_ref())).unwrap();
    let path = object_store::path::Path::from(index.shards[0].path.as_str());
    let reader = rt.block_on(s3_shards::ShardReader::open(loc.store().clone(), &path)).unwrap();
    let mut samples = rt.block_on(reader.read_all()).unwrap();
    let train_count = samples.iter().filter(|s| s.meta.split == s3_shards::Split::Train).count();
    let k = samples.iter().position(|s| s.meta.split == s3_shards::Split::Train).unwrap();
    samples[k].checksum ^= 0xdead;
    let bad_id = samples[k].sample_id();
    let batch = s3_shards::schema::to_record_batch(&samples).unwrap();
    let props = s3_shards::writer::writer_properties(&WriterOptions::default()).unwrap();
    let mut buf = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, s3_shards::schema::shard_schema(), Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    rt.block_on(loc.store().put(&path, buf.into())).unwrap();
    (bad_id, train_count)
}

#[test]
fn a_corrupted_sample_is_reported_and_not_trained_on() {
    let (dir, data) = data_store(4);
    let (bad_id, train_count) = corrupt_first_train_sample(&data);

    let run = dir.path().join("run").display().to_string();
    let skipped = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = skipped.clone();
    let out = train(&spec(&data, &run, stage(1)), &Device::flex(), &move |e| {
        if let TrainEvent::Skipped { sample_id, reason } = e {
            s2.lock().unwrap().push((sample_id.clone(), reason.clone()));
        }
    })
    .unwrap();
    let skipped = skipped.lock().unwrap();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0].0, bad_id);
    assert!(skipped[0].1.contains("checksum mismatch"), "{}", skipped[0].1);
    assert!(!out.trained.contains(&bad_id));
    assert_eq!(out.trained.len(), train_count - 1);
}

#[test]
fn two_ranks_average_gradients_and_stay_identical() {
    let (dir, data) = data_store(4);
    let st = StageConfig { epochs: 1, ..stage(1) };
    // A world of 2 without a rendezvous address is refused, not run unsynchronised.
    let lonely = RunSpec { world: 2, ..spec(&data, &dir.path().join("x").display().to_string(), st.clone()) };
    let e = train(&lonely, &Device::flex(), &|_| {}).unwrap_err();
    assert!(e.to_string().contains("--master"), "{e}");

    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let run = dir.path().join("ddp").display().to_string();
    let outcomes: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|rank| {
                let spec = RunSpec { rank, world: 2, master: Some(addr.clone()), ..spec(&data, &run, st.clone()) };
                s.spawn(move || train(&spec, &Device::flex(), &|_| {}).unwrap())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (r0, r1) = (&outcomes[0], &outcomes[1]);
    assert_eq!(r0.metrics.len(), r1.metrics.len(), "both ranks take the same steps");
    assert!(!r0.metrics.is_empty());
    assert_eq!(r0.weights_digest, r1.weights_digest, "after every step both ranks hold the same weights");
    for (a, b) in r0.metrics.iter().zip(&r1.metrics) {
        assert_eq!(a.loss, b.loss, "step {}: the logged loss is the mean over ranks", a.step);
    }
    // Between them the ranks covered the epoch, each its own share.
    let solo =
        train(&spec(&data, &dir.path().join("solo").display().to_string(), st), &Device::flex(), &|_| {}).unwrap();
    let mut union: Vec<String> = r0.trained.iter().chain(&r1.trained).cloned().collect();
    union.sort();
    union.dedup();
    let mut all = solo.trained.clone();
    all.sort();
    assert_eq!(union, all);
    assert_ne!(r0.trained, r1.trained, "the ranks trained on different samples");
    // One rank alone ends elsewhere: the all-reduce changed what was learned.
    assert_ne!(solo.weights_digest, r0.weights_digest);

    // A sample skipped on one rank only: step boundaries follow sample positions, so
    // both ranks still take the same steps to the end (were they to follow usable
    // samples, that rank would finish a step early and the other's last all-reduce
    // would find no peer).
    let (bad_id, _) = corrupt_first_train_sample(&data);
    let st = stage(1); // one epoch: the skip lands on one rank only
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let run = dir.path().join("ddp-skip").display().to_string();
    let skipped = std::sync::Mutex::new(Vec::new());
    let outcomes: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|rank| {
                let spec = RunSpec { rank, world: 2, master: Some(addr.clone()), ..spec(&data, &run, st.clone()) };
                let skipped = &skipped;
                s.spawn(move || {
                    train(&spec, &Device::flex(), &|e| {
                        if let TrainEvent::Skipped { sample_id, .. } = e {
                            skipped.lock().unwrap().push((rank, sample_id.clone()));
                        }
                    })
                    .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (r0, r1) = (&outcomes[0], &outcomes[1]);
    let skipped = skipped.into_inner().unwrap();
    assert!(!skipped.is_empty() && skipped.iter().all(|(_, id)| *id == bad_id), "{skipped:?}");
    assert_eq!(r0.metrics.len(), r1.metrics.len());
    assert_eq!(r0.state, r1.state, "same epoch and consumed positions on both ranks");
    assert_eq!(r0.weights_digest, r1.weights_digest);
    assert!(!r0.trained.contains(&bad_id) && !r1.trained.contains(&bad_id));
}
