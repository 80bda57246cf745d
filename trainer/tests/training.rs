//! Training on synthetic shards: loss goes down, a killed run resumes with exactly
//! the remaining samples, checkpoints round-trip, corrupted samples are skipped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::prelude::*;
use object_store::ObjectStoreExt;
use s3_shards::{StoreOptions, WriterOptions, open_store, synthetic};
use s3_trainer::schedule::Schedule;
use s3_trainer::stage::{LossResolution, Selection, StageConfig};
use s3_trainer::train::{RunSpec, StepMetrics, TrainEvent, TrainOutcome, TrainState, train};

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
        keep_last: 0,
        init: None,
        legacy_loss: false,
        click_memory: Default::default(),
        loss_resolution: LossResolution::Full,
        shard_window: 2,
        max_steps: None,
        max_minutes: None,
        data: Default::default(),
        launch: Default::default(),
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
    RunSpec::new(data, run, stage)
}

/// A run's outcome with what its events reported step by step.
struct Recorded {
    out: TrainOutcome,
    metrics: Vec<StepMetrics>,
    trained: Vec<String>,
    skipped: Vec<(String, String)>,
    from: Option<TrainState>,
}

fn record(spec: &RunSpec) -> s3_trainer::Result<Recorded> {
    let seen = std::sync::Mutex::new((Vec::new(), Vec::new(), Vec::new(), None));
    let out = train(spec, &Device::flex(), &|e| {
        let mut g = seen.lock().unwrap();
        match e {
            TrainEvent::Step { metrics, samples } => {
                g.0.push(metrics.clone());
                g.1.extend(samples.iter().cloned());
            }
            TrainEvent::Skipped { sample_id, reason } => g.2.push((sample_id.clone(), reason.clone())),
            TrainEvent::Started { from, .. } => g.3 = Some(*from),
            _ => {}
        }
    })?;
    let (metrics, trained, skipped, from) = seen.into_inner().unwrap();
    Ok(Recorded { out, metrics, trained, skipped, from })
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
        let r = record(&spec(&data, &run, st)).unwrap();
        assert_eq!(r.metrics.len(), steps as usize);
        let mean = |m: &[StepMetrics]| m.iter().map(|x| x.loss).sum::<f64>() / m.len() as f64;
        let w = steps as usize / 4;
        let (first, last) = (mean(&r.metrics[..w]), mean(&r.metrics[steps as usize - w..]));
        assert!(last < first * 0.9, "{resolution:?} legacy={legacy}: loss {first:.4} → {last:.4}");
        assert!(r.out.stopped_early);
        // The run folder has its curves plotted.
        let png = std::fs::read(dir.path().join("run/metrics.png")).expect("metrics.png written");
        assert!(png.starts_with(b"\x89PNG"), "metrics.png is a PNG");
    }
}

#[test]
fn killed_run_resumes_with_exactly_the_remaining_samples() {
    let (dir, data) = data_store(3);
    let full_run = dir.path().join("full").display().to_string();
    let full = record(&spec(&data, &full_run, stage(2))).unwrap();
    assert!(!full.out.stopped_early);
    assert_eq!(full.trained.len() as u64, full.out.state.step, "batch 1: one sample per step");

    // The same run stopped after 3 steps (as a kill right after a checkpoint), then resumed.
    let run = dir.path().join("resumed").display().to_string();
    let first = record(&spec(&data, &run, StageConfig { max_steps: Some(3), ..stage(2) })).unwrap();
    assert!(first.out.stopped_early);
    for (a, b) in first.metrics.iter().zip(&full.metrics) {
        assert!(
            (a.loss - b.loss).abs() <= 1e-6 * b.loss.abs(),
            "step {}: the computation is deterministic ({} vs {})",
            a.step,
            a.loss,
            b.loss
        );
    }
    let second = record(&spec(&data, &run, stage(2))).unwrap();
    assert_eq!(second.from.map(|f| f.step), Some(3), "resumed from the checkpoint at step 3");
    let mut seq = first.trained.clone();
    seq.extend(second.trained.clone());
    assert_eq!(seq, full.trained, "the resumed run sees exactly the remaining sequence");
    assert_eq!(second.out.state, full.out.state);
    assert_eq!(second.out.weights_digest, full.out.weights_digest, "resumed weights = uninterrupted weights");
    // Optimiser state came back too: the resumed steps match the uninterrupted ones.
    for (a, b) in second.metrics.iter().zip(&full.metrics[3..]) {
        assert!((a.loss - b.loss).abs() <= 1e-3 * b.loss.abs().max(1.0), "step {}: {} vs {}", a.step, a.loss, b.loss);
    }
    // The metrics history is whole: every step once, none erased by the resume.
    let loc = open_store(&run, &StoreOptions::default()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let steps: Vec<u64> =
        rt.block_on(s3_trainer::metrics::read_all(loc.store().as_ref())).unwrap().iter().map(|m| m.step).collect();
    assert_eq!(steps, (1..=full.out.state.step).collect::<Vec<_>>());
    // And the checkpoint's weights load into a fresh model.
    let cfg = s3_trainer::run_inputs::model_config(&stage(2)).unwrap();
    let (_, step) =
        s3_trainer::run_inputs::load_latest_weights(&run, &StoreOptions::default(), &cfg, &Device::flex()).unwrap();
    assert_eq!(step, full.out.state.step);
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
    let r = record(&spec(&data, &run, stage(1))).unwrap();
    let skipped = &r.skipped;
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0].0, bad_id);
    assert!(skipped[0].1.contains("checksum mismatch"), "{}", skipped[0].1);
    assert!(!r.trained.contains(&bad_id));
    assert_eq!(r.trained.len(), train_count - 1);
}

/// Runs `world` ranks of `st` in threads; their records in rank order.
fn ranks(data: &str, run: &str, st: &StageConfig, world: usize) -> Vec<Recorded> {
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let spec = RunSpec { rank, world, master: Some(addr.clone()), ..spec(data, run, st.clone()) };
                s.spawn(move || record(&spec).unwrap())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn two_ranks_average_gradients_and_stay_identical() {
    let (dir, data) = data_store(4);
    let st = StageConfig { epochs: 1, ..stage(1) };
    // A world of 2 without a rendezvous address is refused, not run unsynchronised.
    let lonely = RunSpec { world: 2, ..spec(&data, &dir.path().join("x").display().to_string(), st.clone()) };
    let e = train(&lonely, &Device::flex(), &|_| {}).unwrap_err();
    assert!(e.to_string().contains("--master"), "{e}");

    let run = dir.path().join("ddp").display().to_string();
    let outcomes = ranks(&data, &run, &st, 2);
    let (r0, r1) = (&outcomes[0], &outcomes[1]);
    assert_eq!(r0.metrics.len(), r1.metrics.len(), "both ranks take the same steps");
    assert!(!r0.metrics.is_empty());
    assert_eq!(r0.out.weights_digest, r1.out.weights_digest, "after every step both ranks hold the same weights");
    for (a, b) in r0.metrics.iter().zip(&r1.metrics) {
        assert_eq!(a.loss, b.loss, "step {}: the logged loss is the mean over ranks", a.step);
    }
    // Between them the ranks covered the epoch, each its own share.
    let solo = record(&spec(&data, &dir.path().join("solo").display().to_string(), st)).unwrap();
    let mut union: Vec<String> = r0.trained.iter().chain(&r1.trained).cloned().collect();
    union.sort();
    union.dedup();
    let mut all = solo.trained.clone();
    all.sort();
    assert_eq!(union, all);
    assert_ne!(r0.trained, r1.trained, "the ranks trained on different samples");
    // One rank alone ends elsewhere: the all-reduce changed what was learned.
    assert_ne!(solo.out.weights_digest, r0.out.weights_digest);

    // A sample skipped on one rank only: step boundaries follow sample positions, so
    // both ranks still take the same steps to the end (were they to follow usable
    // samples, that rank would finish a step early and the other's last all-reduce
    // would find no peer).
    let (bad_id, _) = corrupt_first_train_sample(&data);
    let run = dir.path().join("ddp-skip").display().to_string();
    let outcomes = ranks(&data, &run, &stage(1), 2);
    let (r0, r1) = (&outcomes[0], &outcomes[1]);
    let skipped: Vec<&String> = outcomes.iter().flat_map(|r| r.skipped.iter().map(|(id, _)| id)).collect();
    assert!(!skipped.is_empty() && skipped.iter().all(|id| **id == bad_id), "{skipped:?}");
    assert_eq!(r0.metrics.len(), r1.metrics.len());
    assert_eq!(r0.out.state, r1.out.state, "same epoch and consumed positions on both ranks");
    assert_eq!(r0.out.weights_digest, r1.out.weights_digest);
    assert!(!r0.trained.contains(&bad_id) && !r1.trained.contains(&bad_id));
}

#[test]
fn a_two_rank_run_resumed_as_one_rank_keeps_the_global_order() {
    let (dir, data) = data_store(6);
    let st = StageConfig { epochs: 1, checkpoint_every: 1, ..stage(1) };
    let solo = record(&spec(&data, &dir.path().join("solo").display().to_string(), st.clone())).unwrap();
    // Two ranks for two steps: global positions 0..4, rank r at 2k + r.
    let run = dir.path().join("ddp").display().to_string();
    let two = ranks(&data, &run, &StageConfig { max_steps: Some(2), ..st.clone() }, 2);
    let mut interleaved = Vec::new();
    for k in 0..2 {
        interleaved.extend([two[0].trained[k].clone(), two[1].trained[k].clone()]);
    }
    // The rest of the epoch on one rank, from the two-rank checkpoint.
    let one = record(&spec(&data, &run, st)).unwrap();
    assert_eq!(one.from.map(|f| f.sampler.consumed), Some(4));
    interleaved.extend(one.trained);
    assert_eq!(interleaved, solo.trained, "the same global sequence, whatever the world size");
}

#[test]
fn resuming_onto_another_config_or_other_data_is_refused() {
    let (dir, data) = data_store(3);
    let run = dir.path().join("run").display().to_string();
    record(&spec(&data, &run, StageConfig { max_steps: Some(2), ..stage(2) })).unwrap();
    // Another learning rate: refused, naming the field.
    let e = record(&spec(&data, &run, StageConfig { lr: 0.5, ..stage(2) })).err().unwrap().to_string();
    assert!(e.contains("stage.lr") && e.contains("0.5"), "{e}");
    // A longer budget is not another run.
    record(&spec(&data, &run, StageConfig { max_steps: Some(3), checkpoint_every: 1, ..stage(2) })).unwrap();
    // Relaunched at its budget: not one more step.
    let again = record(&spec(&data, &run, StageConfig { max_steps: Some(3), ..stage(2) })).unwrap();
    assert_eq!((again.out.steps_run, again.out.state.step), (0, 3));
    // The same store re-published with other samples: refused.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let loc = open_store(&data, &StoreOptions::default()).unwrap();
    rt.block_on(synthetic::populate(loc.store(), 1, 5, 1, WriterOptions { row_group_rows: 2, ..Default::default() }))
        .unwrap();
    let e = record(&spec(&data, &run, stage(2))).err().unwrap().to_string();
    assert!(e.contains("data changed"), "{e}");
    // eval reads the run's own stage back from config.json.
    let back = s3_trainer::run_inputs::load_run_stage(&run, &StoreOptions::default()).unwrap();
    assert_eq!(back.lr, stage(2).lr);
    // Its selection is the datasets it trained on, not a catalogue to read again.
    assert_eq!(back.datasets.select, "none");
    let available: std::collections::BTreeSet<String> = ["SYNTH_CT_0".to_string(), "OTHER".to_string()].into();
    let chosen = back.select_datasets(&available).unwrap();
    assert_eq!(chosen, ["SYNTH_CT_0".to_string()].into(), "only what it trained on");
}

#[test]
fn a_store_that_keeps_failing_stops_the_run_and_the_rerun_finishes_exactly() {
    // One-row groups over many samples: the loader has to go back to the store
    // throughout the epoch.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let loc = open_store(&data, &StoreOptions::default()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(synthetic::populate(loc.store(), 1, 14, 1, WriterOptions { row_group_rows: 1, ..Default::default() }))
        .unwrap();
    let st = StageConfig { epochs: 1, checkpoint_every: 2, ..stage(1) };
    let clean = record(&spec(&data, &dir.path().join("clean").display().to_string(), st.clone())).unwrap();
    assert!(clean.out.state.step >= 8, "enough steps for the failure to land mid-epoch");

    let shards = dir.path().join("data/shards");
    let hidden = dir.path().join("hidden-shards");
    let run = dir.path().join("run").display().to_string();
    let moved = std::sync::atomic::AtomicBool::new(false);
    let skipped = std::sync::Mutex::new(Vec::new());
    let e = train(&spec(&data, &run, st.clone()), &Device::flex(), &|e| match e {
        // The shards vanish from under the loader after step 3 (a dead mount, a
        // bucket that stopped answering).
        TrainEvent::Step { metrics, .. }
            if metrics.step == 3 && !moved.swap(true, std::sync::atomic::Ordering::SeqCst) =>
        {
            std::fs::rename(&shards, &hidden).unwrap();
        }
        TrainEvent::Skipped { sample_id, .. } => skipped.lock().unwrap().push(sample_id.clone()),
        _ => {}
    })
    .unwrap_err();
    assert!(e.to_string().contains("reading "), "the run stops naming the sample: {e}");
    assert!(skipped.lock().unwrap().is_empty(), "no sample was skipped for a store failure");
    // The store comes back; the same command resumes and ends exactly where an
    // undisturbed run does.
    std::fs::rename(&hidden, &shards).unwrap();
    let resumed = record(&spec(&data, &run, st)).unwrap();
    assert!(resumed.from.unwrap().step >= 2);
    assert_eq!(resumed.out.state, clean.out.state);
    assert_eq!(resumed.out.weights_digest, clean.out.weights_digest);
}

#[test]
fn init_from_an_s3_checkpoint_and_keep_last_prunes_old_checkpoints() {
    let (dir, data) = data_store(3);
    let server = s3_test_support::S3Server::start();
    let opts =
        StoreOptions::endpoint_with_keys(&server.endpoint(), s3_test_support::ACCESS_KEY, s3_test_support::SECRET_KEY);
    let on_s3 = |run: &str, st: StageConfig| RunSpec { store_options: opts.clone(), ..spec(&data, run, st) };
    let run1 = server.url("runs/stage1");
    let st1 = StageConfig { max_steps: Some(4), checkpoint_every: 1, keep_last: 2, ..stage(3) };
    record(&on_s3(&run1, st1)).unwrap();
    let loc = open_store(&run1, &opts).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let steps = rt.block_on(s3_trainer::checkpoint::checkpoint_steps(loc.store().as_ref())).unwrap();
    assert_eq!(steps, vec![3, 4], "keep_last = 2 keeps the newest two");

    let st2 = |init: Option<String>| StageConfig { max_steps: Some(1), init, ..stage(3) };
    let url = format!("{run1}/checkpoints/step-00000004/weights.safetensors");
    let run2 = |name: &str| dir.path().join(name).display().to_string();
    let from_init = record(&on_s3(&run2("s2"), st2(Some(url)))).unwrap();
    let scratch = record(&on_s3(&run2("s2b"), st2(None))).unwrap();
    assert_ne!(from_init.metrics[0].loss, scratch.metrics[0].loss, "the stage-1 weights were loaded");
    // The launcher's expected hash is checked against the copy each rank read.
    let url4 = format!("{run1}/checkpoints/step-00000004/weights.safetensors");
    let wrong = RunSpec { init_xxh3: Some(1), ..on_s3(&run2("s2d"), st2(Some(url4))) };
    let e = record(&wrong).err().unwrap().to_string();
    assert!(e.contains("expected 0000000000000001"), "{e}");
    let pruned = format!("{run1}/checkpoints/step-00000001/weights.safetensors");
    let e = record(&on_s3(&run2("s2c"), st2(Some(pruned)))).err().unwrap();
    assert!(format!("{e:#}").to_lowercase().contains("not found"), "{e}");
}

#[test]
fn the_s3_server_stopping_mid_run_ends_it_and_the_rerun_matches_an_undisturbed_run() {
    let server = std::sync::Mutex::new(s3_test_support::S3Server::start());
    let (endpoint, data, clean_run, run) = {
        let s = server.lock().unwrap();
        (s.endpoint(), s.url("data"), s.url("runs/clean"), s.url("runs/outage"))
    };
    let mut opts =
        StoreOptions::endpoint_with_keys(&endpoint, s3_test_support::ACCESS_KEY, s3_test_support::SECRET_KEY);
    // Fail fast while the server is down (the loader retries on top of this).
    opts.retry = s3_shards::Retry {
        max_retries: 1,
        timeout: std::time::Duration::from_secs(2),
        initial_backoff: std::time::Duration::from_millis(50),
    };
    let loc = open_store(&data, &opts).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(synthetic::populate(loc.store(), 1, 8, 1, WriterOptions { row_group_rows: 2, ..Default::default() }))
        .unwrap();
    let st = StageConfig { epochs: 1, checkpoint_every: 3, ..stage(1) };
    let on_s3 = |run: &str| RunSpec { store_options: opts.clone(), ..spec(&data, run, st.clone()) };
    let clean = record(&on_s3(&clean_run)).unwrap();
    assert!(clean.out.state.step >= 5);

    let e = train(&on_s3(&run), &Device::flex(), &|e| {
        if let TrainEvent::Step { metrics, .. } = e
            && metrics.step == 4
        {
            server.lock().unwrap().stop();
        }
    })
    .unwrap_err();
    eprintln!("the run ended with: {e}");
    server.lock().unwrap().restart();
    let resumed = record(&on_s3(&run)).unwrap();
    assert!(resumed.from.is_some_and(|f| f.step == 3), "resumed from the checkpoint written before the outage");
    assert_eq!(resumed.out.state, clean.out.state);
    assert_eq!(resumed.out.weights_digest, clean.out.weights_digest, "the same weights as an undisturbed run");
}

#[test]
fn a_preemption_on_one_rank_stops_every_rank_at_the_same_step_with_a_checkpoint() {
    let (dir, data) = data_store(6);
    let st = StageConfig { epochs: 2, checkpoint_every: 100, ..stage(2) };
    let undisturbed = ranks(&data, &dir.path().join("clean").display().to_string(), &st, 2);
    let run = dir.path().join("preempted").display().to_string();
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let flag = Arc::new(AtomicBool::new(false));
    let outcomes: Vec<TrainOutcome> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|rank| {
                let preempt = (rank == 1).then(|| flag.clone());
                let spec =
                    RunSpec { rank, world: 2, master: Some(addr.clone()), preempt, ..spec(&data, &run, st.clone()) };
                let flag = flag.clone();
                s.spawn(move || {
                    train(&spec, &Device::flex(), &|e| {
                        // Rank 1 alone is signalled after its second step.
                        if let TrainEvent::Step { metrics, .. } = e
                            && rank == 1
                            && metrics.step == 2
                        {
                            flag.store(true, Ordering::SeqCst);
                        }
                    })
                    .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(outcomes.iter().all(|o| o.preempted), "both ranks stop on rank 1's signal");
    assert_eq!(outcomes[0].state, outcomes[1].state, "at the same step");
    assert_eq!(outcomes[0].state.step, 3, "at the next step boundary");
    let loc = open_store(&run, &StoreOptions::default()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let latest = rt.block_on(s3_trainer::checkpoint::read_latest(loc.store().as_ref())).unwrap().unwrap();
    assert_eq!(latest.step, 3, "checkpointed at the step it stopped");
    // Requeued: the relaunch finishes the stage where an undisturbed run ends.
    let resumed = ranks(&data, &run, &st, 2);
    assert_eq!(resumed[0].out.weights_digest, undisturbed[0].out.weights_digest);
    assert_eq!(resumed[0].out.state, undisturbed[0].out.state);
}

#[test]
fn ranks_whose_weights_diverge_are_stopped_at_the_first_checkpoint() {
    let (dir, data) = data_store(4);
    let st = StageConfig { epochs: 1, checkpoint_every: 2, ..stage(1) };
    let run = dir.path().join("diverged").display().to_string();
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    // Same gradients, different step sizes: the copies drift apart from step 1.
    let errors: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|rank| {
                let st = StageConfig { lr: if rank == 0 { 2e-3 } else { 3e-3 }, ..st.clone() };
                let spec = RunSpec { rank, world: 2, master: Some(addr.clone()), ..spec(&data, &run, st) };
                s.spawn(move || train(&spec, &Device::flex(), &|_| {}).unwrap_err().to_string())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for e in &errors {
        assert!(e.contains("different weights") && e.contains("at step 2") && e.contains("rank 1"), "{e}");
    }
    let loc = open_store(&run, &StoreOptions::default()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert!(
        rt.block_on(s3_trainer::checkpoint::read_latest(loc.store().as_ref())).unwrap().is_none(),
        "no checkpoint of diverged weights"
    );
}

#[test]
fn starting_over_forgets_the_old_checkpoint_before_the_first_new_one() {
    let (dir, data) = data_store(3);
    let run = dir.path().join("run").display().to_string();
    record(&spec(&data, &run, StageConfig { max_steps: Some(2), checkpoint_every: 1, ..stage(2) })).unwrap();
    // --no-resume, and the process dies before its first checkpoint.
    let fresh = RunSpec { resume: false, ..spec(&data, &run, StageConfig { checkpoint_every: 100, ..stage(2) }) };
    let died = std::panic::catch_unwind(|| {
        train(&fresh, &Device::flex(), &|e| {
            if let TrainEvent::Step { .. } = e {
                panic!("killed");
            }
        })
    });
    assert!(died.is_err());
    let loc = open_store(&run, &StoreOptions::default()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let latest = rt.block_on(s3_trainer::checkpoint::read_latest(loc.store().as_ref())).unwrap();
    assert!(latest.is_none(), "a later resume must not land on the run that was started over: {latest:?}");
}

#[test]
fn a_node_local_shard_cache_trains_the_same_and_holds_every_shard_verified() {
    let (dir, data) = data_store(2);
    let st = StageConfig { checkpoint_every: 100, ..stage(2) };
    let plain = record(&spec(&data, &dir.path().join("plain").display().to_string(), st.clone())).unwrap();
    let cache = dir.path().join("cache");
    let cached_spec = RunSpec {
        shard_cache: Some(s3_trainer::shard_cache::CacheSettings { dir: cache.clone(), limit: u64::MAX }),
        ..spec(&data, &dir.path().join("cached").display().to_string(), st)
    };
    let cached = record(&cached_spec).unwrap();
    assert_eq!(cached.trained, plain.trained, "the same samples in the same order");
    assert_eq!(cached.out.weights_digest, plain.out.weights_digest, "the same weights");
    let loc = open_store(&data, &StoreOptions::default()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let index = rt.block_on(s3_shards::ShardIndex::load(loc.store().as_ref())).unwrap();
    for s in &index.shards {
        let bytes = std::fs::read(cache.join(&s.path)).unwrap_or_else(|e| panic!("{} not cached: {e}", s.path));
        assert_eq!(xxhash_rust::xxh3::xxh3_64(&bytes), s.xxh3, "{} cached whole and intact", s.path);
    }
}

/// A store of one dataset in many small shards (the node-aware order needs several).
fn many_shards(cases: usize) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("data").display().to_string();
    let loc = open_store(&url, &StoreOptions::default()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let opts = WriterOptions { row_group_rows: 1, target_file_bytes: 1, ..Default::default() };
    rt.block_on(synthetic::populate(loc.store(), 1, cases, 1, opts)).unwrap();
    (dir, url)
}

/// Shard files in a cache folder.
fn cached_shards(dir: &std::path::Path) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() && !p.ends_with(".locks") {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.insert(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out
}

#[test]
fn two_nodes_with_a_cache_each_read_their_own_shards_and_resume_on_one_node() {
    let (dir, data) = many_shards(6);
    let st = StageConfig { checkpoint_every: 1, ..stage(2) };
    // Two nodes of one rank each, each node with its own cache folder.
    let two_nodes = |run: &str, st: &StageConfig, node_order: Option<bool>| -> Vec<Recorded> {
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..2)
                .map(|rank| {
                    let cache = dir.path().join(format!("{run}-cache{rank}"));
                    let spec = RunSpec {
                        rank,
                        world: 2,
                        nodes: 2,
                        node_order,
                        master: Some(addr.clone()),
                        shard_cache: Some(s3_trainer::shard_cache::CacheSettings { dir: cache, limit: u64::MAX }),
                        ..spec(&data, &dir.path().join(run).display().to_string(), st.clone())
                    };
                    s.spawn(move || record(&spec).unwrap())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    let loc = open_store(&data, &StoreOptions::default()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rows = rt.block_on(s3_shards::samples_table::read(loc.store().as_ref())).unwrap();
    let train: Vec<_> = rows.into_iter().filter(|r| r.split == s3_shards::Split::Train).collect();
    let shard_of: std::collections::BTreeMap<String, String> =
        train.iter().map(|r| (r.sample_id.clone(), r.shard.clone())).collect();
    let spans = s3_trainer::sampler::Sampler::from_rows(&train, st.seed, st.shard_window).node_shards(2);
    let all: std::collections::BTreeSet<String> = shard_of.values().cloned().collect();
    assert!(all.len() >= 4, "{} shards", all.len());

    let on = two_nodes("aware", &st, None); // on by default with a cache
    for (node, r) in on.iter().enumerate() {
        assert!(r.trained.iter().all(|id| spans[node].contains(&shard_of[id])), "node {node} read off its span");
        let held = cached_shards(&dir.path().join(format!("aware-cache{node}")));
        let span: std::collections::BTreeSet<String> = spans[node].iter().cloned().collect();
        assert_eq!(held, span, "node {node} fetched its span's shards, no others, over 2 epochs");
    }
    // Each epoch, the two nodes together trained on every sample once.
    let per_epoch = on[0].trained.len() / 2;
    for e in 0..2 {
        let mut epoch: Vec<&String> = on.iter().flat_map(|r| &r.trained[e * per_epoch..(e + 1) * per_epoch]).collect();
        epoch.sort();
        epoch.dedup();
        assert_eq!(epoch.len(), shard_of.len(), "epoch {e}");
    }
    assert_eq!(on[0].out.weights_digest, on[1].out.weights_digest);

    // The global order instead: each node reads shards of every span, so each folder
    // ends up with (nearly) all of them.
    two_nodes("global", &st, Some(false));
    let held: usize = (0..2).map(|n| cached_shards(&dir.path().join(format!("global-cache{n}"))).len()).sum();
    assert!(held > all.len() + 1, "global order: {held} copies of {} shards", all.len());

    // Stopped mid-epoch on two nodes, resumed on one: the rest of the epoch keeps the
    // two-node sequence, and every sample of it is trained once.
    let part = two_nodes("moved", &StageConfig { max_steps: Some(1), ..st.clone() }, None);
    let one = record(&RunSpec {
        shard_cache: Some(s3_trainer::shard_cache::CacheSettings {
            dir: dir.path().join("moved-one"),
            limit: u64::MAX,
        }),
        ..spec(&data, &dir.path().join("moved").display().to_string(), st.clone())
    })
    .unwrap();
    assert_eq!(one.from.map(|f| (f.sampler.consumed, f.sampler.nodes)), Some((2, 2)));
    let rest = one.trained[..shard_of.len() - 2].iter().cloned();
    let mut epoch0: Vec<String> = part.iter().flat_map(|r| r.trained.clone()).chain(rest).collect();
    epoch0.sort();
    let n = epoch0.len();
    epoch0.dedup();
    assert_eq!((n, epoch0.len()), (shard_of.len(), shard_of.len()), "each sample of epoch 0 once");
}

#[test]
fn with_a_cache_of_a_nodes_share_epochs_after_the_first_read_nothing_from_the_s3_server() {
    let server = s3_test_support::S3Server::start();
    let opts =
        StoreOptions::endpoint_with_keys(&server.endpoint(), s3_test_support::ACCESS_KEY, s3_test_support::SECRET_KEY);
    let data = open_store(&server.url("node-cache"), &opts).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let writer = WriterOptions { row_group_rows: 1, target_file_bytes: 1, ..Default::default() };
    let index = rt.block_on(synthetic::populate(data.store(), 1, 8, 1, writer)).unwrap();
    let (nodes, per_node) = (2, 2);
    let run = |cache: Option<u64>| -> Vec<Vec<s3_trainer::bench::EpochRead>> {
        let dirs: Vec<tempfile::TempDir> = (0..nodes).map(|_| tempfile::tempdir().unwrap()).collect();
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..nodes * per_node)
                .map(|rank| {
                    let b = s3_trainer::bench::LoaderEpochs {
                        epochs: 3,
                        rank,
                        world: nodes * per_node,
                        nodes,
                        threads: 1,
                        cache: cache.map(|limit| s3_trainer::shard_cache::CacheSettings {
                            dir: dirs[rank / per_node].path().into(),
                            limit,
                        }),
                        node_order: None,
                    };
                    let data = &data;
                    s.spawn(move || s3_trainer::bench::loader_epochs(data, &b).unwrap())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    let rows = rt.block_on(s3_shards::samples_table::read(data.store().as_ref())).unwrap();
    let train: Vec<_> = rows.into_iter().filter(|r| r.split == s3_shards::Split::Train).collect();
    let spans = s3_trainer::sampler::Sampler::from_rows(&train, 1, 4).node_shards(nodes as u64);
    let bytes = |k: &String| index.shards.iter().find(|s| &s.path == k).unwrap().bytes;
    let share = spans.iter().map(|keys| keys.iter().map(bytes).sum::<u64>()).max().unwrap();

    let cached = run(Some(share));
    let epoch = |e: usize| cached.iter().map(|r| r[e].store_bytes).sum::<u64>();
    let first: u64 = spans.iter().flatten().map(bytes).sum();
    assert_eq!(epoch(0), first, "epoch 1: each node fetches its span's shards once");
    assert_eq!((epoch(1), epoch(2)), (0, 0), "later epochs read nothing from the store");
    let downloads: u64 = cached.iter().map(|r| r[0].downloads).sum();
    assert_eq!(downloads, spans.iter().map(Vec::len).sum::<usize>() as u64, "one download per shard per node");
    assert!(cached.iter().all(|r| r.iter().all(|e| e.failed == 0 && e.samples > 0)));

    let streamed = run(None);
    assert!((0..3).all(|e| streamed.iter().map(|r| r[e].store_bytes).sum::<u64>() > 0), "no cache: every epoch reads");
}
