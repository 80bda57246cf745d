//! A real one-node Slurm cluster for tests: `munged`, `slurmctld` and `slurmd` from
//! Debian's `slurm-wlm` and `munge`, started as root from a generated `slurm.conf`
//! in a temporary directory (own ports, own munge socket and key, no systemd, no
//! accounting database), stopped by pid when dropped. Clients find it through
//! `SLURM_CONF` ([`SlurmCluster::env`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A running one-node cluster with one partition that oversubscribes its CPUs, so
/// that a few CPU ranks and jobs fit on a 2-core machine at once.
pub struct SlurmCluster {
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn require(bin: &str) {
    let found = std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        || Path::new("/usr/sbin").join(bin).is_file();
    assert!(
        found,
        "{bin} not found: the Slurm tests need Debian's slurm-wlm and munge \
         (`apt-get install -y --no-install-recommends slurm-wlm munge`; tests/run installs them as root)"
    );
}

fn sbin(name: &str) -> PathBuf {
    let p = Path::new("/usr/sbin").join(name);
    if p.exists() { p } else { PathBuf::from(name) }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

impl SlurmCluster {
    /// Starts the daemons and waits until the node is idle.
    pub fn start() -> SlurmCluster {
        SlurmCluster::start_hiding(&[])
    }

    /// A cluster whose jobs cannot see `hide` (each folder covered by an empty
    /// tmpfs in slurmd's own mount namespace, which its job steps inherit): what
    /// the launcher keeps there is on a machine the nodes do not share.
    pub fn start_hiding(hide: &[&Path]) -> SlurmCluster {
        for b in ["munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol"] {
            require(b);
        }
        let dir = tempfile::Builder::new().prefix("slurm-").tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let d = d.as_path();
        for sub in ["state", "spool", "log"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let mut key = vec![0u8; 1024];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut key).unwrap();
        std::fs::write(d.join("munge.key"), key).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.join("munge.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let p = |name: &str| d.join(name).display().to_string();
        run(Command::new(sbin("munged")).args([
            "--force",
            &format!("--socket={}", p("munge.sock")),
            &format!("--key-file={}", p("munge.key")),
            &format!("--log-file={}", p("log/munged.log")),
            &format!("--pid-file={}", p("munged.pid")),
            &format!("--seed-file={}", p("munge.seed")),
        ]));
        let host = String::from_utf8(Command::new("hostname").arg("-s").output().unwrap().stdout).unwrap();
        let host = host.trim();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mem_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .map_or(2048, |kib| kib / 1024 - 512);
        let ctld_port = free_port();
        let conf = format!(
            "ClusterName=s3test\nSlurmctldHost={host}(127.0.0.1)\nSlurmctldPort={ctld}\nSlurmdPort={slurmd}\n\
             AuthType=auth/munge\nAuthInfo=socket={sock}\nCredType=cred/munge\nSlurmUser=root\nSlurmdUser=root\n\
             StateSaveLocation={state}\nSlurmdSpoolDir={spool}\nSlurmctldPidFile={ctld_pid}\nSlurmdPidFile={d_pid}\n\
             SlurmctldLogFile={ctld_log}\nSlurmdLogFile={d_log}\nProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n\
             SelectType=select/cons_tres\nSelectTypeParameters=CR_Core\nSchedulerType=sched/backfill\nReturnToService=2\n\
             MpiDefault=none\nJobAcctGatherType=jobacct_gather/none\nAccountingStorageType=accounting_storage/none\n\
             MinJobAge=3600\nKillWait=30\nSchedulerParameters=sched_interval=2\nFirstJobId={first_job}\n\
             NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mib} State=UNKNOWN\n\
             PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8\n",
            ctld = ctld_port,
            // Job ids distinct from other test clusters on this host: jobs derive
            // their rendezvous port from the id.
            first_job = u32::from(ctld_port) * 10,
            slurmd = free_port(),
            sock = p("munge.sock"),
            state = p("state"),
            spool = p("spool"),
            ctld_pid = p("slurmctld.pid"),
            d_pid = p("slurmd.pid"),
            ctld_log = p("log/slurmctld.log"),
            d_log = p("log/slurmd.log"),
        );
        std::fs::write(d.join("slurm.conf"), conf).unwrap();
        let cluster = SlurmCluster { dir };
        run(Command::new(sbin("slurmctld")).args(["-f", &p("slurm.conf")]).envs(cluster.env()));
        if hide.is_empty() {
            run(Command::new(sbin("slurmd")).args(["-f", &p("slurm.conf")]).envs(cluster.env()));
        } else {
            require("unshare");
            let script =
                "for d in \"$@\"; do mount -t tmpfs s3-hidden \"$d\" || exit 1; done; exec \"$SLURMD\" -f \"$CONF\"";
            run(Command::new("unshare")
                .args(["--mount", "--propagation", "private", "sh", "-c", script, "sh"])
                .args(hide)
                .env("SLURMD", sbin("slurmd"))
                .env("CONF", p("slurm.conf"))
                .envs(cluster.env()));
        }
        let start = Instant::now();
        loop {
            let out = Command::new("sinfo").args(["-h", "-o", "%T"]).envs(cluster.env()).output().unwrap();
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if state == "idle" {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "the Slurm node did not become idle (sinfo: {state:?}); logs in {}",
                cluster.dir.path().join("log").display()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        cluster
    }

    /// What a client process needs to reach the cluster.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![("SLURM_CONF", self.dir.path().join("slurm.conf").display().to_string())]
    }

    /// The daemons' logs (for failure messages).
    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    /// A Slurm client command aimed at this cluster.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.envs(self.env());
        c
    }
}

impl Drop for SlurmCluster {
    fn drop(&mut self) {
        let _ = self.command("scancel").args(["--user=root", "--full"]).output();
        for pid_file in ["slurmd.pid", "slurmctld.pid", "munged.pid"] {
            let Ok(pid) = std::fs::read_to_string(self.dir.path().join(pid_file)) else { continue };
            let pid = pid.trim().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).stderr(std::process::Stdio::null()).status();
            for _ in 0..50 {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
            }
        }
    }
}
