//! The `s3-shards` binary against a local directory and a real S3 server.

mod common;

use std::process::{Command, Output};

use s3_test_support::S3Server;

fn s3_shards(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_s3-shards"));
    cmd.args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run s3-shards")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Flips one byte in the middle of a file.
fn flip_byte(path: &std::path::Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x5a;
    std::fs::write(path, bytes).unwrap();
}

const SHARD: &str = "shards/SYNTH_CT_1/default/part-00000.parquet";

fn synth_verify_corrupt(url: &str, env: &[(&str, String)], object: std::path::PathBuf) {
    let o = s3_shards(&["synth", url, "--datasets", "2", "--cases", "2", "--labels", "1"], env);
    assert!(o.status.success(), "{}", text(&o));
    let o = s3_shards(&["verify", url], env);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("2 shards, 4 samples ok"), "{}", text(&o));

    flip_byte(&object);
    let o = s3_shards(&["verify", url], env);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains(&format!("MISMATCH {SHARD}")), "{out}");
    assert!(out.contains("file hash mismatch"), "{out}");
    assert!(!out.contains("MISMATCH shards/SYNTH_CT_0"), "the intact shard is not blamed: {out}");
}

#[test]
fn verify_names_a_corrupted_shard_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    synth_verify_corrupt(root.to_str().unwrap(), &[], root.join(SHARD));
}

#[test]
fn verify_names_a_corrupted_shard_on_s3() {
    let server = S3Server::start();
    let url = server.url("corrupt");
    synth_verify_corrupt(&url, &server.env(), server.object_path(&format!("corrupt/{SHARD}")));
}

#[test]
fn ls_cat_preview_and_no_secret_in_logs() {
    let server = S3Server::start();
    let url = server.url("tools");
    let mut env = server.env();
    let o = s3_shards(&["synth", &url, "--datasets", "1", "--cases", "2", "--labels", "2"], &env);
    assert!(o.status.success(), "{}", text(&o));

    // Everything the client logs at the most verbose level, including request signing.
    env.push(("RUST_LOG", "trace".into()));
    let o = s3_shards(&["ls", &url], &env);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("SYNTH_CT_0") && out.contains("TOTAL"), "{out}");
    assert!(!out.contains(s3_test_support::SECRET_KEY), "the secret key leaked into the output");

    let o = s3_shards(&["cat", &url, "SYNTH_CT_0/default/case0001/2"], &env);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["sample_id"], "SYNTH_CT_0/default/case0001/2");
    assert_eq!(v["row"], 3);
    assert_eq!(v["modality"], "CT");
    assert!(v["fg_voxels"].as_i64().unwrap() > 1000);

    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("p.png");
    let o = s3_shards(&["preview", &url, "SYNTH_CT_0/default/case0000/1", "--out", png.to_str().unwrap()], &env);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(&std::fs::read(&png).unwrap()[..8], b"\x89PNG\r\n\x1a\n");

    let o = s3_shards(&["cat", &url, "SYNTH_CT_0/default/nope/1"], &server.env());
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("not found: sample SYNTH_CT_0/default/nope/1"), "{}", text(&o));
}

#[test]
fn empty_store_says_nothing_is_published() {
    let dir = tempfile::tempdir().unwrap();
    let o = s3_shards(&["ls", dir.path().to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("has no index.json: nothing has been published there yet"), "{}", text(&o));
    let o = s3_shards(&["ls", "gs://bucket/x"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("unsupported scheme"), "{}", text(&o));
}
