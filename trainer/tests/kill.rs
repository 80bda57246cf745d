//! Training ranks as processes: `kill -9` between two checkpoints, then the same
//! command again (the samples trained after the resume are exactly the rest of the
//! sequence an uninterrupted run trains, and the final weights are the same);
//! SIGTERM during a step and at the rendezvous; and two ranks on two "hosts"
//! (network namespaces joined by a veth pair) whose names resolve to 127.0.1.1.

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

/// A store of `cases` phantom samples under `dir/data`, with `rows` per row group.
fn phantom_store(dir: &Path, cases: usize, rows: Option<usize>) -> std::path::PathBuf {
    let data = dir.join("data");
    let loc = open_store(data.to_str().unwrap(), &StoreOptions::default()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let opts =
        WriterOptions { row_group_rows: rows.unwrap_or(WriterOptions::default().row_group_rows), ..Default::default() };
    rt.block_on(synthetic::populate(loc.store(), 1, cases, 1, opts)).unwrap();
    data
}

/// The weights digest a rank prints at its end.
fn digest(stdout: &[u8]) -> Option<String> {
    String::from_utf8_lossy(stdout).split("weights xxh3 ").nth(1).map(|s| s.trim().to_string())
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
    let data = phantom_store(dir.path(), 16, Some(2));
    let stage = dir.path().join("stage.toml");
    std::fs::write(&stage, STAGE).unwrap();

    let (full_run, full_log) = (dir.path().join("full"), dir.path().join("full.log"));
    let out = train_cmd(&stage, &data, &full_run, &full_log).stdout(Stdio::piped()).output().unwrap();
    assert!(out.status.success());
    let full = steps(&full_log);
    assert!(full.len() >= 12, "{} steps", full.len());
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
    let data = phantom_store(dir.path(), 12, Some(2));
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
    assert_eq!(digest(&out.stdout), digest(&full.stdout));
}

#[test]
fn sigterm_or_sigint_before_the_first_step_exits_75_at_once_having_written_nothing_half() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let data = phantom_store(dir.path(), 4, None);
    let stage = dir.path().join("stage.toml");
    std::fs::write(&stage, STAGE).unwrap();
    for (signal, rank) in [("-TERM", "1"), ("-INT", "0")] {
        // A rank of 2 whose peer never comes: it waits for its 600 s rendezvous
        // timeout unless the signal ends the wait (`timeout`, `scancel`, a pod's
        // termination, Ctrl-C). Rank 0 has written config.json by then.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let (run, log) = (dir.path().join(format!("run{rank}")), dir.path().join("samples.log"));
        let mut child = train_cmd(&stage, &data, &run, &log)
            .args(["--rank", rank, "--world", "2", "--master", &format!("127.0.0.1:{port}")])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The rank says how many samples it trains on just before it meets its peer.
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let said: Vec<String> =
            lines.by_ref().map_while(Result::ok).take_while(|l| !l.contains("training samples")).collect();
        assert!(child.try_wait().unwrap().is_none(), "the rank ended before the rendezvous: {said:?}");
        std::thread::sleep(Duration::from_millis(300));
        assert!(Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap().success());
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                panic!("kill {signal}: the rank kept waiting at the rendezvous");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(status.code(), Some(75), "kill {signal}: stopped, to be requeued");
        assert!(!run.join("checkpoints").exists(), "nothing trained, nothing checkpointed");
        let files: Vec<String> = walk(&run);
        assert!(files.iter().all(|f| !f.contains('#')), "no half-written staging file: {files:?}");
        if rank == "0" {
            assert!(files.iter().any(|f| f.ends_with("config.json")), "rank 0's config.json is whole: {files:?}");
        }
    }
}

/// Every file under `dir`, as paths.
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

/// Two network namespaces joined by a veth pair, each with a hosts file in which its
/// own name is 127.0.1.1 (Debian's entry for the hostname) and the other's is its
/// veth address: two hosts as a cluster has them. Deleted on drop.
struct TwoHosts {
    ns: [String; 2],
}

impl TwoHosts {
    /// `None` (said) where namespaces cannot be made (not root, no `ip`), unless
    /// `S3_REQUIRE_NETNS=1` (CI) makes that a failure.
    fn create() -> Option<TwoHosts> {
        let id = std::process::id();
        let ns = [format!("s3a-{id}"), format!("s3b-{id}")];
        let net = format!("10.231.{}", id % 250);
        let ip = |args: &[&str]| Command::new("ip").args(args).status().is_ok_and(|s| s.success());
        if !ip(&["netns", "add", &ns[0]]) {
            assert!(std::env::var("S3_REQUIRE_NETNS").is_err(), "S3_REQUIRE_NETNS is set but `ip netns add` failed");
            eprintln!("skipped: cannot create network namespaces here (needs root and iproute2)");
            return None;
        }
        let hosts = TwoHosts { ns };
        let [a, b] = &hosts.ns;
        let (va, vb) = (format!("s3va{}", id % 100_000), format!("s3vb{}", id % 100_000));
        let steps: Vec<Vec<String>> = vec![
            vec!["netns".into(), "add".into(), b.clone()],
            vec![
                "link".into(),
                "add".into(),
                va.clone(),
                "type".into(),
                "veth".into(),
                "peer".into(),
                "name".into(),
                vb.clone(),
            ],
            vec!["link".into(), "set".into(), va.clone(), "netns".into(), a.clone()],
            vec!["link".into(), "set".into(), vb.clone(), "netns".into(), b.clone()],
            vec!["-n".into(), a.clone(), "addr".into(), "add".into(), format!("{net}.1/24"), "dev".into(), va.clone()],
            vec!["-n".into(), b.clone(), "addr".into(), "add".into(), format!("{net}.2/24"), "dev".into(), vb.clone()],
            vec!["-n".into(), a.clone(), "link".into(), "set".into(), va, "up".into()],
            vec!["-n".into(), b.clone(), "link".into(), "set".into(), vb, "up".into()],
            vec!["-n".into(), a.clone(), "link".into(), "set".into(), "lo".into(), "up".into()],
            vec!["-n".into(), b.clone(), "link".into(), "set".into(), "lo".into(), "up".into()],
        ];
        for step in steps {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            assert!(ip(&args), "ip {}", args.join(" "));
        }
        for (me, (own, peer, peer_ip)) in [(a, ("s3host-a", "s3host-b", 2)), (b, ("s3host-b", "s3host-a", 1))] {
            let dir = Path::new("/etc/netns").join(me);
            std::fs::create_dir_all(&dir).unwrap();
            let text = format!("127.0.0.1 localhost\n127.0.1.1 {own}\n{net}.{peer_ip} {peer}\n");
            std::fs::write(dir.join("hosts"), text).unwrap();
        }
        Some(hosts)
    }

    /// `cmd`'s program, arguments and environment run inside host `i`'s namespace
    /// (its standard streams are the caller's to set).
    fn on(&self, i: usize, cmd: &Command) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns[i]]).arg(cmd.get_program()).args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        for ns in &self.ns {
            // Deleting a namespace deletes the veth end in it (and so the pair).
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(ns));
        }
    }
}

#[test]
fn two_ranks_on_two_hosts_whose_names_resolve_to_127_0_1_1_train_both_stages() {
    let Some(hosts) = TwoHosts::create() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = phantom_store(dir.path(), 4, None);
    let stage = dir.path().join("stage.toml");
    std::fs::write(&stage, STAGE).unwrap();
    // The launcher's view: MASTER_ADDR is rank 0's host name, which on that host
    // itself resolves to 127.0.1.1. Both ranks get the same extra arguments.
    let both = |run: &Path, extra: &[&str]| {
        let rank = |r: usize| {
            let mut c = train_cmd(&stage, &data, run, &dir.path().join(format!("rank-{r}.log")));
            c.args(extra)
                .env("RANK", r.to_string())
                .env("WORLD_SIZE", "2")
                .env("MASTER_ADDR", "s3host-a")
                .env("MASTER_PORT", "29517")
                .env("S3_JOB_TOKEN", "two-hosts");
            hosts.on(r, &c).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
        };
        let (r0, r1) = (rank(0), rank(1));
        let (o1, o0) = (r1.wait_with_output().unwrap(), r0.wait_with_output().unwrap());
        (o0, o1)
    };
    let text = |o: &std::process::Output| {
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    };

    let stage1 = dir.path().join("stage1");
    let (o0, o1) = both(&stage1, &[]);
    assert!(o0.status.success() && o1.status.success(), "rank 0:\n{}\nrank 1:\n{}", text(&o0), text(&o1));
    assert!(digest(&o0.stdout).is_some());
    assert_eq!(digest(&o0.stdout), digest(&o1.stdout), "one model on both hosts");
    assert!(String::from_utf8_lossy(&o0.stdout).contains("rank 0/2"));

    // Stage 2 from stage 1's final weights, each host checking the hash the launcher
    // verified against the copy it read: a wrong hash stops both, the right one trains.
    let latest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(stage1.join("checkpoints/latest.json")).unwrap()).unwrap();
    let weights = stage1.join(latest["dir"].as_str().unwrap()).join("weights.safetensors");
    let xxh3 = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&std::fs::read(&weights).unwrap()));
    let init = weights.display().to_string();
    let (w0, w1) = both(&dir.path().join("stage2-wrong"), &["--init", &init, "--init-xxh3", "0000000000000001"]);
    for o in [&w0, &w1] {
        assert!(!o.status.success() && text(o).contains("not starting from a changed checkpoint"), "{}", text(o));
    }
    let (s0, s1) = both(&dir.path().join("stage2"), &["--init", &init, "--init-xxh3", &xxh3]);
    assert!(s0.status.success() && s1.status.success(), "rank 0:\n{}\nrank 1:\n{}", text(&s0), text(&s1));
    assert_eq!(digest(&s0.stdout), digest(&s1.stdout), "stage 2: one model on both hosts");
    assert_ne!(digest(&s0.stdout), digest(&o0.stdout), "stage 2 trained on from stage 1");
}
