//! The Kubernetes backend without a cluster: golden files of the dry run (Indexed Job
//! and JobSet), no credential in any manifest, and "run what the manifests say": each
//! pod of a rendered Indexed Job run here as a process, with the environment
//! Kubernetes would give it, trains a stage or ingests a corpus for real.
//! Regenerate the golden files with `UPDATE_GOLDEN=1 cargo test --workspace --test k8s`.

mod common;
use common::samples;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use s3_orch::backend::Backend;
use s3_orch::backend::k8s::K8s;
use s3_orch::launch::{Launched, StageLaunch, launch_stage};
use s3_orch::ledger::State;
use s3_orch::plan::{IngestPlan, Job, TrainPlan, ingest_job, merge_job, train_job};
use s3_orch::settings::{Layer, Origin, Settings};
use s3_orch::stage::Stage;
use s3_shards::{StoreOptions, WriterOptions, open_store, synthetic};
use serde_json::Value;

fn bin(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_s3-orch")).with_file_name(name);
    assert!(p.exists(), "{} missing: `cargo test --workspace` builds it", p.display());
    p
}

fn stage_toml(name: &str) -> String {
    format!(
        "name = \"{name}\"\npreset = \"small\"\nepochs = 1\nlr = 2e-3\ndecoder_lr_factor = 1.0\nbatch = 1\n\
         accumulation = 1\nclicks = 2\nseed = 1\ncheckpoint_every = 2\nshard_window = 2\n\
         loss_resolution = \"low\"\nlegacy_loss = true\n[schedule]\nkind = \"constant\"\n"
    )
}

const PROFILE: &str = r#"ranks = 8
nodes = 2
device = "cuda"
gpus_per_node = 4
cpus_per_rank = 8
mem_per_rank = "64Gi"
time_limit = "48h"
namespace = "sam3d"
image = "registry.example.org/sam3d-trainer:1.0"
secret = "sam3d-s3"
grace_seconds = 300
workers = 3
jobs = 4
train_bin = "s3-train"
ingest_bin = "s3-ingest"
[env]
NCCL_SOCKET_IFNAME = "eth0"
"#;

const CATALOG: &str = "[[datasets]]\nname = \"AMOS22\"\nmodality = \"CT\"\npretrain = true\nfinetune = true\n";

const ACCESS_KEY: &str = "AKIAK8SGOLDENTESTKEY";
const SECRET_KEY: &str = "k8s/golden+secret/DoNotLeakThisValue0123";

/// `launch pipeline --backend k8s --dry-run` in a fresh folder, with credentials in
/// its environment: what it printed, with the folder shown as `<dir>`.
fn dry_run(kind: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("stages")).unwrap();
    for s in ["stage1", "stage2"] {
        std::fs::write(dir.join(format!("stages/{s}.toml")), stage_toml(s)).unwrap();
    }
    std::fs::write(dir.join("k8s.toml"), PROFILE).unwrap();
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    std::fs::write(dir.join("manifests/datasets.toml"), CATALOG).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_s3-orch"))
        .current_dir(dir)
        .args(["launch", "pipeline", "--backend", "k8s", "--cluster", "k8s.toml", "--k8s-kind", kind])
        .args(["--manifest", "manifests/datasets.toml", "--out", "s3://sam3d/shards", "--runs", "runs"])
        .args(["--run", "golden", "--stages", "stages", "--dry-run"])
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!dir.join("runs").exists(), "a dry run writes nothing");
    String::from_utf8(o.stdout).unwrap().replace(&dir.display().to_string(), "<dir>")
}

#[test]
fn the_dry_run_matches_its_golden_files_and_holds_no_credential() {
    for kind in ["job", "jobset"] {
        let shown = dry_run(kind);
        for secret in [ACCESS_KEY, SECRET_KEY] {
            assert!(!shown.contains(secret), "a credential from the environment is in the {kind} manifests");
        }
        assert!(
            shown.contains("- secretRef:\n") && shown.contains("  name: \"sam3d-s3\"\n"),
            "credentials by reference:\n{shown}"
        );
        let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/k8s-pipeline-{kind}.yaml"));
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&golden, &shown).unwrap();
        }
        let want = std::fs::read_to_string(&golden).expect("golden file (UPDATE_GOLDEN=1 writes it)");
        assert_eq!(shown, want, "the {kind} dry run changed; if on purpose, regenerate with UPDATE_GOLDEN=1");
    }
}

#[test]
fn the_shipped_profile_renders() {
    let profile = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/clusters/k8s.toml");
    let layer = s3_orch::settings::load_profile(&profile).unwrap();
    let settings = Settings::resolve(vec![(Origin::Profile(profile), layer)]);
    let k = K8s::new(&settings).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut plan = train_plan(&settings, "s3-train".into(), "s3://b/d", "s3://b/r");
    plan.stage_file = stage_file(tmp.path());
    let job = train_job(&plan, "r", s3_orch::stage::Stage::Stage1, 1, 0, None, "l".into());
    let docs = k.manifests(&job).unwrap();
    let pod = &docs.last().unwrap()["spec"]["template"]["spec"];
    assert_eq!(pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"], "4");
    assert_eq!(pod["tolerations"][0]["key"], "nvidia.com/gpu", "the profile's tolerations");
    // The node-local shard cache: a volume, mounted where S3_CACHE_DIR points.
    let container = &pod["containers"][0];
    let var = |name: &str| {
        container["env"].as_array().unwrap().iter().find(|e| e["name"] == name).map(|e| e["value"].clone())
    };
    let dir = var("S3_CACHE_DIR").expect("the profile names the cache");
    let mount = container["volumeMounts"].as_array().unwrap().iter().find(|m| m["mountPath"] == dir);
    let mount = mount.unwrap_or_else(|| panic!("no volume mounted at {dir}"));
    let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == mount["name"]).unwrap();
    assert!(volume["emptyDir"]["sizeLimit"].is_string(), "{volume}");
    assert!(var("S3_CACHE_LIMIT").is_some());
}

/// A stage file in `dir`.
fn stage_file(dir: &Path) -> PathBuf {
    let f = dir.join("stage1.toml");
    std::fs::write(&f, stage_toml("stage1")).unwrap();
    f
}

fn settings(layer: Layer) -> Settings {
    Settings::resolve(vec![(Origin::Flag, layer)])
}

fn train_plan(s: &Settings, train_bin: PathBuf, data: &str, run_dir: &str) -> TrainPlan {
    TrainPlan {
        train_bin,
        stage_file: "stages/stage1.toml".into(),
        data: data.into(),
        run_dir: run_dir.into(),
        init: None,
        catalog: None,
        ranks: s.ranks(),
        nodes: s.nodes(),
        device: s.device().into(),
        env: s.values.env.clone(),
    }
}

// ---- Kubernetes, as far as a pod's process sees it ----

/// Kubernetes' `$(NAME)` expansion of command, args and env values: a defined
/// variable's value; `$$` is `$`; anything else as written.
fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 1..];
        if let Some(t) = tail.strip_prefix('$') {
            out.push('$');
            rest = t;
        } else if let Some((name, t)) = tail.strip_prefix('(').and_then(|t| t.split_once(')')) {
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&format!("$({name})")),
            }
            rest = t;
        } else {
            out.push('$');
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

/// One pod's process: its argv, its whole environment, and its ConfigMap volumes
/// (mount path → files by relative path).
struct PodProcess {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    mounts: Vec<(String, Vec<(String, String)>)>,
}

fn doc<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind} in {docs:?}"))
}

/// What the pod of completion `index` of the Indexed Job in `docs` runs: the
/// container's env resolved as the kubelet does (downward API, the Secrets among
/// `docs`), plus what the Job controller and kubelet set, then command + args expanded.
fn pod_process(docs: &[Value], index: usize) -> PodProcess {
    let job = doc(docs, "Job");
    let pod = &job["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let secret = |name: &str| -> &Value {
        &docs
            .iter()
            .find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("secret {name}"))["stringData"]
    };
    let name = job["metadata"]["name"].as_str().unwrap();
    let mut env = vec![
        ("HOSTNAME".to_string(), format!("{name}-{index}")),
        ("JOB_COMPLETION_INDEX".to_string(), index.to_string()),
    ];
    for from in container["envFrom"].as_array().into_iter().flatten() {
        for (k, v) in secret(from["secretRef"]["name"].as_str().unwrap()).as_object().unwrap() {
            env.push((k.clone(), v.as_str().unwrap().into()));
        }
    }
    for e in container["env"].as_array().unwrap() {
        let value = if let Some(v) = e["value"].as_str() {
            expand(v, &env)
        } else if let Some(field) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            assert_eq!(field, "metadata.annotations['batch.kubernetes.io/job-completion-index']");
            index.to_string()
        } else {
            let r = &e["valueFrom"]["secretKeyRef"];
            secret(r["name"].as_str().unwrap())[r["key"].as_str().unwrap()].as_str().unwrap().to_string()
        };
        env.push((e["name"].as_str().unwrap().to_string(), value));
    }
    let argv = container["command"]
        .as_array()
        .unwrap()
        .iter()
        .chain(container["args"].as_array().unwrap())
        .map(|a| expand(a.as_str().unwrap(), &env))
        .collect();
    let mut mounts = Vec::new();
    for m in container["volumeMounts"].as_array().unwrap() {
        let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == m["name"]).unwrap();
        let Some(cm) = volume.get("configMap") else { continue };
        let data = &docs
            .iter()
            .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == cm["name"])
            .unwrap_or_else(|| panic!("configmap {}", cm["name"]))["data"];
        let files = cm["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (i["path"].as_str().unwrap().to_string(), data[i["key"].as_str().unwrap()].as_str().unwrap().into())
            })
            .collect();
        mounts.push((m["mountPath"].as_str().unwrap().to_string(), files));
    }
    PodProcess { argv, env, mounts }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The pods of an Indexed Job here: rank 0's name (`<job>-0.<subdomain>.<ns>.svc...`,
/// checked) resolving to 127.0.0.1, and the port, one pod's own in a cluster, a free one.
fn start_pods(docs: &[Value], logs: &Path) -> Vec<(Child, PathBuf)> {
    let job = doc(docs, "Job");
    let completions = job["spec"]["completions"].as_u64().unwrap() as usize;
    assert_eq!(job["spec"]["parallelism"].as_u64().unwrap() as usize, completions);
    assert_eq!(job["spec"]["completionMode"], "Indexed");
    let port = free_port().to_string();
    std::fs::create_dir_all(logs).unwrap();
    (0..completions)
        .map(|i| {
            let mut p = pod_process(docs, i);
            for (k, v) in &mut p.env {
                match k.as_str() {
                    "MASTER_ADDR" => {
                        let name = job["metadata"]["name"].as_str().unwrap();
                        let sub = job["spec"]["template"]["spec"]["subdomain"].as_str().unwrap();
                        let ns = job["metadata"]["namespace"].as_str().unwrap();
                        assert_eq!(*v, format!("{name}-0.{sub}.{ns}.svc.cluster.local"), "rank 0's pod");
                        *v = "127.0.0.1".into();
                    }
                    "MASTER_PORT" => *v = port.clone(),
                    _ => {}
                }
            }
            // A ConfigMap volume: its files in a folder of this pod's own.
            for (n, (mount, files)) in p.mounts.iter().enumerate() {
                let here = logs.join(format!("pod-{i}-volume-{n}"));
                for (rel, text) in files {
                    std::fs::create_dir_all(here.join(rel).parent().unwrap()).unwrap();
                    std::fs::write(here.join(rel), text).unwrap();
                }
                for a in &mut p.argv {
                    if let Some(rest) = a.strip_prefix(mount.as_str()) {
                        *a = format!("{}{rest}", here.display());
                    }
                }
            }
            let log = logs.join(format!("pod-{i}.log"));
            let out = std::fs::File::create(&log).unwrap();
            let child = Command::new(&p.argv[0])
                .args(&p.argv[1..])
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .envs(p.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .unwrap_or_else(|e| panic!("{:?}: {e}", p.argv));
            (child, log)
        })
        .collect()
}

/// Every pod's exit code, in index order (killing all after `limit`).
fn wait_pods(pods: Vec<(Child, PathBuf)>, limit: Duration) -> Vec<(Option<i32>, String)> {
    let deadline = Instant::now() + limit;
    pods.into_iter()
        .map(|(mut c, log)| {
            let code = loop {
                if let Some(s) = c.try_wait().unwrap() {
                    break s.code();
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    break c.wait().unwrap().code();
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            (code, std::fs::read_to_string(log).unwrap_or_default())
        })
        .collect()
}

/// Stage 1 of `ranks` over 2 pods, run as its manifests say; each pod's output.
fn train_on_two_pods(ranks: usize) -> Vec<String> {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let loc = open_store(data.to_str().unwrap(), &StoreOptions::default()).unwrap();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(synthetic::populate(loc.store(), 1, 6, 1, WriterOptions { row_group_rows: 2, ..Default::default() }))
        .unwrap();
    let stage = tmp.path().join("stage1.toml");
    std::fs::write(&stage, stage_toml("stage1")).unwrap();
    let run_dir = tmp.path().join("runs/kr/stage1");
    let s = settings(Layer {
        ranks: Some(ranks),
        nodes: Some(2),
        image: Some("sam3d-trainer:test".into()),
        namespace: Some("ci".into()),
        grace_seconds: Some(30),
        env: [("RUST_LOG".to_string(), "info".to_string())].into(),
        ..Default::default()
    });
    let mut plan = train_plan(&s, bin("s3-train"), data.to_str().unwrap(), run_dir.to_str().unwrap());
    plan.stage_file = stage;
    let job = train_job(&plan, "kr", s3_orch::stage::Stage::Stage1, 1, 0, Some("t0k3n"), tmp.path().join("logs"));
    let docs = K8s::new(&s).unwrap().manifests(&job).unwrap();
    assert_eq!(doc(&docs, "Service")["spec"]["clusterIP"], "None");
    assert_eq!(doc(&docs, "ConfigMap")["data"]["stage1.toml"], stage_toml("stage1"), "the stage file travels");
    assert!(!serde_json::to_string(doc(&docs, "Job")).unwrap().contains("t0k3n"), "the token is in the Secret only");

    let ended = wait_pods(start_pods(&docs, &tmp.path().join("pods")), Duration::from_secs(900));
    let per_pod = ranks / 2;
    let digest = |log: &str| log.split("weights xxh3 ").nth(1).map(|s| s[..16].to_string()).unwrap_or_default();
    for (i, (code, log)) in ended.iter().enumerate() {
        assert_eq!(*code, Some(0), "pod {i}:\n{log}");
        for r in i * per_pod..(i + 1) * per_pod {
            assert!(log.contains(&format!("rank {r}/{ranks}: trained")), "pod {i} runs rank {r} of {ranks}:\n{log}");
        }
        assert!(!digest(log).is_empty() && digest(log) == digest(&ended[0].1), "one model on every pod");
    }
    let latest = run_dir.join("checkpoints/latest.json");
    let pointer: Value = serde_json::from_slice(&std::fs::read(&latest).unwrap()).unwrap();
    let dir = run_dir.join(pointer["dir"].as_str().unwrap());
    assert!(dir.join("weights.safetensors").exists(), "the checkpoint in {}", dir.display());
    ended.into_iter().map(|(_, log)| log).collect()
}

#[test]
fn a_two_pod_stage1_runs_as_its_manifests_say_and_checkpoints_into_the_run() {
    train_on_two_pods(2);
}

#[test]
fn two_pods_of_two_ranks_each_train_one_model_through_ranks_sh() {
    for log in train_on_two_pods(4) {
        assert!(!log.contains("s3-ranks:"), "no rank failed:\n{log}");
    }
}

#[test]
fn three_ingest_pods_and_the_merge_job_publish_what_one_process_does() {
    let tmp = tempfile::tempdir().unwrap();
    let ingest = bin("s3-ingest");
    let raw = tmp.path().join("raw");
    let o = Command::new(&ingest).args(["synth", "--cases", "4", "--out"]).arg(&raw).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let manifest = raw.join("datasets.toml");
    let reference = tmp.path().join("reference");
    let o = Command::new(&ingest).arg("--manifest").arg(&manifest).arg("--out").arg(&reference).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let store = tmp.path().join("store");
    let plan = IngestPlan {
        ingest_bin: ingest,
        manifest,
        out: store.display().to_string(),
        workers: 3,
        jobs: 1,
        extra_args: vec![],
        env: Default::default(),
    };
    let s = settings(Layer { image: Some("sam3d-ingest:test".into()), ..Default::default() });
    let k = K8s::new(&s).unwrap();
    let workers = k.manifests(&ingest_job(&plan, "ki", 1, tmp.path().join("logs"))).unwrap();
    let kinds: Vec<&Value> = workers.iter().map(|d| &d["kind"]).collect();
    assert_eq!(kinds, ["ConfigMap", "Job"], "the catalogue; workers do not meet: no Service, no token");
    let args = doc(&workers, "Job")["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains("\"--worker\",\"$(JOB_COMPLETION_INDEX)/3\""), "{args}");
    for (i, (code, log)) in
        wait_pods(start_pods(&workers, &tmp.path().join("w")), Duration::from_secs(600)).iter().enumerate()
    {
        assert_eq!(*code, Some(0), "worker {i}:\n{log}");
    }
    let merge = k.manifests(&merge_job(&plan, "ki", 1, tmp.path().join("logs/merge"))).unwrap();
    for (code, log) in wait_pods(start_pods(&merge, &tmp.path().join("m")), Duration::from_secs(300)) {
        assert_eq!(code, Some(0), "merge:\n{log}");
    }
    assert_eq!(samples(&store), samples(&reference), "3 worker pods + the merge publish what one process does");
}

/// A job of `pods` × 2 ranks running `script` with `sh -c` (a training job's shape).
fn two_ranks_per_pod(pods: usize, script: &str) -> Job {
    let s = settings(Layer { ranks: Some(pods * 2), nodes: Some(pods), ..Default::default() });
    let mut job =
        train_job(&train_plan(&s, "sh".into(), "d", "r"), "w", s3_orch::stage::Stage::Stage1, 1, 0, None, "l".into());
    for r in &mut job.ranks {
        r.args = vec!["-c".into(), script.into()];
    }
    job
}

/// Runs the one pod of `job`; with `signal_when`, sends it SIGTERM once its log
/// holds that line twice (both ranks).
fn run_pod(job: &Job, signal_when: Option<&str>) -> (Option<i32>, String, Duration) {
    let tmp = tempfile::tempdir().unwrap();
    let s = settings(Layer { image: Some("x".into()), ..Default::default() });
    let docs = K8s::new(&s).unwrap().manifests(job).unwrap();
    let started = Instant::now();
    let mut pods = start_pods(&docs, tmp.path());
    if let Some(line) = signal_when {
        let log = &pods[0].1;
        while std::fs::read_to_string(log).unwrap_or_default().matches(line).count() < 2 {
            assert!(started.elapsed() < Duration::from_secs(30), "the ranks did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let pid = pods[0].0.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    }
    let (code, log) = wait_pods(pods.drain(..1).collect(), Duration::from_secs(60)).remove(0);
    (code, log, started.elapsed())
}

#[test]
fn a_pod_of_several_ranks_starts_each_and_ends_with_the_first_failure() {
    // Every rank ran, with its own LOCAL_RANK and the pod's share of the world.
    let (code, log, _) = run_pod(
        &two_ranks_per_pod(1, r#"echo "local $LOCAL_RANK of $S3_RANKS_PER_POD index $JOB_COMPLETION_INDEX""#),
        None,
    );
    assert_eq!(code, Some(0), "{log}");
    for r in 0..2 {
        assert!(log.contains(&format!("local {r} of 2 index 0")), "{log}");
    }
    // Local rank 1 fails: the pod exits with its code at once, rank 0 killed.
    let script = r#"if [ "$LOCAL_RANK" = 1 ]; then sleep 0.2; exit 3; fi; exec sleep 30"#;
    let (code, log, took) = run_pod(&two_ranks_per_pod(1, script), None);
    assert_eq!(code, Some(3), "{log}");
    assert!(log.contains("local rank 1 exited with code 3"), "{log}");
    assert!(took < Duration::from_secs(10), "the other rank was not left running: {took:?}");
    // SIGTERM to the pod reaches every rank; each checkpoints and exits 75.
    let script = r#"trap 'kill $!; echo "rank $LOCAL_RANK stopping"; exit 75' TERM; echo up; sleep 30 & wait"#;
    let (code, log, took) = run_pod(&two_ranks_per_pod(1, script), Some("up\n"));
    assert_eq!(code, Some(75), "{log}");
    assert!(log.contains("rank 0 stopping") && log.contains("rank 1 stopping"), "{log}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn literal_dollars_survive_kubernetes_expansion() {
    let mut job = two_ranks_per_pod(1, "printf '%s|%s' \"$PRICE\" '$(HOME)$$'");
    for r in &mut job.ranks {
        r.env.push(("PRICE".into(), "$(JOB_COMPLETION_INDEX)$5".into()));
    }
    let s = settings(Layer { image: Some("x".into()), ..Default::default() });
    let docs = K8s::new(&s).unwrap().manifests(&job).unwrap();
    let p = pod_process(&docs, 0);
    let price = &p.env.iter().find(|(k, _)| k == "PRICE").unwrap().1;
    assert_eq!(price, "$(JOB_COMPLETION_INDEX)$5");
    assert!(p.argv.iter().any(|a| a == "printf '%s|%s' \"$PRICE\" '$(HOME)$$'"), "{:?}", p.argv);
}

// ---- submit, wait, cancel against a stand-in kubectl ----

const FAKE_KUBECTL: &str = r#"#!/usr/bin/env bash
# Records each call; answers from files in its folder.
dir=$(dirname "$0")
echo "$*" >> "$dir/calls"
case "$1 $2" in
  "apply -f") cat > "$dir/applied.yaml" ;;
  "get job"|"get jobset")
    if [ -f "$dir/gone" ]; then echo "Error from server (NotFound): jobs.batch \"$3\" not found" >&2; exit 1; fi
    cat "$dir/job.json" ;;
  "get pods")
    # pods-a<N>.json answers for attempt N when it exists.
    a=$(printf '%s' "$*" | sed -n 's|.*s3/attempt=\([0-9]*\).*|\1|p')
    if [ -f "$dir/pods-a$a.json" ]; then cat "$dir/pods-a$a.json"; else cat "$dir/pods.json"; fi ;;
  logs*) echo "log of $2" ;;
  delete*) ;;
  *) echo "unexpected: $*" >&2; exit 1 ;;
esac
"#;

#[test]
fn a_store_on_this_machine_is_refused_before_anything_is_applied() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("kubectl");
    std::fs::write(&fake, FAKE_KUBECTL).unwrap();
    assert!(Command::new("chmod").arg("+x").arg(&fake).status().unwrap().success());
    let s = settings(Layer { image: Some("img".into()), namespace: Some("ci".into()), ..Default::default() });
    let k = K8s::new(&s).unwrap().with_kubectl(&fake).with_poll(Duration::from_millis(10));
    for (data, run, flag) in [("s3://b/d", "runs/r1/stage1", "--run"), ("file:///data/shards", "s3://b/r", "--data")] {
        let mut plan = train_plan(&s, "s3-train".into(), data, run);
        plan.stage_file = stage_file(tmp.path());
        let job = train_job(&plan, "r1", s3_orch::stage::Stage::Stage1, 1, 0, Some("tok"), tmp.path().join("logs"));
        let e = k.submit(&job).unwrap_err().to_string();
        assert!(e.contains(flag) && e.contains("s3:// URL"), "{e}");
        assert!(!tmp.path().join("applied.yaml").exists(), "nothing reached kubectl");
        assert!(k.render(&job).contains(&format!("# note: {flag} ")), "the dry run says it too");
    }
}

#[test]
fn submit_wait_and_cancel_speak_kubectl() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("kubectl");
    std::fs::write(&fake, FAKE_KUBECTL).unwrap();
    assert!(Command::new("chmod").arg("+x").arg(&fake).status().unwrap().success());
    let s = settings(Layer {
        ranks: Some(4),
        nodes: Some(2),
        image: Some("img".into()),
        namespace: Some("ci".into()),
        ..Default::default()
    });
    let k = K8s::new(&s).unwrap().with_kubectl(&fake).with_poll(Duration::from_millis(10));
    let mut plan = train_plan(&s, "s3-train".into(), "s3://b/d", "s3://b/r");
    plan.stage_file = stage_file(tmp.path());
    let job = train_job(&plan, "Run_1", s3_orch::stage::Stage::Stage1, 2, 0, Some("tok"), tmp.path().join("logs"));
    let labels = serde_json::json!({"s3/run": "Run_1", "s3/stage": "stage1", "s3/attempt": "2"});
    let running = serde_json::json!({"metadata": {"labels": labels}, "status": {"active": 2}});
    let complete = serde_json::json!({"metadata": {"labels": labels},
        "status": {"conditions": [{"type": "Complete", "status": "True"}]}});
    let pod = |i: usize, code: i32| {
        serde_json::json!({"metadata": {"name": format!("p{i}"), "creationTimestamp": "2025-01-01T00:00:00Z",
            "annotations": {"batch.kubernetes.io/job-completion-index": i.to_string()}},
            "status": {"containerStatuses": [{"name": "rank", "state": {"terminated": {"exitCode": code}}}]}})
    };
    std::fs::write(tmp.path().join("job.json"), complete.to_string()).unwrap();
    std::fs::write(tmp.path().join("pods.json"), serde_json::json!({"items": [pod(0, 0), pod(1, 75)]}).to_string())
        .unwrap();

    let sub = k.submit(&job).unwrap();
    let name = sub.ids[0].strip_prefix("ci/").unwrap().to_string();
    assert!(name.starts_with("run-1-stage1-a2-"), "{name}");
    let applied = std::fs::read_to_string(tmp.path().join("applied.yaml")).unwrap();
    assert!(k.render(&job).ends_with(&applied), "submit applies what the dry run shows");

    let end = k.wait(&job, &sub).unwrap();
    assert_eq!(end.exit_codes, [Some(0), Some(0), Some(75), Some(75)]);
    assert_eq!(end.failed_rank, None);
    assert_eq!(std::fs::read_to_string(tmp.path().join("logs/rank-3.log")).unwrap(), "log of p1\n");
    assert!(!k.is_running(&sub));
    std::fs::write(tmp.path().join("job.json"), running.to_string()).unwrap();
    assert!(k.is_running(&sub));

    k.cancel(&sub).unwrap();
    let calls = std::fs::read_to_string(tmp.path().join("calls")).unwrap();
    let selector = format!("s3/attempt=2,s3/run={},s3/stage=stage1", labels["s3/run"].as_str().unwrap());
    for want in [
        format!("get job {name} -n ci -o json"),
        format!("get pods -l {selector} -n ci -o json"),
        "logs p0 -n ci -c rank".to_string(),
        format!("delete service,secret,configmap -l {selector} -n ci --ignore-not-found"),
        format!("delete job,service,secret,configmap -l {selector} -n ci --ignore-not-found --wait=false"),
    ] {
        assert!(calls.lines().any(|l| l == want), "{want:?} in\n{calls}");
    }

    // A Job deleted under a waiting launcher ends the wait; nothing left to cancel.
    std::fs::write(tmp.path().join("gone"), "").unwrap();
    std::fs::write(tmp.path().join("pods.json"), r#"{"items": []}"#).unwrap();
    let end = k.wait(&job, &sub).unwrap();
    assert_eq!((end.exit_codes, end.failed_rank), (vec![None; 4], Some(0)));
    assert!(!k.is_running(&sub));
    k.cancel(&sub).unwrap();
}

/// The launcher retries a preempted attempt by itself: attempt 1 ends with one rank
/// preempted (75) and the other pod disrupted by Kubernetes (killed after its grace),
/// so attempt 2 is applied, resuming from the checkpoint; attempt 2's rank fails on
/// its own (exit 1), which is never retried, though retries are left.
#[test]
fn a_preempted_attempt_is_retried_by_the_launcher_and_a_real_failure_is_not() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("kubectl");
    std::fs::write(&fake, FAKE_KUBECTL).unwrap();
    assert!(Command::new("chmod").arg("+x").arg(&fake).status().unwrap().success());
    let server = s3_test_support::S3Server::start();
    let options =
        StoreOptions::endpoint_with_keys(&server.endpoint(), s3_test_support::ACCESS_KEY, s3_test_support::SECRET_KEY);
    // The launcher records the hash of the data's index.
    let index = server.object_path(&format!("data/{}", s3_shards::INDEX_KEY));
    std::fs::create_dir_all(index.parent().unwrap()).unwrap();
    std::fs::write(&index, "{}").unwrap();

    let s = settings(Layer {
        ranks: Some(2),
        nodes: Some(2),
        image: Some("img".into()),
        namespace: Some("ci".into()),
        max_retries: Some(3),
        ..Default::default()
    });
    let k = K8s::new(&s).unwrap().with_kubectl(&fake).with_poll(Duration::from_millis(10));
    let failed = serde_json::json!({"status": {"conditions": [{"type": "Failed", "status": "True",
        "reason": "PodFailurePolicy", "message": "a pod failed"}]}});
    std::fs::write(tmp.path().join("job.json"), failed.to_string()).unwrap();
    let pod = |i: usize, code: i32, disrupted: bool| {
        let conditions = if disrupted {
            serde_json::json!([{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}])
        } else {
            serde_json::json!([])
        };
        serde_json::json!({"metadata": {"name": format!("p{i}"), "creationTimestamp": "2025-01-01T00:00:00Z",
            "annotations": {"batch.kubernetes.io/job-completion-index": i.to_string()}},
            "status": {"phase": "Failed", "conditions": conditions,
                "containerStatuses": [{"name": "rank", "state": {"terminated": {"exitCode": code}}}]}})
    };
    let write_pods = |attempt: u32, pods: Vec<Value>| {
        let list = serde_json::json!({ "items": pods });
        std::fs::write(tmp.path().join(format!("pods-a{attempt}.json")), list.to_string()).unwrap();
    };
    write_pods(1, vec![pod(0, 75, false), pod(1, 137, true)]);
    write_pods(2, vec![pod(0, 143, false), pod(1, 1, false)]);

    let spec = StageLaunch {
        runs: server.url("runs"),
        run_id: "retry".into(),
        stage: Stage::Stage1,
        stage_file: stage_file(tmp.path()),
        data: server.url("data"),
        ranks: 2,
        nodes: 2,
        env: Default::default(),
        train_bin: "s3-train".into(),
        device: "cpu".into(),
        catalog: None,
        log_root: tmp.path().join("logs"),
        store_options: options,
        max_retries: s.max_retries(),
        benchmarks: None,
    };
    let said = std::cell::RefCell::new(Vec::new());
    let launched = launch_stage(&spec, &k, false, &|m: &str| said.borrow_mut().push(m.to_string())).unwrap();
    let Launched::Ran(record) = launched else { panic!("the launcher waits for a Kubernetes attempt") };
    let states: Vec<State> = record.attempts.iter().map(|a| a.state).collect();
    assert_eq!(states, [State::Preempted, State::Failed], "{record:?}");
    assert_eq!(record.state, State::Failed);
    assert_eq!(record.attempts[0].exit_codes, [Some(75), Some(75)], "the disrupted pod counts as preempted");
    assert!(
        record.attempts[1].error.as_deref().unwrap_or_default().contains("rank 1 exited with code 1"),
        "{record:?}"
    );
    let calls = std::fs::read_to_string(tmp.path().join("calls")).unwrap();
    assert_eq!(calls.lines().filter(|l| *l == "apply -f -").count(), 2, "two attempts applied:\n{calls}");
    let said = said.into_inner();
    assert!(
        said.iter()
            .any(|m| m.contains("stage1 attempt 1 was preempted; attempt 2 resumes") && m.contains("retry 1 of 3")),
        "{said:?}"
    );
}

/// A dry run previews on a laptop: with the run folder's store unreachable, or with
/// no credentials at all (then nothing is asked, not even the cloud's metadata
/// address), it renders the manifests and says that the ledger was not read.
#[test]
fn a_dry_run_needs_neither_the_store_nor_credentials() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("stages")).unwrap();
    std::fs::write(tmp.path().join("stages/stage1.toml"), stage_toml("stage1")).unwrap();
    for (with_keys, said) in [(false, "no store credentials"), (true, "was not read (")] {
        let mut c = Command::new(env!("CARGO_BIN_EXE_s3-orch"));
        c.current_dir(tmp.path())
            .args(["launch", "stage1", "--backend", "k8s", "--image", "img", "--run", "r", "--stages", "stages"])
            .args(["--runs", "s3://bucket/runs", "--data", "s3://bucket/data", "--dry-run"]);
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("AWS_")) {
            c.env_remove(k);
        }
        if with_keys {
            // Nothing listens on port 9 of this machine.
            c.env("AWS_ENDPOINT", "http://127.0.0.1:9").env("AWS_ALLOW_HTTP", "true");
            c.env("AWS_ACCESS_KEY_ID", "k").env("AWS_SECRET_ACCESS_KEY", "s");
        }
        let o = c.output().unwrap();
        let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "{out}{err}");
        assert!(out.contains("kind: \"Job\"") || out.contains("kind: Job"), "the manifests: {out}");
        assert!(err.contains(said) && err.contains("assuming a new run, attempt 1"), "{err}");
    }
}
