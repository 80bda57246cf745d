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
    assert!(text(&o).contains("no source configured (2): Private01, Private02"), "{}", text(&o));
    let o = only("NoSuchSet");
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("unknown datasets [\"NoSuchSet\"]"), "{}", text(&o));
}

/// `v` as a detached MetaImage (`<stem>.mhd` + `<stem>.raw`): the RAS affine back to
/// ITK's LPS direction cosines, spacings and offset.
fn write_mhd(v: &s3_ingest::nifti_io::Volume, dir: &Path, stem: &str) {
    use s3_ingest::nifti_io::Voxels;
    assert!(v.integer_unscaled(), "the phantom CT stores its integers unscaled");
    let s = s3_ingest::geometry::spacing(&v.affine);
    let lps = |r: usize, c: usize| if r < 2 { -v.affine[r][c] } else { v.affine[r][c] };
    let matrix: Vec<String> = (0..3)
        .flat_map(|axis| (0..3).map(move |r| (axis, r)))
        .map(|(a, r)| format!("{:?}", lps(r, a) / s[a]))
        .collect();
    let (kind, bytes): (&str, Vec<u8>) = match &v.voxels {
        Voxels::I16(d) => ("MET_SHORT", d.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Voxels::U8(d) => ("MET_UCHAR", d.clone()),
        other => panic!("unexpected phantom type {}", other.len()),
    };
    let header = format!(
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\nTransformMatrix = {}\n\
Offset = {:?} {:?} {:?}\nElementSpacing = {:?} {:?} {:?}\nDimSize = {} {} {}\nElementType = {kind}\nElementDataFile = {stem}.raw\n",
        matrix.join(" "),
        lps(0, 3),
        lps(1, 3),
        lps(2, 3),
        s[0],
        s[1],
        s[2],
        v.shape[0],
        v.shape[1],
        v.shape[2]
    );
    std::fs::write(dir.join(format!("{stem}.mhd")), header).unwrap();
    std::fs::write(dir.join(format!("{stem}.raw")), bytes).unwrap();
}

/// A label map as one greyscale PNG per slice (value × 50), named so that name order
/// runs against the slices.
fn write_png_stack(v: &s3_ingest::nifti_io::Volume, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let [nx, ny, nz] = v.shape;
    for z in 0..nz {
        let grey: Vec<u8> = (0..nx * ny).map(|i| (v.value(z * nx * ny + i) as u8) * 50).collect();
        let file = std::fs::File::create(dir.join(format!("slice{}.png", nz - 1 - z))).unwrap();
        let mut e = png::Encoder::new(std::io::BufWriter::new(file), nx as u32, ny as u32);
        e.set_color(png::ColorType::Grayscale);
        e.set_depth(png::BitDepth::Eight);
        e.write_header().unwrap().write_image_data(&grey).unwrap();
    }
}

/// A detached MetaImage image and a PNG-stack label, read from S3: the header's data
/// file and the folder's slices are fetched beside it, and the samples are those of
/// the same cases as NIfTI (bit for bit: the geometry is the same numbers).
#[test]
fn metaimage_and_png_stacks_from_an_s3_source_equal_their_nifti_twins() {
    let server = S3Server::start();
    let opts =
        StoreOptions::endpoint_with_keys(&server.endpoint(), s3_test_support::ACCESS_KEY, s3_test_support::SECRET_KEY);
    let tmp = tempfile::tempdir().unwrap();
    let nifti = corpus(&tmp.path().join("raw"), 3);
    let ct = tmp.path().join("raw/PhantomCT");
    let converted = tmp.path().join("converted");
    std::fs::create_dir_all(converted.join("images")).unwrap();
    let mut labels = Vec::new();
    for c in 0..3 {
        let case = format!("case{c:03}");
        let read = |p: &Path| s3_ingest::nifti_io::read_nifti(p, &Default::default()).unwrap();
        write_mhd(&read(&ct.join(format!("imagesTr/{case}_0000.nii.gz"))), &converted.join("images"), &case);
        let label = read(&ct.join(format!("labelsTr/{case}.nii.gz")));
        write_png_stack(&label, &converted.join("labels").join(&case));
        labels.extend(s3_ingest::preprocess::label_values(&label).unwrap());
    }
    labels.sort();
    labels.dedup();
    let values: Vec<String> = labels.iter().map(|v| format!("\"{}\" = {v}", v * 50)).collect();
    let entry = |source: &str| {
        format!(
            "[[datasets]]\nname = \"PhantomCT\"\nmodality = \"CT\"\npretrain = true\nfinetune = false\n\
[[datasets.tasks]]\nname = \"default\"\nlayout = \"pairs\"\nsource = \"{source}\"\nimage_glob = \"images/*.mhd\"\n\
label_template = \"labels/{{case}}\"\nlabel_png = {{ values = {{ {} }}, reversed = true }}\n",
            values.join(", ")
        )
    };
    let raw = open_store(&server.url("converted"), &opts).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for entry in walkdir(&converted) {
        let key = entry.strip_prefix(&converted).unwrap().to_str().unwrap().to_string();
        let bytes = std::fs::read(&entry).unwrap();
        rt.block_on(object_store::ObjectStoreExt::put(raw.store().as_ref(), &key.as_str().into(), bytes.into()))
            .unwrap();
    }

    let mut only_ct = nifti.clone();
    only_ct.datasets.retain(|d| d.name == "PhantomCT");
    let reference = tmp.path().join("nifti-out");
    run::run(&only_ct, &IngestConfig::new(reference.to_str().unwrap()), &|_| {}).unwrap();
    let remote = Catalog::parse(&entry(&server.url("converted")), "remote").unwrap();
    let cfg = IngestConfig {
        store_options: opts.clone(),
        tmp_dir: tmp.path().to_path_buf(),
        ..IngestConfig::new(tmp.path().join("remote-out").to_str().unwrap())
    };
    let summary = run::run(&remote, &cfg, &|_| {}).unwrap();
    assert_eq!(summary.quarantined(), 0, "{summary:?}");
    let want = published(reference.to_str().unwrap(), &StoreOptions::default());
    assert!(want.len() >= 3, "{want:?}");
    assert_eq!(published(tmp.path().join("remote-out").to_str().unwrap(), &StoreOptions::default()), want);
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with("fetch-"))
        .collect();
    assert!(leftovers.is_empty(), "fetched inputs are removed: {leftovers:?}");
}
