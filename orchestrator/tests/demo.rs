//! The demo pipeline end to end, shortened: phantom corpus → ingest → evaluate →
//! train briefly → evaluate, with its outputs in place.

use s3_orch::demo::{DemoConfig, dice_table, run_demo};

#[test]
fn demo_runs_end_to_end_and_reports_dice() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = DemoConfig { dir: tmp.path().join("demo"), cases: 4, minutes: 0.15, val_percent: 50 };
    let steps = std::sync::atomic::AtomicU64::new(0);
    let report = run_demo(&cfg, &|_| {}, &|e| {
        if let s3_trainer::train::TrainEvent::Step(m) = e {
            steps.store(m.step, std::sync::atomic::Ordering::Relaxed);
            assert!(m.loss.is_finite());
        }
    })
    .unwrap();
    assert!(report.training.state.step >= 1);
    assert!(!report.after.samples.is_empty(), "there are val samples to evaluate");
    for rep in [&report.before, &report.after] {
        for c in [1, 3, 5, 10] {
            let d = rep.mean_at(c).unwrap();
            assert!((0.0..=1.0).contains(&d), "Dice@{c} = {d}");
        }
    }
    let table = dice_table(&report);
    assert!(table.contains("untrained") && table.contains("trained"), "{table}");
    for f in
        ["metrics.csv", "metrics.png", "config.json", "eval/val.csv", "eval/val_before.json", "checkpoints/latest.json"]
    {
        assert!(report.run_dir.join(f).exists(), "{f} written");
    }
    assert!(report.store.join("index.json").exists());
}
