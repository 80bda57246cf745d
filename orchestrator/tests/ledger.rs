//! The run ledger loses no writer's change: writers that race (the jobs' hooks,
//! `s3-orch cancel`, the launcher) each land, on the real S3 server (conditional PUTs
//! on the ledger's e-tag) and on a local run folder (a lock file).

use s3_orch::job_hooks::{HookTarget, job_start};
use s3_orch::ledger::Ledger;
use s3_shards::{StoreOptions, open_store};

const THREADS: usize = 3;
const EACH: usize = 8;

/// THREADS writers, EACH `job start`s apiece, each a new job id (a new attempt); every
/// one must be in the ledger afterwards. Unconditional read-modify-write PUTs lose
/// some of them whenever two writers overlap.
fn race(runs: &str, options: &StoreOptions) -> Ledger {
    std::thread::scope(|s| {
        for t in 0..THREADS {
            s.spawn(move || {
                let target = HookTarget {
                    runs: runs.to_string(),
                    run_id: "race".into(),
                    stage: "stage1".into(),
                    options: options.clone(),
                };
                for i in 0..EACH {
                    job_start(&target, &format!("w{t}-{i}"), 0, None).unwrap();
                }
            });
        }
    });
    let run = open_store(&format!("{}/race", runs.trim_end_matches('/')), options).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(Ledger::load_or_new(run.store().as_ref(), "race")).unwrap()
}

fn every_job_recorded(ledger: &Ledger) {
    let attempts = &ledger.stage("stage1").expect("the stage").attempts;
    let mut ids: Vec<&str> = attempts.iter().flat_map(|a| a.job_ids.iter().map(String::as_str)).collect();
    ids.sort_unstable();
    let mut want: Vec<String> = (0..THREADS).flat_map(|t| (0..EACH).map(move |i| format!("w{t}-{i}"))).collect();
    want.sort_unstable();
    assert_eq!(ids, want, "every writer's attempt is in the ledger");
    let numbers: Vec<u32> = attempts.iter().map(|a| a.attempt).collect();
    assert_eq!(numbers, (1..=(THREADS * EACH) as u32).collect::<Vec<_>>(), "numbered once each, in order");
}

#[test]
fn racing_writers_on_the_s3_server_all_land() {
    let server = s3_test_support::S3Server::start();
    let options =
        StoreOptions::endpoint_with_keys(&server.endpoint(), s3_test_support::ACCESS_KEY, s3_test_support::SECRET_KEY);
    every_job_recorded(&race(&server.url("runs"), &options));
}

#[test]
fn racing_writers_on_a_local_run_folder_all_land() {
    let dir = tempfile::tempdir().unwrap();
    every_job_recorded(&race(&dir.path().join("runs").display().to_string(), &StoreOptions::default()));
}

#[test]
fn a_cancel_request_survives_a_job_that_ends_at_the_same_time() {
    // The request and the hook's record go through the same conditional update: the
    // hook reads the request (no requeue) whichever lands first.
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs").display().to_string();
    let target = HookTarget::new(runs.clone(), "r".into(), "stage1".into());
    let attempt = job_start(&target, "j1", 0, None).unwrap();
    let run = open_store(&format!("{runs}/r"), &StoreOptions::default()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(Ledger::update(&run, "r", async |l| {
        l.stage_mut("stage1").cancel_requested = true;
        Ok(())
    }))
    .unwrap();
    let stage = dir.path().join("stage1.toml");
    std::fs::write(&stage, "name = \"stage1\"\nepochs = 1\n").unwrap();
    let end = s3_orch::job_hooks::JobEnd {
        job_id: "j1",
        attempt,
        exit_code: 75,
        stage_file: Some(&stage),
        out: None,
        evaluated: None,
        logs: "logs",
    };
    let requeue = s3_orch::job_hooks::job_end(&target, &end).unwrap();
    assert!(!requeue, "a cancelled stop is not requeued");
    let ledger = rt.block_on(Ledger::load_or_new(run.store().as_ref(), "r")).unwrap();
    assert!(ledger.stage("stage1").unwrap().cancel_requested, "the request is still there");
}
