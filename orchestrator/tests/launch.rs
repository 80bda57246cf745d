//! `s3-orch launch` on the local backend with real `s3-train` rank processes: the
//! ledger, stage 2 gated on a verified stage-1 checkpoint, idempotent relaunch, a
//! killed rank failing the attempt and the relaunch resuming it.

mod common;
use common::{digests, samples, small_store, text};

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn stage_toml(name: &str, epochs: u64, seed: u64) -> String {
    format!(
        r#"name = "{name}"
preset = "small"
epochs = {epochs}
lr = 2e-3
decoder_lr_factor = 1.0
batch = 1
accumulation = 1
clicks = 2
seed = {seed}
checkpoint_every = 2
shard_window = 2
loss_resolution = "low"
legacy_loss = true
[schedule]
kind = "constant"
"#
    )
}

struct Fixture {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    runs: PathBuf,
    stages: PathBuf,
}

fn fixture(stage1_epochs: u64) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    small_store(&data);
    let stages = tmp.path().join("stages");
    std::fs::create_dir_all(&stages).unwrap();
    std::fs::write(stages.join("stage1.toml"), stage_toml("stage1", stage1_epochs, 1)).unwrap();
    std::fs::write(stages.join("stage2.toml"), stage_toml("stage2", 1, 2)).unwrap();
    let runs = tmp.path().join("runs");
    Fixture { _tmp: tmp, data, runs, stages }
}

fn orch(f: &Fixture, args: &[&str]) -> Command {
    let train = Path::new(env!("CARGO_BIN_EXE_s3-orch")).with_file_name("s3-train");
    assert!(train.exists(), "{} missing: `cargo test --workspace` builds it", train.display());
    let mut c = Command::new(env!("CARGO_BIN_EXE_s3-orch"));
    c.args(args);
    if matches!(args.first(), Some(&"launch")) {
        c.arg("--data").arg(&f.data).arg("--stages").arg(&f.stages);
    }
    if !args.contains(&"--runs") {
        c.arg("--runs").arg(&f.runs);
    }
    c.env("S3_TRAIN_BIN", train);
    c
}

fn run(f: &Fixture, args: &[&str]) -> Output {
    orch(f, args).output().unwrap()
}

fn status(f: &Fixture, run_id: &str) -> serde_json::Value {
    let o = run(f, &["status", "--run", run_id, "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn stage<'a>(s: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    s["stages"].as_array().unwrap().iter().find(|x| x["name"] == name).unwrap_or_else(|| panic!("{name} in {s}"))
}

#[test]
fn stage2_is_gated_on_a_verified_stage1_and_a_succeeded_stage_is_not_run_again() {
    let f = fixture(1);
    // Stage 2 before stage 1: refused.
    let o = run(&f, &["launch", "stage2", "--run", "r1", "--ranks", "2"]);
    assert!(!o.status.success() && text(&o).contains("stage 1 has not succeeded"), "{}", text(&o));

    // The dry run prints the rank commands and writes nothing.
    let o = run(&f, &["launch", "stage1", "--run", "r1", "--ranks", "2", "--dry-run"]);
    let shown = text(&o);
    assert!(o.status.success(), "{shown}");
    for want in [
        "RANK=0 WORLD_SIZE=2 LOCAL_RANK=0",
        "RANK=1 WORLD_SIZE=2",
        "S3_STAGE=stage1",
        "S3_ATTEMPT=1",
        " train --device cpu",
    ] {
        assert!(shown.contains(want), "{want:?} in\n{shown}");
    }
    assert!(!f.runs.join("r1/ledger.json").exists(), "a dry run writes nothing");

    let o = run(&f, &["launch", "stage1", "--run", "r1", "--ranks", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    let s = status(&f, "r1");
    let s1 = stage(&s, "stage1");
    assert_eq!(s1["state"], "succeeded");
    assert_eq!(s1["attempts"].as_array().unwrap().len(), 1);
    let ckpt = s1["final_checkpoint"]["url"].as_str().unwrap().to_string();
    assert!(ckpt.ends_with("weights.safetensors"), "{ckpt}");
    let d = digests(&f.runs.join("r1/logs/stage1/attempt-1"));
    assert_eq!(d.len(), 2);
    assert!(!d[0].is_empty() && d[0] == d[1], "both ranks end with the same weights: {d:?}");

    // Its logs, by rank; nothing left to cancel.
    let o = run(&f, &["logs", "--run", "r1", "--stage", "stage1", "--rank", "1"]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("rank 1/2: trained"), "{}", text(&o));
    let o = run(&f, &["cancel", "--run", "r1"]);
    assert!(o.status.success() && text(&o).contains("nothing running"), "{}", text(&o));

    // Launching it again does nothing.
    let o = run(&f, &["launch", "stage1", "--run", "r1", "--ranks", "2"]);
    assert!(o.status.success() && text(&o).contains("already succeeded"), "{}", text(&o));
    assert_eq!(stage(&status(&f, "r1"), "stage1")["attempts"].as_array().unwrap().len(), 1);

    // Stage 2 starts from stage 1's final checkpoint.
    let o = run(&f, &["launch", "stage2", "--run", "r1", "--ranks", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    let s = status(&f, "r1");
    assert_eq!(stage(&s, "stage2")["state"], "succeeded");
    assert_eq!(stage(&s, "stage2")["init"].as_str(), Some(ckpt.as_str()));

    // A stage-1 checkpoint altered after the fact: stage 2 refuses it.
    let o = run(&f, &["launch", "stage1", "--run", "r2"]);
    assert!(o.status.success(), "{}", text(&o));
    let url = stage(&status(&f, "r2"), "stage1")["final_checkpoint"]["url"].as_str().unwrap().to_string();
    let file = PathBuf::from(url.strip_prefix("file://").unwrap());
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&file, bytes).unwrap();
    let o = run(&f, &["launch", "stage2", "--run", "r2"]);
    assert!(!o.status.success() && text(&o).contains("changed since stage 1 ended"), "{}", text(&o));
}

/// Starts `launch stage1 --run ID --ranks 2`, and once its first checkpoint is
/// written sends `signal` to rank 1 (its pid from the ledger; `cancel`: runs
/// `s3-orch cancel`); the launcher's output.
fn signal_rank_1(f: &Fixture, run_id: &str, signal: &str) -> Output {
    let mut launcher = orch(f, &["launch", "stage1", "--run", run_id, "--ranks", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let latest = f.runs.join(format!("{run_id}/stage1/checkpoints/latest.json"));
    while !latest.exists() {
        assert!(launcher.try_wait().unwrap().is_none(), "the launcher ended before the signal");
        assert!(Instant::now() < deadline, "no checkpoint");
        std::thread::sleep(Duration::from_millis(10));
    }
    let ledger: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.runs.join(format!("{run_id}/ledger.json"))).unwrap()).unwrap();
    let pid = stage(&ledger, "stage1")["attempts"][0]["job_ids"][1].as_str().unwrap().to_string();
    if signal == "cancel" {
        // A second launch while the first runs is refused.
        let o = run(f, &["launch", "stage1", "--run", run_id, "--ranks", "2"]);
        assert!(!o.status.success() && text(&o).contains("still running"), "{}", text(&o));
        let o = run(f, &["cancel", "--run", run_id]);
        assert!(o.status.success() && text(&o).contains("asked stage1"), "{}", text(&o));
    } else {
        assert!(Command::new("kill").args([signal, &pid]).status().unwrap().success());
    }
    launcher.wait_with_output().unwrap()
}

#[test]
fn sigterm_to_one_rank_is_a_preemption_and_the_relaunch_finishes() {
    let f = fixture(8);
    let out = signal_rank_1(&f, "p", "-TERM");
    assert_eq!(out.status.code(), Some(75), "{}", String::from_utf8_lossy(&out.stderr));
    let s = status(&f, "p");
    let a1 = &stage(&s, "stage1")["attempts"][0];
    assert_eq!(stage(&s, "stage1")["state"], "preempted");
    assert_eq!(a1["exit_codes"], serde_json::json!([75, 75]), "every rank checkpointed and exited 75");
    let o = run(&f, &["launch", "stage1", "--run", "p", "--ranks", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    let s = status(&f, "p");
    assert_eq!(stage(&s, "stage1")["state"], "succeeded");
    assert_eq!(stage(&s, "stage1")["attempts"].as_array().unwrap().len(), 2);
}

#[test]
fn cancel_checkpoints_every_rank_and_records_a_preemption() {
    let f = fixture(8);
    let out = signal_rank_1(&f, "c", "cancel");
    assert_eq!(out.status.code(), Some(75), "{}", String::from_utf8_lossy(&out.stderr));
    let s = status(&f, "c");
    assert_eq!(stage(&s, "stage1")["state"], "preempted");
    let steps = stage(&s, "stage1")["attempts"][0]["last_step"].as_u64().unwrap();
    assert!(steps >= 2, "checkpointed where it stopped: {s}");
}

#[test]
fn a_killed_rank_fails_the_attempt_and_the_relaunch_resumes_it() {
    let f = fixture(8);
    let out = signal_rank_1(&f, "k", "-9");
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{said}");
    let s = status(&f, "k");
    let a1 = &stage(&s, "stage1")["attempts"][0];
    assert_eq!(stage(&s, "stage1")["state"], "failed");
    assert!(a1["error"].as_str().unwrap().contains("rank 1"), "the failed rank is named: {a1}");
    assert!(said.contains("rank 1"), "{said}");

    // The relaunch is attempt 2 and resumes from the last checkpoint.
    let o = run(&f, &["launch", "stage1", "--run", "k", "--ranks", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    let s = status(&f, "k");
    let s1 = stage(&s, "stage1");
    assert_eq!(s1["state"], "succeeded");
    assert_eq!(s1["attempts"].as_array().unwrap().len(), 2);
    let log0 = std::fs::read_to_string(f.runs.join("k/logs/stage1/attempt-2/rank-0.log")).unwrap();
    assert!(!log0.contains("starting at step 0 "), "attempt 2 resumed from a checkpoint:\n{log0}");
    // The metrics history has every step once: no repeat, no gap across the kill.
    let mut steps: Vec<u64> = Vec::new();
    let mut segs: Vec<PathBuf> =
        std::fs::read_dir(f.runs.join("k/stage1/metrics")).unwrap().map(|e| e.unwrap().path()).collect();
    segs.sort();
    for seg in segs {
        for line in std::fs::read_to_string(seg).unwrap().lines().skip(1) {
            steps.push(line.split(',').next().unwrap().parse().unwrap());
        }
    }
    let total = s1["attempts"][1]["last_step"].as_u64().unwrap();
    assert_eq!(steps, (1..=total).collect::<Vec<_>>());
}

#[test]
fn the_pipeline_ingests_with_three_workers_then_chains_both_stages() {
    let f = fixture(1);
    let tmp = f.runs.parent().unwrap().to_path_buf();
    let ingest = Path::new(env!("CARGO_BIN_EXE_s3-orch")).with_file_name("s3-ingest");
    let raw = tmp.join("raw");
    let o = Command::new(&ingest).args(["synth", "--cases", "4", "--out"]).arg(&raw).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let manifest = raw.join("datasets.toml");
    let reference = tmp.join("reference");
    let o = Command::new(&ingest).arg("--manifest").arg(&manifest).arg("--out").arg(&reference).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));

    // The stages select by the catalogue's flags without naming a catalogue: the
    // pipeline hands them the one it ingested.
    for (name, select) in [("stage1", "pretrain"), ("stage2", "finetune")] {
        let file = f.stages.join(format!("{name}.toml"));
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::write(&file, format!("{text}[datasets]\nselect = \"{select}\"\n")).unwrap();
    }
    let store = tmp.join("store");
    let (m, out) = (manifest.to_str().unwrap(), store.to_str().unwrap());
    let o = orch(
        &f,
        &["launch", "pipeline", "--manifest", m, "--out", out, "--run", "p", "--workers", "3", "--ranks", "2"],
    )
    .env("S3_INGEST_BIN", &ingest)
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(samples(&store), samples(&reference), "3 workers + merge publish what one process does");
    let s = status(&f, "p");
    for name in ["ingest", "stage1", "stage2", "eval"] {
        assert_eq!(stage(&s, name)["state"], "succeeded", "{name}: {s}");
    }
    assert_eq!(stage(&s, "eval")["init"], stage(&s, "stage2")["final_checkpoint"]["url"], "eval of stage 2's weights");
    assert_eq!(stage(&s, "ingest")["attempts"][0]["exit_codes"].as_array().unwrap().len(), 4, "3 workers + merge");
    assert_eq!(stage(&s, "stage2")["init"], stage(&s, "stage1")["final_checkpoint"]["url"]);
    let d = digests(&f.runs.join("p/logs/stage2/attempt-1"));
    assert!(d.len() == 2 && !d[0].is_empty() && d[0] == d[1], "{d:?}");
}

#[test]
fn a_stage_stopped_by_its_step_budget_is_not_a_final_checkpoint() {
    let f = fixture(3);
    let file = f.stages.join("stage1.toml");
    let text1 = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text1.replace("epochs = 3", "epochs = 3\nmax_steps = 2")).unwrap();
    let o = run(&f, &["launch", "stage1", "--run", "b"]);
    assert_eq!(o.status.code(), Some(75), "{}", text(&o));
    let s = status(&f, "b");
    assert_eq!(stage(&s, "stage1")["state"], "preempted");
    assert!(stage(&s, "stage1")["final_checkpoint"].is_null());
    assert!(stage(&s, "stage1")["attempts"][0]["error"].as_str().unwrap().contains("budget"), "{s}");
    let o = run(&f, &["launch", "stage2", "--run", "b"]);
    assert!(!o.status.success() && text(&o).contains("has not succeeded"), "{}", text(&o));
}
