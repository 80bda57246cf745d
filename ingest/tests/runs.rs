//! Whole ingest runs on the phantom corpus: worker partitions, kill -9 and resume,
//! S3 in and out, the CLI's dry run and summary.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use s3_ingest::catalog::Catalog;
use s3_ingest::run::{self, IngestConfig};
use s3_shards::{ShardIndex, ShardReader, StoreOptions, open_store};
use s3_test_support::S3Server;

/// sample id → checksum of a published store; panics on a duplicated id.
fn published(url: &str, options: &StoreOptions) -> BTreeMap<String, u64> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let loc = open_store(url, options).unwrap();
        let index = ShardIndex::load(loc.store().as_ref()).await.unwrap();
        let mut out = BTreeMap::new();
        for s in &index.shards {
            let r = ShardReader::open(loc.store().clone(), &s.path.as_str().into()).await.unwrap();
            for h in r.headers().await.unwrap() {
                assert!(out.insert(h.sample_id.clone(), h.checksum).is_none(), "{} stored twice", h.sample_id);
            }
        }
        let report = s3_shards::verify::verify_store(loc.store(), |_, _| {}).await.unwrap();
        assert!(report.ok(), "{:?}", report.problems);
        out
    })
}

fn s3_ingest(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_s3-ingest")).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn corpus(dir: &Path, cases: usize) -> Catalog {
    let manifest = s3_ingest::synth::write_corpus(dir, cases, 11).unwrap();
    Catalog::load(&manifest).unwrap()
}

#[test]
fn worker_partition_then_merge_equals_a_single_run() {
    let tmp = tempfile::tempdir().unwrap();
    let catalog = corpus(&tmp.path().join("raw"), 6);
    let single = tmp.path().join("single");
    let summary = run::run(&catalog, &IngestConfig::new(single.to_str().unwrap()), &|_| {}).unwrap();
    assert_eq!(summary.datasets.iter().map(|d| d.cases).sum::<usize>(), 12);
    assert!(summary.index.is_some(), "a plain run publishes");

    let parts = tmp.path().join("parts");
    let mut cases_seen = 0;
    for w in 0..3 {
        let cfg = IngestConfig { worker: w, workers: 3, jobs: 1, ..IngestConfig::new(parts.to_str().unwrap()) };
        let s = run::run(&catalog, &cfg, &|_| {}).unwrap();
        assert!(s.index.is_none(), "workers leave publishing to merge");
        cases_seen += s.datasets.iter().map(|d| d.cases).sum::<usize>();
    }
    assert_eq!(cases_seen, 12, "the partition covers every case exactly once");
    assert!(!parts.join("index.json").exists());
    let out = open_store(parts.to_str().unwrap(), &StoreOptions::default()).unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(run::merge(&out)).unwrap();

    let a = published(single.to_str().unwrap(), &StoreOptions::default());
    let b = published(parts.to_str().unwrap(), &StoreOptions::default());
    assert!(a.len() >= 12, "{} samples", a.len());
    assert_eq!(a, b);
    // Workers interleave their shard numbers.
    let names: Vec<String> = std::fs::read_dir(parts.join("shards/PhantomCT/default"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| n.starts_with("part-") && n.ends_with(".parquet")), "{names:?}");
    for ds in ["PhantomCT", "PhantomMR"] {
        let fates = |root: &Path| -> serde_json::Value {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(root.join(format!("labels/{ds}.json"))).unwrap())
                    .unwrap();
            v["cases"].clone()
        };
        assert_eq!(fates(&single), fates(&parts), "{ds}: every case has the same fate");
    }
}

/// Waits until the run has committed at least `n` journal records, then kills it.
fn kill_after_records(mut child: std::process::Child, out: &Path, n: usize) -> bool {
    let journal = out.join("_ingest/journal");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let count = walk(&journal);
        if count >= n || Instant::now() > deadline {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run finished ({status}) before {n} records were committed");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    !out.join("index.json").exists()
}

fn walk(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.map(|e| e.unwrap().path())
        .map(|p| if p.is_dir() { walk(&p) } else { usize::from(p.extension().is_some_and(|x| x == "json")) })
        .sum()
}

#[test]
fn killed_runs_resume_to_the_same_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("raw");
    let manifest = s3_ingest::synth::write_corpus(&raw, 14, 5).unwrap();
    let manifest = manifest.to_str().unwrap();
    let reference = tmp.path().join("reference");
    let o =
        s3_ingest(&["--manifest", manifest, "--out", reference.to_str().unwrap(), "-j", "1", "--target-file-mib", "1"]);
    assert!(o.status.success(), "{}", text(&o));

    let out = tmp.path().join("killed");
    let args = ["--manifest", manifest, "--out", out.to_str().unwrap(), "-j", "1", "--target-file-mib", "1"];
    for records in [1, 4] {
        let child = Command::new(env!("CARGO_BIN_EXE_s3-ingest"))
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        assert!(kill_after_records(child, &out, records), "killed before publication");
    }
    let committed = walk(&out.join("_ingest/journal"));
    let o = s3_ingest(&args);
    assert!(o.status.success(), "{}", text(&o));
    assert!(walk(&out.join("_ingest/journal")) > committed, "the resumed run only added to the journal");
    assert_eq!(
        published(out.to_str().unwrap(), &StoreOptions::default()),
        published(reference.to_str().unwrap(), &StoreOptions::default())
    );
    // A run over finished work redoes nothing.
    let before = walk(&out.join("_ingest/journal"));
    let o = s3_ingest(&args);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(walk(&out.join("_ingest/journal")), before);
}

#[test]
fn s3_sources_and_s3_output() {
    let server = S3Server::start();
    let opts =
        StoreOptions::endpoint_with_keys(&server.endpoint(), s3_test_support::ACCESS_KEY, s3_test_support::SECRET_KEY);
    let tmp = tempfile::tempdir().unwrap();
    let local = corpus(&tmp.path().join("raw"), 3);
    // Upload the raw corpus into the bucket, as the files a hospital would keep there.
    let raw = open_store(&server.url("raw"), &opts).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for ds in ["PhantomCT", "PhantomMR"] {
        for entry in walkdir(&tmp.path().join("raw").join(ds)) {
            let key = entry.strip_prefix(tmp.path().join("raw")).unwrap().to_str().unwrap().to_string();
            let bytes = std::fs::read(&entry).unwrap();
            rt.block_on(object_store::ObjectStoreExt::put(raw.store().as_ref(), &key.as_str().into(), bytes.into()))
                .unwrap();
        }
    }
    let mut remote = local.clone();
    for d in &mut remote.datasets {
        d.tasks[0].source = Some(server.url(&format!("raw/{}", d.name)));
    }
    let local_out = tmp.path().join("local-out");
    run::run(&local, &IngestConfig::new(local_out.to_str().unwrap()), &|_| {}).unwrap();
    let cfg = IngestConfig {
        store_options: opts.clone(),
        tmp_dir: tmp.path().to_path_buf(),
        ..IngestConfig::new(server.url("shards"))
    };
    run::run(&remote, &cfg, &|_| {}).unwrap();
    assert_eq!(
        published(&server.url("shards"), &opts),
        published(local_out.to_str().unwrap(), &StoreOptions::default())
    );
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with("fetch-"))
        .collect();
    assert!(leftovers.is_empty(), "fetched inputs are removed: {leftovers:?}");
}

/// Every file under `dir`.
fn walkdir(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out = Vec::new();
    for e in rd {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(walkdir(&p)) } else { out.push(p) }
    }
    out
}

#[test]
fn dry_run_writes_nothing_and_catalogue_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = s3_ingest::synth::write_corpus(&tmp.path().join("raw"), 2, 1).unwrap();
    let out = tmp.path().join("out");
    let o = s3_ingest(&["--manifest", manifest.to_str().unwrap(), "--out", out.to_str().unwrap(), "--dry-run"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("dry run: nothing written"), "{}", text(&o));
    assert!(!out.join("index.json").exists() && !out.join("shards").exists());

    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let catalog = Catalog::load(&repo.join("manifests/datasets.toml")).unwrap();
    let c = catalog.counts();
    assert_eq!((c.public, c.public_pretrain, c.finetune_datasets, c.finetune_tasks, c.private), (58, 58, 43, 44, 24));
    assert_eq!(catalog.get("LAScarQS22").unwrap().tasks.len(), 2);
    assert!(
        !catalog.get("MSD_Prostate").unwrap().finetune && catalog.get("MSD_Lung").unwrap().finetune,
        "Table 1, not the authors' list"
    );

    // Private datasets have no source: skipped with that reason, nothing fails.
    let catalog_path = repo.join("manifests/datasets.toml");
    let only = |names: &str| {
        s3_ingest(&["--manifest", catalog_path.to_str().unwrap(), "--out", out.to_str().unwrap(), "--datasets", names])
    };
    let o = only("Private01,Private02");
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("skipped Private01/default: no source configured"), "{}", text(&o));
    let o = only("NoSuchSet");
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("unknown datasets [\"NoSuchSet\"]"), "{}", text(&o));
}
