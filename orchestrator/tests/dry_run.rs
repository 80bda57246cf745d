//! `--dry-run` prints exactly what would be started (golden file) and touches nothing.
//! Regenerate the golden file with `UPDATE_GOLDEN=1 cargo test -p s3-orch --test dry_run`.

use std::path::Path;
use std::process::Command;

fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.strip_prefix(dir).unwrap().display().to_string());
        if p.is_dir() {
            out.extend(listing(&p).into_iter().map(|c| format!("{}/{c}", p.file_name().unwrap().to_string_lossy())));
        }
    }
    out.sort();
    out
}

/// Minimal stage files under `dir/stages`.
fn stage_files(dir: &Path) {
    std::fs::create_dir_all(dir.join("stages")).unwrap();
    for s in ["stage1", "stage2"] {
        std::fs::write(dir.join(format!("stages/{s}.toml")), format!("name = \"{s}\"\nepochs = 1\n")).unwrap();
    }
}

#[test]
fn the_pipeline_dry_run_matches_its_golden_file_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    stage_files(dir);
    let before = listing(dir);
    let o = Command::new(env!("CARGO_BIN_EXE_s3-orch"))
        .current_dir(dir)
        .args(["launch", "pipeline", "--manifest", "raw/datasets.toml", "--out", "store", "--runs", "runs"])
        .args(["--run", "golden", "--workers", "2", "--ranks", "2", "--stages", "stages"])
        .args(["--train-bin", "s3-train", "--ingest-bin", "s3-ingest", "--dry-run"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let shown = String::from_utf8(o.stdout).unwrap().replace(&dir.display().to_string(), "<dir>");
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/pipeline-dry-run.txt");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &shown).unwrap();
    }
    let want = std::fs::read_to_string(&golden).expect("golden file (UPDATE_GOLDEN=1 writes it)");
    assert_eq!(shown, want, "the dry run changed; if on purpose, regenerate with UPDATE_GOLDEN=1");
    assert_eq!(listing(dir), before, "a dry run writes nothing");
}

#[test]
fn benchmarks_follow_the_pipelines_eval_and_belong_to_eval_launches_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    stage_files(dir);
    let launch = |target: &str| {
        Command::new(env!("CARGO_BIN_EXE_s3-orch"))
            .current_dir(dir)
            .args(["launch", target, "--manifest", "raw/datasets.toml", "--out", "store", "--data", "store"])
            .args(["--runs", "runs", "--run", "b", "--stages", "stages", "--train-bin", "s3-train"])
            .args(["--ingest-bin", "s3-ingest", "--benchmarks", "manifests/benchmarks.toml", "--dry-run"])
            .output()
            .unwrap()
    };
    let o = launch("pipeline");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let shown = String::from_utf8(o.stdout).unwrap();
    let eval = shown.find("eval --device").expect("the pipeline's eval");
    let bench = shown.find("--protocol source --manifest manifests/benchmarks.toml").expect("the benchmarks step");
    assert!(bench > eval, "the benchmarks are scored after the val split:\n{shown}");
    let o = launch("eval");
    let shown = String::from_utf8(o.stdout).unwrap();
    assert_eq!(shown.matches("s3-train eval").count(), 1, "eval --benchmarks runs the benchmarks alone:\n{shown}");
    assert!(shown.contains("--manifest manifests/benchmarks.toml"), "{shown}");
    let o = launch("stage1");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--benchmarks"), "{}", String::from_utf8_lossy(&o.stderr));
}
