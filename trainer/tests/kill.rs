//! `kill -9` of a training rank between two checkpoints, then the same command
//! again: the samples trained after the resume are exactly the rest of the
//! sequence an uninterrupted run trains, and the final weights are the same.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use s3_shards::{StoreOptions, WriterOptions, open_store, synthetic};

const STAGE: &str = r#"
name = "kill-test"
preset = "small"
epochs = 1
lr = 2e-3
decoder_lr_factor = 1.0
batch = 1
accumulation = 1
clicks = 2
seed = 11
checkpoint_every = 5
keep_last = 0
shard_window = 2
loss_resolution = "low"
legacy_loss = true
[schedule]
kind = "constant"
"#;

fn train_cmd(stage: &Path, data: &Path, run: &Path, log: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_s3-train"));
    c.args(["train", "--stage"])
        .arg(stage)
        .arg("--data")
        .arg(data)
        .arg("--run")
        .arg(run)
        .arg("--samples-log")
        .arg(log)
        .env_remove("RANK")
        .env_remove("WORLD_SIZE")
        .env_remove("SLURM_PROCID")
        .env_remove("SLURM_NTASKS")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// The log's lines as (step, samples).
fn steps(log: &Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (s, ids) = l.split_once(' ')?;
            Some((s.parse().ok()?, ids.to_string()))
        })
        .collect()
}

#[test]
fn kill_9_between_checkpoints_resumes_with_exactly_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let loc = open_store(data.to_str().unwrap(), &StoreOptions::default()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(synthetic::populate(loc.store(), 1, 16, 1, WriterOptions { row_group_rows: 2, ..Default::default() }))
        .unwrap();
    let stage = dir.path().join("stage.toml");
    std::fs::write(&stage, STAGE).unwrap();

    let (full_run, full_log) = (dir.path().join("full"), dir.path().join("full.log"));
    let out = train_cmd(&stage, &data, &full_run, &full_log).stdout(Stdio::piped()).output().unwrap();
    assert!(out.status.success());
    let full = steps(&full_log);
    assert!(full.len() >= 12, "{} steps", full.len());
    let digest = |o: &[u8]| String::from_utf8_lossy(o).split("weights xxh3 ").nth(1).map(|s| s.trim().to_string());
    let full_digest = digest(&out.stdout);
    assert!(full_digest.is_some());

    // Killed with SIGKILL once it is past step 6: after the checkpoint at 5, before the one at 10.
    let (run, log) = (dir.path().join("killed"), dir.path().join("killed.log"));
    let mut child = train_cmd(&stage, &data, &run, &log).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    while steps(&log).len() < 6 {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = steps(&log);
    let latest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("checkpoints/latest.json")).unwrap()).unwrap();
    let resume_at = latest["step"].as_u64().unwrap();
    assert!(
        before.len() as u64 > resume_at,
        "killed between checkpoints ({} steps, checkpoint {resume_at})",
        before.len()
    );
    assert_eq!(before, full[..before.len()], "the same sequence up to the kill");

    let out = train_cmd(&stage, &data, &run, &log).stdout(Stdio::piped()).output().unwrap();
    assert!(out.status.success());
    let after = &steps(&log)[before.len()..];
    assert_eq!(after, &full[resume_at as usize..], "after the resume: exactly the rest, from the checkpoint on");
    assert_eq!(digest(&out.stdout), full_digest, "the same final weights");
}

#[test]
fn sigterm_checkpoints_and_exits_75_and_the_relaunch_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let loc = open_store(data.to_str().unwrap(), &StoreOptions::default()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(synthetic::populate(loc.store(), 1, 12, 1, WriterOptions { row_group_rows: 2, ..Default::default() }))
        .unwrap();
    let stage = dir.path().join("stage.toml");
    std::fs::write(&stage, STAGE.replace("checkpoint_every = 5", "checkpoint_every = 100")).unwrap();
    let (full_run, full_log) = (dir.path().join("full"), dir.path().join("full.log"));
    let full = train_cmd(&stage, &data, &full_run, &full_log).stdout(Stdio::piped()).output().unwrap();
    assert!(full.status.success());

    let (run, log) = (dir.path().join("preempted"), dir.path().join("preempted.log"));
    let mut child = train_cmd(&stage, &data, &run, &log).stdout(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    while steps(&log).len() < 3 {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before the signal");
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    let term = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(term.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(75), "preempted: checkpoint and exit 75");
    let latest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("checkpoints/latest.json")).unwrap()).unwrap();
    assert_eq!(latest["step"].as_u64().unwrap(), steps(&log).len() as u64, "checkpointed at the step it stopped");

    let out = train_cmd(&stage, &data, &run, &log).stdout(Stdio::piped()).output().unwrap();
    assert!(out.status.success());
    assert_eq!(steps(&log), steps(&full_log), "no sample repeated or lost across the preemption");
    let digest = |o: &[u8]| String::from_utf8_lossy(o).split("weights xxh3 ").nth(1).map(|s| s.trim().to_string());
    assert_eq!(digest(&out.stdout), digest(&full.stdout));
}
