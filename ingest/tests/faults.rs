//! Nothing lost, nothing silent: a failing output store ends the run without
//! publishing and the re-run completes it; `merge` refuses a store with unaccounted
//! cases; a resume under another worker count is refused before it touches a shard;
//! shards are the same bytes whatever `--jobs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use s3_ingest::IngestError;
use s3_ingest::catalog::Catalog;
use s3_ingest::journal::{self, JournalRecord};
use s3_ingest::run::{self, Event, IngestConfig};
use s3_shards::{Retry, ShardIndex, ShardMeta, ShardReader, StoreOptions, WriterOptions, open_store};
use s3_test_support::S3Server;

fn corpus(dir: &Path, cases: usize) -> Catalog {
    let manifest = s3_ingest::synth::write_corpus(dir, cases, 11).unwrap();
    Catalog::load(&manifest).unwrap()
}

/// One shard per case (a file rolls after the first row group that reaches it), so
/// a run commits after every case that has samples.
fn tiny_shards(out: &str) -> IngestConfig {
    let writer = WriterOptions { target_file_bytes: 1, row_group_rows: 1, ..Default::default() };
    IngestConfig { writer, jobs: 2, ..IngestConfig::new(out) }
}

fn index_of(url: &str, options: &StoreOptions) -> Option<ShardIndex> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let loc = open_store(url, options).unwrap();
    rt.block_on(ShardIndex::load(loc.store().as_ref())).ok()
}

/// The shards an index names, as (path, rows, bytes, xxh3).
fn shard_list(index: &ShardIndex) -> Vec<ShardMeta> {
    index.shards.clone()
}

fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Makes `<out>/shards` unusable even for root: the directory moves away and a plain
/// file takes its name, so every shard write fails (ENOTDIR) as on a full or lost disk.
fn break_shards_dir(out: &Path) -> PathBuf {
    let aside = out.join("shards.aside");
    std::fs::rename(out.join("shards"), &aside).unwrap();
    std::fs::write(out.join("shards"), b"not a directory").unwrap();
    aside
}

fn repair_shards_dir(out: &Path, aside: &Path) {
    std::fs::remove_file(out.join("shards")).unwrap();
    std::fs::rename(aside, out.join("shards")).unwrap();
}

/// Relative path → xxh3 of the contents, for every file under `root`.
fn files_under(root: &Path) -> BTreeMap<PathBuf, u64> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, u64>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let hash = xxhash_rust::xxh3::xxh3_64(&std::fs::read(&p).unwrap());
                out.insert(p.strip_prefix(root).unwrap().to_path_buf(), hash);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

#[test]
fn a_store_failing_mid_run_stops_the_run_publishes_nothing_and_the_rerun_completes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let catalog = corpus(&tmp.path().join("raw"), 8);
    let reference = tmp.path().join("reference");
    run::run(&catalog, &tiny_shards(reference.to_str().unwrap()), &|_| {}).unwrap();
    let expected = shard_list(&index_of(reference.to_str().unwrap(), &StoreOptions::default()).unwrap());

    let out = tmp.path().join("out");
    let cfg = tiny_shards(out.to_str().unwrap());
    let done = AtomicUsize::new(0);
    let aside = Mutex::new(None);
    let tasks_started = Mutex::new(Vec::new());
    let err = run::run(&catalog, &cfg, &|e| match e {
        Event::TaskStart { dataset, .. } => tasks_started.lock().unwrap().push(dataset),
        Event::CaseDone { .. } if done.fetch_add(1, Ordering::SeqCst) + 1 == 3 => {
            *aside.lock().unwrap() = Some(break_shards_dir(&out));
        }
        _ => {}
    })
    .unwrap_err();
    assert!(
        matches!(&err, IngestError::Output { dataset, .. } if dataset == "PhantomCT"),
        "a typed store error, not a note: {err:?}"
    );
    assert!(std::error::Error::source(&err).is_some(), "the store's error is kept as the source");
    assert!(!out.join("index.json").exists(), "nothing is published from an incomplete run");
    assert_eq!(*tasks_started.lock().unwrap(), ["PhantomCT"], "the run stopped; PhantomMR was never started");
    let aside = aside.into_inner().unwrap().unwrap();
    let committed = files_under(&aside);
    assert!(!committed.is_empty());
    repair_shards_dir(&out, &aside);

    let summary = run::run(&catalog, &cfg, &|_| {}).unwrap();
    let index = summary.index.expect("the re-run publishes");
    assert_eq!(shard_list(&index), expected, "the re-run ends where an undisturbed run does");
    let now = files_under(&out.join("shards"));
    for (path, hash) in &committed {
        assert_eq!(now.get(path), Some(hash), "{}: committed shards are kept as they were", path.display());
    }
    assert_eq!(
        now.keys().map(|p| p.to_str().unwrap().to_string()).collect::<Vec<_>>(),
        index.shards.iter().map(|s| s.path.strip_prefix("shards/").unwrap().to_string()).collect::<Vec<_>>(),
        "no stray shard file is left"
    );
}

#[test]
fn the_binary_exits_2_and_publishes_nothing_when_the_store_cannot_be_written() {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = s3_ingest::synth::write_corpus(&tmp.path().join("raw"), 2, 3).unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("shards"), b"not a directory").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_s3-ingest"))
        .args(["--manifest", manifest.to_str().unwrap(), "--out", out.to_str().unwrap(), "-j", "1"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("output store failed") && t.contains("re-run to resume"), "{t}");
    assert!(!t.contains("panicked"), "{t}");
    assert!(!out.join("index.json").exists());
}

/// Runs worker `w` of `n` into `out`; with `fail_after`, breaks the store after that
/// many cases and expects the run to fail.
fn run_worker(catalog: &Catalog, out: &Path, w: u32, n: u32, fail_after: Option<usize>) {
    let cfg = IngestConfig { worker: w, workers: n, ..tiny_shards(out.to_str().unwrap()) };
    let done = AtomicUsize::new(0);
    let aside = Mutex::new(None);
    let r = run::run(catalog, &cfg, &|e| {
        if let Event::CaseDone { .. } = e
            && Some(done.fetch_add(1, Ordering::SeqCst) + 1) == fail_after
        {
            *aside.lock().unwrap() = Some(break_shards_dir(out));
        }
    });
    match fail_after {
        None => assert!(r.unwrap().index.is_none()),
        Some(_) => {
            assert!(matches!(r, Err(IngestError::Output { .. })), "{r:?}");
            repair_shards_dir(out, &aside.into_inner().unwrap().unwrap());
        }
    }
}

fn merge_cli(out: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_s3-ingest")).args(["merge", "--out", out.to_str().unwrap()]).output().unwrap()
}

#[test]
fn merge_publishes_only_when_every_listed_case_has_a_fate() {
    let tmp = tempfile::tempdir().unwrap();
    let catalog = corpus(&tmp.path().join("raw"), 8);
    let out = tmp.path().join("out");
    run_worker(&catalog, &out, 0, 2, None);

    // Worker 1 never ran: its share is unknown, so nothing is published.
    let o = merge_cli(&out);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("PhantomCT/default: worker 1/2 never ran"), "{}", text(&o));
    assert!(!out.join("index.json").exists());

    // Worker 1 stops after one case: the cases it listed and did not finish are named.
    run_worker(&catalog, &out, 1, 2, Some(1));
    let listed: Vec<String> =
        (0..8).map(|c| format!("case{c:03}")).filter(|c| run::owns("PhantomCT", "default", c, 1, 2)).collect();
    assert!(listed.len() >= 2, "worker 1 has at least one case it did not finish: {listed:?}");
    let o = merge_cli(&out);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    for c in &listed[1..] {
        assert!(t.contains(&format!("PhantomCT/default/{c} (listed by worker 1/2)")), "{c} not named: {t}");
    }
    assert!(!t.contains(&format!("PhantomCT/default/{} ", listed[0])), "the finished case is not missing: {t}");
    assert!(t.contains("PhantomMR/default: worker 1/2 never ran"), "{t}");
    assert!(!out.join("index.json").exists());

    // Once worker 1 finishes, the store publishes.
    run_worker(&catalog, &out, 1, 2, None);
    let o = merge_cli(&out);
    assert!(o.status.success(), "{}", text(&o));
    assert!(out.join("index.json").exists());
}

#[test]
fn resuming_under_another_worker_count_is_refused_and_touches_no_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let catalog = corpus(&tmp.path().join("raw"), 12);
    let out = tmp.path().join("out");
    run::run(&catalog, &tiny_shards(out.to_str().unwrap()), &|_| {}).unwrap();
    // What a kill after three commits leaves: later records and the index never written.
    std::fs::remove_file(out.join("index.json")).unwrap();
    let journal_dir = out.join("_ingest/journal/PhantomCT/default");
    let mut uncommitted = Vec::new();
    for e in std::fs::read_dir(&journal_dir).unwrap() {
        let p = e.unwrap().path();
        let rec: JournalRecord = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        if rec.seq >= 3 {
            uncommitted.extend(rec.cases.keys().cloned());
            std::fs::remove_file(&p).unwrap();
        }
    }
    assert!(
        uncommitted.iter().any(|c| run::owns("PhantomCT", "default", c, 0, 4)),
        "worker 0/4 has uncommitted work, so an unguarded run would write: {uncommitted:?}"
    );
    let before = files_under(&out.join("shards"));

    let cfg = IngestConfig { worker: 0, workers: 4, ..tiny_shards(out.to_str().unwrap()) };
    let err = run::run(&catalog, &cfg, &|_| {}).unwrap_err();
    assert!(
        matches!(err, IngestError::WorkerCount { journal: 1, requested: 4, .. }),
        "refused with a clear reason: {err:?}"
    );
    assert!(err.to_string().contains("resume it with the same N"), "{err}");
    assert_eq!(files_under(&out.join("shards")), before, "no shard was deleted or rewritten");

    // The same N resumes as before.
    let summary = run::run(&catalog, &tiny_shards(out.to_str().unwrap()), &|_| {}).unwrap();
    assert!(summary.index.is_some());
}

#[test]
fn journal_records_are_never_overwritten() {
    let server = S3Server::start();
    let opts =
        StoreOptions::endpoint_with_keys(&server.endpoint(), s3_test_support::ACCESS_KEY, s3_test_support::SECRET_KEY);
    let tmp = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (url, opts) in [(tmp.path().to_str().unwrap().to_string(), StoreOptions::default()), (server.url("j"), opts)] {
        let store = open_store(&url, &opts).unwrap();
        let rec = JournalRecord {
            dataset: "D".into(),
            task: "default".into(),
            worker: 0,
            workers: 1,
            seq: 0,
            shard: None,
            cases: BTreeMap::new(),
        };
        rt.block_on(journal::write_record(store.store().as_ref(), &rec)).unwrap();
        let again = JournalRecord { seq: 0, cases: [("x".to_string(), rec_case())].into(), ..rec.clone() };
        let err = rt.block_on(journal::write_record(store.store().as_ref(), &again)).unwrap_err();
        assert!(matches!(err, IngestError::Conflict { .. }), "{url}: {err:?}");
        assert!(err.to_string().contains("already exists"), "{err}");
        let kept = rt.block_on(journal::task_records(store.store().as_ref(), "D", "default")).unwrap();
        assert_eq!(kept, [rec], "{url}: the first record stands");
    }
}

fn rec_case() -> journal::CaseRecord {
    journal::CaseRecord { fate: s3_shards::labels::CaseFate::Skipped { reason: "test".into() }, samples: vec![] }
}

#[test]
fn shards_are_the_same_bytes_whatever_the_jobs() {
    let tmp = tempfile::tempdir().unwrap();
    let catalog = corpus(&tmp.path().join("raw"), 8);
    let mut lists = Vec::new();
    for jobs in [1, 3] {
        let out = tmp.path().join(format!("jobs{jobs}"));
        // Several files of several row groups: both orders are in the bytes.
        let writer = WriterOptions { target_file_bytes: 1, row_group_rows: 4, ..Default::default() };
        let cfg = IngestConfig { jobs, writer, ..IngestConfig::new(out.to_str().unwrap()) };
        lists.push(shard_list(&run::run(&catalog, &cfg, &|_| {}).unwrap().index.unwrap()));
    }
    assert!(lists[0].len() >= 2, "{:?}", lists[0]);
    assert_eq!(lists[0], lists[1], "file hashes differ between -j1 and -j3");
}

/// Every object under `shards/` in `url` opens as a complete Parquet shard.
fn no_partial_shards(url: &str, opts: &StoreOptions) -> usize {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let loc = open_store(url, opts).unwrap();
    rt.block_on(async {
        use futures::TryStreamExt;
        let metas: Vec<_> = loc.store().list(Some(&"shards".into())).try_collect().await.unwrap();
        for m in &metas {
            let r = ShardReader::open(loc.store().clone(), &m.location).await;
            let r = r.unwrap_or_else(|e| panic!("{} is visible but not a complete shard: {e}", m.location));
            r.read_all().await.unwrap_or_else(|e| panic!("{}: {e}", m.location));
        }
        metas.len()
    })
}

#[test]
fn an_s3_outage_mid_run_fails_it_cleanly_and_the_rerun_matches_an_undisturbed_run() {
    let tmp = tempfile::tempdir().unwrap();
    let catalog = corpus(&tmp.path().join("raw"), 6);
    let reference = tmp.path().join("reference");
    run::run(&catalog, &tiny_shards(reference.to_str().unwrap()), &|_| {}).unwrap();
    let expected = shard_list(&index_of(reference.to_str().unwrap(), &StoreOptions::default()).unwrap());

    let server = Mutex::new(S3Server::start());
    let (endpoint, url) = {
        let s = server.lock().unwrap();
        (s.endpoint(), s.url("out"))
    };
    let mut opts =
        StoreOptions::endpoint_with_keys(&endpoint, s3_test_support::ACCESS_KEY, s3_test_support::SECRET_KEY);
    opts.retry = Retry { max_retries: 2, timeout: Duration::from_secs(2), initial_backoff: Duration::from_millis(20) };
    let cfg = IngestConfig { store_options: opts.clone(), ..tiny_shards(&url) };

    // The server goes down after the second case and stays down: the run must fail.
    let done = AtomicUsize::new(0);
    let err = run::run(&catalog, &cfg, &|e| {
        if let Event::CaseDone { .. } = e
            && done.fetch_add(1, Ordering::SeqCst) + 1 == 2
        {
            server.lock().unwrap().stop();
        }
    })
    .unwrap_err();
    assert!(matches!(err, IngestError::Output { .. }), "{err:?}");
    server.lock().unwrap().restart();
    assert!(index_of(&url, &opts).is_none(), "no index from an incomplete run");
    assert!(no_partial_shards(&url, &opts) >= 1, "what was committed before the outage is there");

    // An outage the retries may or may not bridge: either the run completes or the
    // re-run does, and the result is the undisturbed one.
    let url2 = server.lock().unwrap().url("out2");
    let cfg2 = IngestConfig { out: url2.clone(), ..cfg.clone() };
    let done = AtomicUsize::new(0);
    let server_ref = &server;
    std::thread::scope(|scope| {
        let first = run::run(&catalog, &cfg2, &|e| {
            if let Event::CaseDone { .. } = e
                && done.fetch_add(1, Ordering::SeqCst) + 1 == 3
            {
                server_ref.lock().unwrap().stop();
                let _ = scope.spawn(move || {
                    std::thread::sleep(Duration::from_millis(300));
                    server_ref.lock().unwrap().restart();
                });
            }
        });
        if let Err(e) = first {
            assert!(matches!(e, IngestError::Output { .. }), "{e:?}");
            // Wait for the restart before looking (the scope would anyway at its end).
            while !server_ref.lock().unwrap().is_running() {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(index_of(&url2, &opts).is_none(), "no index from an incomplete run");
            no_partial_shards(&url2, &opts);
        }
    });
    if index_of(&url2, &opts).is_none() {
        run::run(&catalog, &cfg2, &|_| {}).unwrap();
    }
    assert_eq!(shard_list(&index_of(&url2, &opts).unwrap()), expected);

    // And the first store completes on a re-run too.
    let summary = run::run(&catalog, &cfg, &|_| {}).unwrap();
    assert_eq!(shard_list(&summary.index.unwrap()), expected, "re-run after the outage");
    assert_eq!(no_partial_shards(&url, &opts), expected.len(), "leftovers of the failed run are gone");
}

/// Every file under `dir`.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out = Vec::new();
    for e in rd {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(files_in(&p)) } else { out.push(p) }
    }
    out
}

#[test]
fn a_source_outage_ends_the_run_instead_of_quarantining_good_cases() {
    let tmp = tempfile::tempdir().unwrap();
    // Enough cases that some are fetched only after the outage begins (the in-order
    // window holds 2 x jobs).
    let local = corpus(&tmp.path().join("raw"), 10);
    let reference = tmp.path().join("reference");
    run::run(&local, &tiny_shards(reference.to_str().unwrap()), &|_| {}).unwrap();
    let expected = shard_list(&index_of(reference.to_str().unwrap(), &StoreOptions::default()).unwrap());

    // The raw corpus lives in a bucket; the output is local.
    let server = Mutex::new(S3Server::start());
    let (endpoint, raw_url) = {
        let s = server.lock().unwrap();
        (s.endpoint(), s.url("raw"))
    };
    let mut opts =
        StoreOptions::endpoint_with_keys(&endpoint, s3_test_support::ACCESS_KEY, s3_test_support::SECRET_KEY);
    opts.retry = Retry { max_retries: 1, timeout: Duration::from_secs(2), initial_backoff: Duration::from_millis(20) };
    let raw = open_store(&raw_url, &opts).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for file in files_in(&tmp.path().join("raw")) {
        let key = file.strip_prefix(tmp.path().join("raw")).unwrap().to_str().unwrap().to_string();
        if key.contains('/') {
            let bytes = std::fs::read(&file).unwrap();
            rt.block_on(object_store::ObjectStoreExt::put(raw.store().as_ref(), &key.as_str().into(), bytes.into()))
                .unwrap();
        }
    }
    let mut remote = local.clone();
    for d in &mut remote.datasets {
        d.tasks[0].source = Some(format!("{raw_url}/{}", d.name));
    }
    let out = tmp.path().join("out");
    let cfg = IngestConfig {
        store_options: opts.clone(),
        tmp_dir: tmp.path().to_path_buf(),
        ..tiny_shards(out.to_str().unwrap())
    };

    // The source goes away after the first case: the run ends, nothing is published,
    // and no case is recorded as quarantined for it.
    let done = AtomicUsize::new(0);
    let quarantined = Mutex::new(Vec::new());
    let err = run::run(&remote, &cfg, &|e| {
        if let Event::CaseDone { case_id, quarantined: q, .. } = &e {
            if let Some(r) = q {
                quarantined.lock().unwrap().push(format!("{case_id}: {r}"));
            }
            if done.fetch_add(1, Ordering::SeqCst) == 0 {
                server.lock().unwrap().stop();
            }
        }
    })
    .unwrap_err();
    assert!(matches!(&err, IngestError::SourceUnavailable { key, .. } if key.contains("PhantomCT/")), "{err:?}");
    assert!(quarantined.lock().unwrap().is_empty(), "{:?}", quarantined.lock().unwrap());
    assert!(index_of(out.to_str().unwrap(), &StoreOptions::default()).is_none(), "nothing published");

    // The source comes back: the re-run ingests every case, as an undisturbed run does.
    server.lock().unwrap().restart();
    let summary = run::run(&remote, &cfg, &|_| {}).unwrap();
    assert!(summary.datasets.iter().all(|d| d.quarantined == 0));
    assert_eq!(shard_list(&summary.index.unwrap()), expected);
}
