//! `s3-orch launch --backend slurm` on a real one-node Slurm cluster (Debian's
//! slurmctld + slurmd, started by the test): the pipeline as a chain of jobs held
//! by Slurm (ingest array + merge, stage 1, stage 2 after it, eval), and a
//! preemption that requeues the job, which resumes from its checkpoint.

mod common;
use common::{bin, digests, samples, small_store, small_store_at, text};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use s3_test_support::SlurmCluster;

fn stage_toml(name: &str, epochs: u64, select: &str) -> String {
    format!(
        "name = \"{name}\"\npreset = \"small\"\nepochs = {epochs}\nlr = 2e-3\ndecoder_lr_factor = 1.0\nbatch = 1\n\
         accumulation = 1\nclicks = 2\nseed = 1\ncheckpoint_every = 2\nshard_window = 2\nloss_resolution = \"low\"\n\
         legacy_loss = true\n[schedule]\nkind = \"constant\"\n[datasets]\nselect = \"{select}\"\n"
    )
}

/// `s3-orch` aimed at the cluster, with the CPU test profile's settings.
fn orch(cluster: &SlurmCluster, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_s3-orch"));
    c.args(args).envs(cluster.env());
    if args.first() == Some(&"launch") {
        c.args(["--backend", "slurm", "--cpus-per-rank", "1", "--mem-per-rank", "1G", "--grace-seconds", "60"]);
        c.arg("--train-bin").arg(bin("s3-train")).arg("--ingest-bin").arg(bin("s3-ingest"));
    }
    c
}

fn status(cluster: &SlurmCluster, runs: &Path, run: &str) -> serde_json::Value {
    let o = orch(cluster, &["status", "--run", run, "--json", "--runs", runs.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Every log file under `dir`, named, for a failure message.
fn logs(dir: &Path) -> String {
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return format!("(no {})", dir.display()) };
    let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            out.push_str(&logs(&p));
        } else {
            let body = std::fs::read_to_string(&p).unwrap_or_default();
            let tail: String = body.chars().rev().take(3000).collect::<Vec<_>>().into_iter().rev().collect();
            out.push_str(&format!("--- {}\n{tail}\n", p.display()));
        }
    }
    out
}

fn stage(s: &serde_json::Value, name: &str) -> serde_json::Value {
    s["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == name)
        .unwrap_or_else(|| panic!("{name} in {s}"))
        .clone()
}

fn sbatch_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sbatch_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "sbatch") {
            out.push(p);
        }
    }
}

#[test]
fn the_pipeline_runs_on_slurm_as_a_chain_of_jobs() {
    let cluster = SlurmCluster::start();
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("raw");
    let o = Command::new(bin("s3-ingest")).args(["synth", "--cases", "3", "--out"]).arg(&raw).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let manifest = raw.join("datasets.toml");
    let reference = tmp.path().join("reference");
    let o =
        Command::new(bin("s3-ingest")).arg("--manifest").arg(&manifest).arg("--out").arg(&reference).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let stages = tmp.path().join("stages");
    std::fs::create_dir_all(&stages).unwrap();
    std::fs::write(stages.join("stage1.toml"), stage_toml("stage1", 1, "pretrain")).unwrap();
    std::fs::write(stages.join("stage2.toml"), stage_toml("stage2", 1, "finetune")).unwrap();
    let (store, runs) = (tmp.path().join("store"), tmp.path().join("runs"));

    // Everything is submitted at once, each job after the one before; --wait follows it.
    let o = orch(&cluster, &["launch", "pipeline", "--run", "p", "--workers", "3", "--ranks", "2", "--wait"])
        .arg("--manifest")
        .arg(&manifest)
        .arg("--out")
        .arg(&store)
        .arg("--runs")
        .arg(&runs)
        .arg("--stages")
        .arg(&stages)
        .output()
        .unwrap();
    let said = text(&o);
    assert!(o.status.success(), "{said}\nslurm logs: {}\n{}", cluster.log_dir().display(), logs(&runs.join("p/logs")));
    assert!(said.contains("after job"), "stages wait on Slurm dependencies: {said}");
    assert_eq!(samples(&store), samples(&reference), "3 array tasks + merge publish what one process does");

    let s = status(&cluster, &runs, "p");
    for name in ["ingest", "stage1", "stage2", "eval"] {
        assert_eq!(stage(&s, name)["state"], "succeeded", "{name}: {s}");
        assert_eq!(stage(&s, name)["attempts"][0]["backend"], "slurm");
    }
    assert_eq!(stage(&s, "ingest")["attempts"][0]["job_ids"].as_array().unwrap().len(), 2, "array + merge");
    assert_eq!(stage(&s, "stage2")["init"], stage(&s, "stage1")["final_checkpoint"]["url"]);
    let d = digests(&runs.join("p/logs/stage2/attempt-1"));
    assert!(d.len() == 2 && !d[0].is_empty() && d[0] == d[1], "both ranks end with the same weights: {d:?}");

    // Every script it submitted is one sbatch accepts.
    let mut scripts = Vec::new();
    sbatch_files(&runs.join("p/logs"), &mut scripts);
    assert_eq!(scripts.len(), 6, "ingest array, merge, its watchdog, stage 1, stage 2, eval: {scripts:?}");
    for f in scripts {
        let o = cluster.command("sbatch").arg("--test-only").arg(&f).output().unwrap();
        assert!(o.status.success(), "sbatch --test-only {}: {}", f.display(), text(&o));
    }
}

/// A phantom store and an 8-epoch stage 1: (tempdir, data, stages, runs).
fn long_stage1() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    small_store(&data);
    let stages = tmp.path().join("stages");
    std::fs::create_dir_all(&stages).unwrap();
    std::fs::write(stages.join("stage1.toml"), stage_toml("stage1", 8, "all")).unwrap();
    let runs = tmp.path().join("runs");
    (tmp, data, stages, runs)
}

/// Submits stage 1 of run `run` and waits for its first checkpoint; its job id.
fn submit_and_wait_for_a_checkpoint(
    cluster: &SlurmCluster,
    data: &Path,
    stages: &Path,
    runs: &Path,
    run: &str,
) -> String {
    let o = orch(cluster, &["launch", "stage1", "--run", run, "--ranks", "2"])
        .arg("--data")
        .arg(data)
        .arg("--runs")
        .arg(runs)
        .arg("--stages")
        .arg(stages)
        .output()
        .unwrap();
    assert!(o.status.success() && text(&o).contains("submitted as job"), "{}", text(&o));
    let s = status(cluster, runs, run);
    let job = stage(&s, "stage1")["attempts"][0]["job_ids"][0].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !runs.join(format!("{run}/stage1/checkpoints/latest.json")).exists() {
        assert!(Instant::now() < deadline, "no checkpoint; slurm logs in {}", cluster.log_dir().display());
        std::thread::sleep(Duration::from_millis(20));
    }
    job
}

#[test]
fn cancel_stops_the_job_after_a_checkpoint_without_a_requeue() {
    let cluster = SlurmCluster::start();
    let (_tmp, data, stages, runs) = long_stage1();
    let job = submit_and_wait_for_a_checkpoint(&cluster, &data, &stages, &runs, "c");
    let o = orch(&cluster, &["cancel", "--run", "c", "--runs", runs.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success() && text(&o).contains("asked stage1"), "{}", text(&o));
    let o = orch(&cluster, &["status", "--run", "c", "--wait", "--runs", runs.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let s1 = stage(&status(&cluster, &runs, "c"), "stage1");
    assert_eq!(s1["state"], "preempted", "{s1}");
    assert_eq!(s1["attempts"].as_array().unwrap().len(), 1, "a cancel is not requeued: {s1}");
    assert!(s1["attempts"][0]["last_step"].as_u64().unwrap() >= 2, "it checkpointed where it stopped: {s1}");
    let show =
        String::from_utf8(cluster.command("scontrol").args(["show", "job", &job]).output().unwrap().stdout).unwrap();
    assert!(show.contains("Restarts=0") && !show.contains("JobState=PENDING"), "{show}");

    // Launching again continues it as attempt 2, to the end.
    let o = orch(&cluster, &["launch", "stage1", "--run", "c", "--ranks", "2", "--wait"])
        .arg("--data")
        .arg(&data)
        .arg("--runs")
        .arg(&runs)
        .arg("--stages")
        .arg(&stages)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let s1 = stage(&status(&cluster, &runs, "c"), "stage1");
    assert_eq!((s1["state"].as_str(), s1["attempts"].as_array().unwrap().len()), (Some("succeeded"), 2), "{s1}");
}

#[test]
fn a_preempted_job_requeues_itself_and_resumes_from_its_checkpoint() {
    let cluster = SlurmCluster::start();
    let (_tmp, data, stages, runs) = long_stage1();
    let job = submit_and_wait_for_a_checkpoint(&cluster, &data, &stages, &runs, "q");

    // Once it checkpointed, Slurm signals the ranks as it does before a time limit.
    let o = cluster.command("scancel").args(["--signal=USR2", &job]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));

    // The job records the preemption and requeues itself. Slurm holds a requeued job
    // for two minutes (BeginTime); the test lets it start at once.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let show = String::from_utf8(cluster.command("scontrol").args(["show", "job", &job]).output().unwrap().stdout)
            .unwrap();
        if show.contains("Restarts=1") && show.contains("JobState=PENDING") {
            // The job requeued itself from its own batch script: until that run's
            // slurmstepd is gone the node is still cleaning it up, and a relaunch at
            // that moment fails at once (exit 1, no output). Slurm's two-minute hold
            // covers this in real use; the test shortens it, so it waits for the node.
            let stepd = format!("slurmstepd: \\[{job}\\.");
            let gone = Instant::now() + Duration::from_secs(60);
            while Command::new("pgrep").args(["-f", &stepd]).status().is_ok_and(|s| s.success()) {
                assert!(Instant::now() < gone, "the first run's slurmstepd is still there after 60 s");
                std::thread::sleep(Duration::from_millis(200));
            }
            let o = cluster
                .command("scontrol")
                .args(["update", &format!("JobId={job}"), "StartTime=now"])
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", text(&o));
            break;
        }
        assert!(
            !show.contains("JobState=COMPLETED") || show.contains("Restarts=1"),
            "finished without a requeue: {show}"
        );
        assert!(Instant::now() < deadline, "no requeue: {show}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let o = orch(&cluster, &["status", "--run", "q", "--wait", "--runs", runs.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));

    let s = status(&cluster, &runs, "q");
    let s1 = stage(&s, "stage1");
    // On a failure, everything the jobs wrote: the scheduler's output and the hooks'.
    let show = || {
        let job_state = cluster.command("scontrol").args(["show", "job", &job]).output().map(|o| text(&o));
        format!(
            "{s}
status --wait said: {}
scontrol: {job_state:?}
{}",
            text(&o),
            logs(&runs.join("q/logs"))
        )
    };
    assert_eq!(s1["state"], "succeeded", "{}", show());
    let attempts = s1["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "a preemption, then the requeued run: {s}");
    assert_eq!(attempts[0]["state"], "preempted");
    assert_eq!(attempts[0]["exit_codes"], serde_json::json!([75]));
    assert_eq!(
        (attempts[1]["job_ids"][0].as_str(), attempts[1]["scheduler_restart"].as_u64()),
        (Some(job.as_str()), Some(1))
    );
    let log0 = std::fs::read_to_string(runs.join("q/logs/stage1/attempt-2/rank-0.log")).unwrap();
    assert!(!log0.contains("starting at step 0 "), "attempt 2 resumed from a checkpoint:\n{log0}");
    // Every step once across the preemption: no sample repeated or skipped.
    let mut segs: Vec<PathBuf> =
        std::fs::read_dir(runs.join("q/stage1/metrics")).unwrap().map(|e| e.unwrap().path()).collect();
    segs.sort();
    let steps: Vec<u64> = segs
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .skip(1)
                .map(|l| l.split(',').next().unwrap().parse().unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    let total = attempts[1]["last_step"].as_u64().unwrap();
    assert_eq!(steps, (1..=total).collect::<Vec<_>>());
}

#[test]
fn the_dry_run_prints_the_scripts_for_a_gpu_cluster_and_runs_no_slurm_command() {
    // No cluster: with no Slurm reachable, any Slurm command would fail the launch.
    let tmp = tempfile::tempdir().unwrap();
    let stages = tmp.path().join("stages");
    std::fs::create_dir_all(&stages).unwrap();
    std::fs::write(stages.join("stage1.toml"), stage_toml("stage1", 1, "pretrain")).unwrap();
    std::fs::write(stages.join("stage2.toml"), stage_toml("stage2", 1, "finetune")).unwrap();
    let profile = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/slurm-2x8gpu.toml");
    let o = Command::new(env!("CARGO_BIN_EXE_s3-orch"))
        .current_dir(tmp.path())
        .env("PATH", "/nonexistent")
        .env("SLURM_CONF", "/nonexistent/slurm.conf")
        .args(["launch", "pipeline", "--backend", "slurm", "--manifest", "raw/datasets.toml", "--out", "s3://b/v1"])
        .args(["--runs", "/shared/runs", "--run", "golden", "--stages", "stages", "--orch-bin", "s3-orch", "--dry-run"])
        .arg("--cluster")
        .arg(&profile)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let shown = String::from_utf8(o.stdout)
        .unwrap()
        .replace(&tmp.path().display().to_string(), "<dir>")
        .replace(&profile.display().to_string(), "tests/golden/slurm-2x8gpu.toml");
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/slurm-pipeline-dry-run.txt");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &shown).unwrap();
    }
    let want = std::fs::read_to_string(&golden).expect("golden file (UPDATE_GOLDEN=1 writes it)");
    assert_eq!(shown, want, "the dry run changed; if on purpose, regenerate with UPDATE_GOLDEN=1");
    for needle in
        ["--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--signal=USR2@300", "--array=0-15%16", "--requeue"]
    {
        assert!(shown.contains(needle), "{needle} in\n{shown}");
    }
}

/// The launcher's folder (stage files, its own log folder, its working directory) is
/// hidden from the jobs, as another machine's disk would be; the run folder and the
/// shards are on the S3 server. Stage 1, stage 2 (its gate) and the eval succeed with
/// the stage files carried in the scripts, and `s3-orch logs` reads every rank's log
/// back from the run folder, where the nodes uploaded them.
#[test]
fn a_cluster_that_shares_only_the_object_store_runs_the_stages() {
    let launcher = tempfile::tempdir().unwrap();
    let here = launcher.path();
    let stages = here.join("stages");
    std::fs::create_dir_all(&stages).unwrap();
    std::fs::write(stages.join("stage1.toml"), stage_toml("stage1", 1, "all")).unwrap();
    std::fs::write(stages.join("stage2.toml"), stage_toml("stage2", 1, "all")).unwrap();
    let cluster = SlurmCluster::start_hiding(&[here]);
    // The premise: a job cannot read the launcher's files.
    let o =
        cluster.command("srun").args(["-N1", "-n1", "test", "-e"]).arg(stages.join("stage1.toml")).output().unwrap();
    assert!(!o.status.success(), "a job sees the launcher's folder: the test proves nothing");

    let server = s3_test_support::S3Server::start();
    let options = s3_shards::StoreOptions::endpoint_with_keys(
        &server.endpoint(),
        s3_test_support::ACCESS_KEY,
        s3_test_support::SECRET_KEY,
    );
    small_store_at(&server.url("data"), &options);
    let (data, runs) = (server.url("data"), server.url("runs"));
    let run = |args: &[&str]| {
        let mut c = orch(&cluster, args);
        c.current_dir(here).envs(server.env());
        c.output().unwrap()
    };
    for stage in ["stage1", "stage2", "eval"] {
        let stage_dir = stages.display().to_string();
        let o = run(&[
            "launch", stage, "--run", "iso", "--ranks", "2", "--wait", "--data", &data, "--runs", &runs, "--stages",
            &stage_dir,
        ]);
        assert!(o.status.success(), "{stage}: {}\nslurm logs: {}", text(&o), cluster.log_dir().display());
    }
    let o = run(&["status", "--run", "iso", "--json", "--runs", &runs]);
    assert!(o.status.success(), "{}", text(&o));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for name in ["stage1", "stage2", "eval"] {
        assert_eq!(stage(&s, name)["state"], "succeeded", "{name}: {s}");
    }
    // The ranks' logs, from the run folder on the S3 server.
    let mut weights = Vec::new();
    for rank in ["0", "1"] {
        let o = run(&["logs", "--run", "iso", "--runs", &runs, "--stage", "stage2", "--rank", rank]);
        assert!(o.status.success(), "{}", text(&o));
        let log = String::from_utf8_lossy(&o.stdout).into_owned();
        weights.push(log.split("weights xxh3 ").nth(1).map(|w| w.trim().to_string()).unwrap_or_default());
    }
    assert!(!weights[0].is_empty() && weights[0] == weights[1], "both ranks' logs, the same weights: {weights:?}");
    assert!(server.object_path("runs/iso/logs/stage1/attempt-1/rank-1.log").is_file());
    assert!(server.object_path("runs/iso/logs/eval/attempt-1/rank-0.log").is_file());
    let slurm_out = std::fs::read_dir(server.object_path("runs/iso/logs/stage1/attempt-1")).unwrap();
    assert!(
        slurm_out.filter_map(|e| e.ok()).any(|e| e.file_name().to_string_lossy().starts_with("slurm-")),
        "Slurm's own output comes back too"
    );
}

/// An ingest worker killed before any hook of its own could run (here its batch
/// shell gets SIGKILL, as a job past its memory or time limit would): the merge it
/// held back never runs, and the watchdog job Slurm starts on the failure
/// (`afternotok`) marks the attempt failed, with no `s3-orch status` to notice it.
#[test]
fn a_killed_ingest_worker_fails_the_attempt_through_the_watchdog() {
    let cluster = SlurmCluster::start();
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("s3-ingest");
    std::fs::write(&fake, "#!/bin/sh\n# The batch shell that runs this worker dies at once.\nkill -9 $PPID\nsleep 5\n")
        .unwrap();
    assert!(Command::new("chmod").arg("+x").arg(&fake).status().unwrap().success());
    let manifest = tmp.path().join("datasets.toml");
    std::fs::write(&manifest, "[[datasets]]\nname = \"X\"\nmodality = \"CT\"\n").unwrap();
    let runs = tmp.path().join("runs");
    let o = Command::new(env!("CARGO_BIN_EXE_s3-orch"))
        .envs(cluster.env())
        .args(["launch", "ingest", "--backend", "slurm", "--run", "k", "--workers", "2", "--ingest-bin"])
        .arg(&fake)
        .arg("--manifest")
        .arg(&manifest)
        .arg("--out")
        .arg(tmp.path().join("store"))
        .arg("--runs")
        .arg(&runs)
        .output()
        .unwrap();
    assert!(o.status.success() && text(&o).contains("submitted as job"), "{}", text(&o));
    // The ledger as the jobs leave it (s3-orch status would mark it failed itself).
    let ledger = runs.join("k/ledger.json");
    let deadline = Instant::now() + Duration::from_secs(120);
    let attempt = loop {
        let l: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&ledger).unwrap()).unwrap();
        let a = stage(&l, "ingest")["attempts"][0].clone();
        if a["state"] != "running" {
            break a;
        }
        assert!(Instant::now() < deadline, "the attempt still runs: {l}\nslurm logs: {}", cluster.log_dir().display());
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(attempt["state"], "failed", "{attempt}");
    let error = attempt["error"].as_str().unwrap_or_default();
    assert!(error.contains("ended without recording it") && error.contains("Slurm jobs"), "{error}");
}
