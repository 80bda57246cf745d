//! The Kubernetes backend (DESIGN §10): per attempt an Indexed Job whose completion
//! index is the pod's place in the job, a headless Service so the ranks find rank 0's
//! pod (`<job>-0.<job>.<namespace>.svc.cluster.local`, in that pod's own /etc/hosts
//! from its first instant), and a Secret with the job token; with
//! `k8s_kind = "jobset"` a JobSet instead of the Job and Service, for clusters that
//! run its controller. Ingest is an Indexed Job of N workers
//! (`--worker $(JOB_COMPLETION_INDEX)/N`), and the merge a second Job that the
//! launcher submits once every worker succeeded.
//!
//! Only the core API and `kubectl` are needed: `submit` is `kubectl apply -f -`,
//! `wait` polls the Job and its pods and keeps each pod's log as `rank-R.log`,
//! `cancel` deletes the attempt's objects by their `s3/run`, `s3/stage`, `s3/attempt`
//! labels (the pods get SIGTERM and the grace period to checkpoint; their exit codes
//! go with them, so the waiting launcher records the attempt as failed, and the next
//! launch resumes it). Credentials are never in a manifest: the pods take the
//! profile's `secret` with `envFrom`.
//!
//! Chaining: `s3-orch launch pipeline --backend k8s` stays running where it was
//! started and submits each step when the one before it succeeded (stage 2 after its
//! gate verified stage 1's checkpoint), as the local backend does. No driver Job,
//! ServiceAccount or Role in the cluster: the ledger and the gate stay in one place,
//! and a launcher that died is restarted with the same command (a succeeded stage is
//! skipped, a running one refused until it ends).
//!
//! The stage file and catalogue as they are on this machine go with each attempt in
//! a ConfigMap mounted at `/etc/s3-orch/files`; the pods reach the shards and run
//! folders through the object store: give `--runs`, `--data` and `--out` as `s3://`
//! URLs. `restartPolicy: Never` and `backoffLimit: 0`: one failed
//! pod fails the attempt (a lone restarted rank could not rejoin the collective), and
//! the next launch resumes it from the last checkpoint.
//!
//! Files: `manifest.rs` (the objects), `container.rs` (a Job's ranks → one pod
//! template), `ranks.sh` (several ranks per pod), `../files.rs` (what the ConfigMap carries),
//! `names.rs`, `resources.rs`, `placement.rs`, `yaml.rs` (the emitter), `kubectl.rs`
//! and `status.rs` (reading what it prints).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::backend::{Backend, JobEnd, Submission};
use crate::error::{OrchError, Result};
use crate::plan::Job;
use crate::settings::Settings;

pub mod container;
pub mod gang;
pub mod kubectl;
pub mod manifest;
pub mod names;
pub mod network;
pub mod placement;
pub mod resources;
pub mod status;
pub mod volumes;
pub mod yaml;

use kubectl::{Got, Kubectl};
use manifest::{Identity, kind_of};
use status::Phase;

/// The object each training attempt becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An Indexed Job and a headless Service (core API, any cluster).
    Job,
    /// A JobSet (`jobset.x-k8s.io/v1alpha2`; its controller must be installed).
    JobSet,
}

impl Kind {
    /// The resource name kubectl knows it by.
    fn resource(self) -> &'static str {
        match self {
            Kind::Job => "job",
            Kind::JobSet => "jobset",
        }
    }

    /// What `cancel` deletes: the object and everything of the attempt beside it.
    fn with_companions(self) -> &'static str {
        match self {
            Kind::Job => "job,service,secret,configmap",
            Kind::JobSet => "jobset,secret,configmap",
        }
    }
}

/// Consecutive failed polls `wait` rides out (an API server restart) before giving up.
const POLL_ERRORS: u32 = 10;

/// The Kubernetes backend, set up from the launch settings.
#[derive(Clone, Debug)]
pub struct K8s {
    kind: Kind,
    namespace: String,
    image: Option<String>,
    ingest_image: Option<String>,
    secret: Option<String>,
    gpus_per_node: Option<u32>,
    cpus_per_rank: Option<u32>,
    mem_per_rank: Option<resources::Quantity>,
    deadline: Option<u64>,
    grace: u64,
    node_selector: Map<String, Value>,
    tolerations: Vec<Value>,
    gang: gang::Gang,
    volumes: Vec<volumes::Volume>,
    network: network::Network,
    kubectl: Kubectl,
    poll: Duration,
}

impl K8s {
    /// The backend for `settings`: image, namespace (default `default`), secret,
    /// resources, time limit and object kind, checked here.
    pub fn new(settings: &Settings) -> Result<K8s> {
        let v = &settings.values;
        let kind = match v.k8s_kind.as_deref() {
            None | Some("job") => Kind::Job,
            Some("jobset") => Kind::JobSet,
            Some(other) => {
                return Err(OrchError::Setting {
                    name: "k8s_kind",
                    value: other.to_string(),
                    expected: "job or jobset".into(),
                });
            }
        };
        if settings.device().starts_with("cuda")
            && let Some(g) = v.gpus_per_node
            && settings.ranks_per_node()? > g as usize
        {
            return Err(OrchError::Gpus { ranks_per_pod: settings.ranks_per_node()?, gpus_per_node: g as usize });
        }
        K8s {
            kind,
            namespace: v.namespace.clone().unwrap_or_else(|| "default".into()),
            image: v.image.clone(),
            ingest_image: None,
            secret: v.secret.clone(),
            gpus_per_node: v.gpus_per_node,
            cpus_per_rank: v.cpus_per_rank,
            mem_per_rank: v.mem_per_rank.as_deref().map(resources::Quantity::parse).transpose()?,
            deadline: v.time_limit.as_deref().map(resources::seconds).transpose()?,
            grace: settings.grace_seconds(),
            node_selector: Map::new(),
            tolerations: Vec::new(),
            gang: gang::Gang::parse(v.k8s_gang.as_deref(), v.k8s_queue.as_deref())?,
            volumes: v.k8s_volumes.as_deref().map(volumes::parse).transpose()?.unwrap_or_default(),
            network: network::Network::new(v.host_network.unwrap_or(false), v.rdma_resource.as_deref())?,
            kubectl: Kubectl::new("kubectl"),
            poll: Duration::from_secs(10),
        }
        .with_ingest_image(v.ingest_image.as_deref())
        .with_placement(v.node_selector.as_deref(), v.tolerations.as_deref())
    }

    /// This backend placing the pods with `node_selector` (`key=value,...`) and
    /// `tolerations` (`key[=value][:effect],...`), the settings of those names.
    pub fn with_placement(mut self, node_selector: Option<&str>, tolerations: Option<&str>) -> Result<K8s> {
        self.node_selector = node_selector.map(placement::node_selector).transpose()?.unwrap_or_default();
        self.tolerations = tolerations.map(placement::tolerations).transpose()?.unwrap_or_default();
        Ok(self)
    }

    /// This backend running the ingest workers and the merge in `image` (the
    /// project's images are two: `sam3d-ingest` holds s3-ingest, `sam3d-trainer`
    /// s3-train); None: the one image of every pod.
    pub fn with_ingest_image(mut self, image: Option<&str>) -> K8s {
        self.ingest_image = image.map(str::to_string);
        self
    }

    /// This backend running `program` for kubectl (tests use a stand-in).
    pub fn with_kubectl(mut self, program: impl Into<PathBuf>) -> K8s {
        self.kubectl = Kubectl::new(program);
        self
    }

    /// This backend polling every `every` while it waits.
    pub fn with_poll(mut self, every: Duration) -> K8s {
        self.poll = every;
        self
    }

    /// The attempt's objects as JSON values, in the order `submit` applies them.
    pub fn manifests(&self, job: &Job) -> Result<Vec<Value>> {
        manifest::manifests(self, job)
    }

    fn submission_id(&self, job: &Job) -> String {
        let name = Identity::of(job).name;
        match kind_of(self, job) {
            Kind::Job => format!("{}/{name}", self.namespace),
            Kind::JobSet => format!("{}/jobset/{name}", self.namespace),
        }
    }

    /// Saves each pod's log as `rank-R.log` of its ranks (a pod of several ranks
    /// holds all of theirs), so `s3-orch logs` reads them like the local backend's.
    fn save_logs(&self, job: &Job, pods: &[status::PodState], ranks_per_pod: usize, namespace: &str) {
        if let Err(e) = std::fs::create_dir_all(&job.log_dir) {
            tracing::warn!("cannot keep the pod logs in {}: {e}", job.log_dir.display());
            return;
        }
        for p in pods {
            match self.kubectl.run(&["logs", &p.name, "-n", namespace, "-c", container::CONTAINER], None) {
                Ok(text) => {
                    for r in p.index * ranks_per_pod..(p.index + 1) * ranks_per_pod {
                        let file = job.log_dir.join(format!("rank-{r}.log"));
                        if let Err(e) = std::fs::write(&file, &text) {
                            tracing::warn!("{}: {e}", file.display());
                        }
                    }
                }
                Err(e) => tracing::warn!("no log of pod {}: {e}", p.name),
            }
        }
    }
}

/// `(namespace, kind, name)` of a submission id (`ns/name` or `ns/jobset/name`).
/// `kinds` for `kubectl delete`, with Volcano's PodGroups when the attempt has one.
fn with_pod_group(kinds: &str, pod_group: bool) -> String {
    if pod_group { format!("{kinds},{}", gang::PODGROUP_RESOURCE) } else { kinds.to_string() }
}

fn parse_id(id: &str) -> Result<(&str, Kind, &str)> {
    match id.split('/').collect::<Vec<_>>().as_slice() {
        [ns, name] => Ok((ns, Kind::Job, name)),
        [ns, "jobset", name] => Ok((ns, Kind::JobSet, name)),
        _ => Err(OrchError::K8sJobId { id: id.to_string() }),
    }
}

/// The store arguments of a job's ranks that name this machine's disk (a path, or a
/// `file://` URL): the pods reach only their image and the network, so the data
/// would be missing and the checkpoints would land in a pod's ephemeral storage.
fn local_stores(job: &Job) -> Vec<(String, String)> {
    let args = job.ranks.first().map(|r| r.args.as_slice()).unwrap_or_default();
    args.windows(2)
        .filter(|w| ["--data", "--run", "--out", "--init"].contains(&w[0].as_str()))
        .filter(|w| (!w[1].contains("://") || w[1].starts_with("file://")) && !w[1].starts_with('<'))
        .map(|w| (w[0].clone(), w[1].clone()))
        .collect()
}

/// Comment lines on what the pods will not find (a dry run shows them; a submit
/// refuses them).
fn notes(job: &Job) -> String {
    local_stores(job)
        .into_iter()
        .map(|(flag, path)| {
            format!(
                "# note: {flag} {path} is a path on this machine; the pods reach only the image and the network (use an s3:// URL)\n"
            )
        })
        .collect()
}

impl Backend for K8s {
    fn name(&self) -> &'static str {
        "k8s"
    }

    fn render(&self, job: &Job) -> String {
        let kind = kind_of(self, job);
        let head = format!(
            "# {} attempt {}: Kubernetes {} in namespace {}, submitted with `kubectl apply -f -`\n{}",
            job.kind,
            job.attempt,
            match kind {
                Kind::Job => "Indexed Job",
                Kind::JobSet => "JobSet",
            },
            self.namespace,
            notes(job)
        );
        match self.manifests(job) {
            Ok(docs) => format!("{head}{}", yaml::documents(&docs)),
            Err(e) => format!("{head}# cannot render the manifests: {e}\n"),
        }
    }

    fn submit(&self, job: &Job) -> Result<Submission> {
        if let Some((flag, path)) = local_stores(job).into_iter().next() {
            return Err(OrchError::UnreachableFromPods { flag, path });
        }
        let docs = self.manifests(job)?;
        if let Err(e) = self.kubectl.run(&["apply", "-f", "-"], Some(&yaml::documents(&docs))) {
            // Half an attempt (a Service without its Job) would only confuse the next.
            let volcano = matches!(self.gang, gang::Gang::Volcano { .. });
            let kinds = with_pod_group(kind_of(self, job).with_companions(), volcano);
            let selector = Identity::of(job).selector();
            let _ = self
                .kubectl
                .run(&["delete", &kinds, "-l", &selector, "-n", &self.namespace, "--ignore-not-found"], None);
            return Err(e);
        }
        Ok(Submission { ids: vec![self.submission_id(job)] })
    }

    fn wait(&self, job: &Job, submission: &Submission) -> Result<JobEnd> {
        let id = submission.ids.first().map(String::as_str).unwrap_or_default();
        let (namespace, kind, name) = parse_id(id)?;
        let cmd = container::pod_command(job, ("", container::MASTER_PORT), "")?;
        let selector = Identity::of(job).selector();
        let (mut errors, mut seen, mut told) = (0, Vec::new(), std::collections::BTreeMap::new());
        let phase = loop {
            let polled = self.kubectl.get(kind.resource(), name, namespace).and_then(|got| {
                let pods = status::pods(&self.kubectl.pods(&selector, namespace)?);
                Ok((got, pods))
            });
            let (got, pods) = match polled {
                Ok(p) => {
                    errors = 0;
                    p
                }
                Err(e)
                    if errors < POLL_ERRORS
                        && !matches!(&e, OrchError::Process { source, .. } if source.kind() == std::io::ErrorKind::NotFound) =>
                {
                    errors += 1;
                    tracing::warn!("polling {id} ({errors}/{POLL_ERRORS}): {e}");
                    std::thread::sleep(self.poll);
                    continue;
                }
                Err(e) => return Err(e),
            };
            for p in &pods {
                // A pod that cannot start (no image, no secret) waits forever: say why, once.
                if p.waiting.is_some() && told.get(&p.index) != Some(&p.waiting) {
                    tracing::warn!("{id}: pod {} is waiting: {}", p.name, p.waiting.as_deref().unwrap_or_default());
                    told.insert(p.index, p.waiting.clone());
                }
            }
            // Pods vanish with their Job: keep what was seen of each.
            for p in pods {
                seen.retain(|s: &status::PodState| s.index != p.index);
                seen.push(p);
            }
            match got {
                Got::NotFound => break Phase::Failed(format!("{id} was deleted (cancelled?)")),
                Got::Found(obj) => match status::phase(kind, &obj) {
                    Phase::Running => std::thread::sleep(self.poll),
                    ended => break ended,
                },
            }
        };
        if let Phase::Failed(why) = &phase {
            tracing::warn!("{id} failed: {why}");
        }
        self.save_logs(job, &seen, cmd.ranks_per_pod, namespace);
        // The rendezvous, token and files are of no use once the attempt ended; the
        // Job stays (its status and pods' logs) until the user deletes it.
        let companions = with_pod_group(
            if kind == Kind::Job { "service,secret,configmap" } else { "secret,configmap" },
            matches!(self.gang, gang::Gang::Volcano { .. }) && cmd.collective,
        );
        if let Err(e) =
            self.kubectl.run(&["delete", &companions, "-l", &selector, "-n", namespace, "--ignore-not-found"], None)
        {
            tracing::warn!("{id}: cleaning up: {e}");
        }
        let end = status::job_end(&seen, cmd.pods, cmd.ranks_per_pod);
        if phase == Phase::Complete && end.failed_rank.is_some() {
            // The Job says every pod succeeded; pods not seen to end did.
            return Ok(JobEnd {
                exit_codes: end.exit_codes.iter().map(|c| c.or(Some(0))).collect(),
                failed_rank: None,
            });
        }
        Ok(end)
    }

    fn cancel(&self, submission: &Submission) -> Result<()> {
        for id in &submission.ids {
            let (namespace, kind, name) = parse_id(id)?;
            let Got::Found(obj) = self.kubectl.get(kind.resource(), name, namespace)? else { continue };
            let selector = status::labels(&obj)
                .iter()
                .filter(|(k, _)| ["s3/run", "s3/stage", "s3/attempt"].contains(&k.as_str()))
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",");
            if selector.matches('=').count() != 3 {
                return Err(OrchError::Unlabelled { id: id.clone() });
            }
            // The pods get SIGTERM and terminationGracePeriodSeconds to checkpoint;
            // a Volcano PodGroup goes with them (the cluster's copy names it).
            let kinds = with_pod_group(kind.with_companions(), gang::pod_group_of(&obj).is_some());
            self.kubectl.run(
                &["delete", &kinds, "-l", &selector, "-n", namespace, "--ignore-not-found", "--wait=false"],
                None,
            )?;
        }
        Ok(())
    }

    fn is_running(&self, submission: &Submission) -> bool {
        submission.ids.iter().any(|id| {
            let Ok((namespace, kind, name)) = parse_id(id) else { return false };
            match self.kubectl.get(kind.resource(), name, namespace) {
                Ok(Got::Found(obj)) => status::phase(kind, &obj) == Phase::Running,
                Ok(Got::NotFound) => false,
                Err(e) => {
                    // Unknown is not "gone": a second attempt must not start beside it.
                    tracing::warn!("cannot tell whether {id} runs: {e}");
                    true
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{Layer, Origin};

    fn settings(layer: Layer) -> Settings {
        Settings::resolve(vec![(Origin::Flag, layer)])
    }

    #[test]
    fn settings_are_checked_up_front() {
        let bad = |l: Layer, want: &str| {
            let e = K8s::new(&settings(l)).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        };
        bad(Layer { k8s_kind: Some("deployment".into()), ..Default::default() }, "job or jobset");
        bad(Layer { mem_per_rank: Some("64GB".into()), ..Default::default() }, "mem_per_rank");
        bad(Layer { time_limit: Some("soon".into()), ..Default::default() }, "time_limit");
        bad(Layer { tolerations: Some("gpu:Never".into()), ..Default::default() }, "tolerations");
        let gpus = Layer {
            device: Some("cuda".into()),
            ranks: Some(8),
            nodes: Some(1),
            gpus_per_node: Some(4),
            ..Default::default()
        };
        bad(gpus, "8 ranks per pod but gpus_per_node = 4");
        let k = K8s::new(&Settings::default()).unwrap();
        assert_eq!((k.kind, k.namespace.as_str(), k.grace), (Kind::Job, "default", 300));
    }

    #[test]
    fn pods_go_where_the_placement_says() {
        let s = settings(Layer { image: Some("img".into()), ..Default::default() });
        let k = K8s::new(&s).unwrap().with_placement(Some("pool=gpu"), Some("nvidia.com/gpu:NoSchedule")).unwrap();
        let job = crate::plan::merge_job(
            &crate::plan::IngestPlan {
                ingest_bin: "s3-ingest".into(),
                manifest: "m.toml".into(),
                out: "s3://b/o".into(),
                workers: 2,
                jobs: 1,
                extra_args: vec![],
                env: Default::default(),
            },
            "r",
            1,
            "l".into(),
        );
        let docs = k.clone().with_ingest_image(Some("ingest-img")).manifests(&job).unwrap();
        let pod = &docs[0]["spec"]["template"]["spec"];
        assert_eq!(pod["containers"][0]["image"], "ingest-img", "the merge runs s3-ingest");
        assert_eq!(k.manifests(&job).unwrap()[0]["spec"]["template"]["spec"]["containers"][0]["image"], "img");
        assert_eq!(pod["nodeSelector"], serde_json::json!({"pool": "gpu"}));
        assert_eq!(pod["tolerations"][0]["effect"], "NoSchedule");
        let plain = K8s::new(&s).unwrap().manifests(&job).unwrap();
        assert!(plain[0]["spec"]["template"]["spec"].get("nodeSelector").is_none());
        assert!(K8s::new(&s).unwrap().with_placement(None, Some("x:Never")).is_err());
    }

    #[test]
    fn submission_ids_round_trip() {
        assert_eq!(parse_id("ns/r-stage1-a1").unwrap(), ("ns", Kind::Job, "r-stage1-a1"));
        assert_eq!(parse_id("ns/jobset/r-stage1-a1").unwrap(), ("ns", Kind::JobSet, "r-stage1-a1"));
        assert!(parse_id("12345").is_err());
    }
}
