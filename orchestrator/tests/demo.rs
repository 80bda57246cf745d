//! `s3-orch demo` end to end, shortened: the pipeline on the local backend with real
//! `s3-ingest` and `s3-train` processes (2 ingest workers + merge, 2 ranks per stage),
//! the model learning in stage 1, stage 2 started from stage 1's final checkpoint,
//! the ledger and the outputs in place.

use std::path::Path;
use std::process::Command;

/// Epochs of the shortened stages (a fixed amount of work, whatever the machine).
const STAGE1_EPOCHS: &str = "80";
const STAGE2_EPOCHS: &str = "6";
/// Dice@5 the trained model must reach on the val split (untrained: ~0.01).
const FLOOR: f64 = 0.5;

fn bin(name: &str) -> std::path::PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_s3-orch")).with_file_name(name);
    assert!(p.exists(), "{} missing: `cargo test --workspace` builds it", p.display());
    p
}

#[test]
fn the_demo_runs_the_pipeline_and_learns() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let o = Command::new(env!("CARGO_BIN_EXE_s3-orch"))
        .args(["demo", "--cases", "4", "--stage1-epochs", STAGE1_EPOCHS, "--stage2-epochs", STAGE2_EPOCHS, "--dir"])
        .arg(&dir)
        .env("S3_TRAIN_BIN", bin("s3-train"))
        .env("S3_INGEST_BIN", bin("s3-ingest"))
        .output()
        .unwrap();
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    eprintln!("{out}");
    assert!(o.status.success(), "{out}");
    assert!(out.contains("after stage 1") && out.contains("after stage 2"), "{out}");

    let o = Command::new(env!("CARGO_BIN_EXE_s3-orch"))
        .args(["status", "--run", "demo", "--json", "--runs"])
        .arg(dir.join("runs"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let stage = |name: &str| s["stages"].as_array().unwrap().iter().find(|x| x["name"] == name).unwrap().clone();
    for name in ["ingest", "stage1", "stage2", "eval"] {
        assert_eq!(stage(name)["state"], "succeeded", "{name}: {s}");
    }
    assert_eq!(stage("ingest")["attempts"][0]["exit_codes"].as_array().unwrap().len(), 3, "2 workers + merge");
    assert_eq!(stage("stage1")["attempts"][0]["job_ids"].as_array().unwrap().len(), 2, "2 ranks");
    assert_eq!(stage("stage2")["init"], stage("stage1")["final_checkpoint"]["url"]);
    assert_eq!(stage("eval")["init"], stage("stage2")["final_checkpoint"]["url"], "eval reads stage 2's weights");

    // Dice at every click count after each stage, and the model learned in stage 1.
    let stage1_eval: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("runs/demo/stage1/eval/val.json")).unwrap()).unwrap();
    assert!(!stage1_eval["samples"].as_array().unwrap().is_empty(), "there are val samples");
    let eval = &stage("eval")["attempts"][0]["metrics"];
    for c in [1, 3, 5, 10] {
        let d = eval[format!("dice@{c}")].as_f64().unwrap_or_else(|| panic!("dice@{c} in {eval}"));
        assert!((0.0..=1.0).contains(&d), "Dice@{c} = {d}");
    }
    let dice5 = eval["dice@5"].as_f64().unwrap();
    assert!(dice5 >= FLOOR, "Dice@5 after both stages {dice5:.3} (floor {FLOOR})");
    // Stage 2 fine-tunes the selection the phantom catalogue marks: CT only.
    let stage2_eval: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("runs/demo/stage2/eval/val.json")).unwrap()).unwrap();
    let datasets: std::collections::BTreeSet<&str> =
        stage2_eval["samples"].as_array().unwrap().iter().map(|x| x["dataset"].as_str().unwrap()).collect();
    assert_eq!(datasets.into_iter().collect::<Vec<_>>(), ["PhantomCT"]);

    for f in ["stage1/metrics.png", "stage2/metrics.png", "stage1/config.json", "stage2/checkpoints/latest.json"] {
        assert!(dir.join("runs/demo").join(f).exists(), "{f} written");
    }
    assert!(dir.join("store/index.json").exists());

    // A rerun starts afresh in its own folder, and a folder no demo made is refused.
    let other = tmp.path().join("mine");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("precious.txt"), "keep").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_s3-orch")).args(["demo", "--dir"]).arg(&other).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("no demo made it"));
    assert!(other.join("precious.txt").exists());
}
