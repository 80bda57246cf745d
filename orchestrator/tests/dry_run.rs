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

#[test]
fn the_pipeline_dry_run_matches_its_golden_file_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("stages")).unwrap();
    for s in ["stage1", "stage2"] {
        std::fs::write(dir.join(format!("stages/{s}.toml")), format!("name = \"{s}\"\nepochs = 1\n")).unwrap();
    }
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
