//! The objects of one attempt: a Secret with the job token, a ConfigMap with the
//! local files the pods read, a headless Service for the rendezvous and an Indexed
//! Job (or a JobSet, which brings its own Service).

use serde_json::{Map, Value, json};

use super::container::{CONTAINER, MASTER_PORT, PodCommand, pod_command};
use super::names::{label_value, object_name};
use super::{K8s, Kind};
use crate::backend::files::{self, Shipped};
use crate::error::{OrchError, Result};
use crate::plan::Job;
use crate::stage::Stage;

/// Where the shipped files appear in the pods (a ConfigMap volume).
pub const MOUNT: &str = "/etc/s3-orch/files";

/// The JobSet API this backend writes.
pub const JOBSET_API: &str = "jobset.x-k8s.io/v1alpha2";

/// Name of a JobSet's one replicated job (its pods are `<set>-ranks-0-<index>`).
const REPLICATED_JOB: &str = "ranks";

/// The cluster DNS domain: rank 0's full name is in its own pod's /etc/hosts (the
/// others find it through the headless Service), so it can listen on it at once.
const CLUSTER_DOMAIN: &str = "svc.cluster.local";

/// JobSet restarts of the whole set (every child Job at once) before it fails.
const JOBSET_MAX_RESTARTS: u32 = 3;

/// Names and labels of one attempt's objects.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The Job's (JobSet's, Service's) name.
    pub name: String,
    /// `s3/run`, `s3/stage`, `s3/attempt`: on every object and pod.
    pub labels: Map<String, Value>,
}

impl Identity {
    /// The attempt's name and labels.
    pub fn of(job: &Job) -> Identity {
        let mut labels = Map::new();
        labels.insert("s3/run".into(), label_value(&job.run_id).into());
        labels.insert("s3/stage".into(), label_value(job.kind.name()).into());
        labels.insert("s3/attempt".into(), job.attempt.to_string().into());
        Identity { name: object_name(&format!("{}-{}-a{}", job.run_id, job.kind, job.attempt)), labels }
    }

    /// `kubectl -l` selector of exactly this attempt's objects and pods.
    pub fn selector(&self) -> String {
        self.labels.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(",")
    }

    /// The Secret holding the job token.
    pub fn token_secret(&self) -> String {
        format!("{}-token", self.name)
    }

    /// The ConfigMap holding the local files the pods read.
    pub fn files_configmap(&self) -> String {
        format!("{}-files", self.name)
    }
}

/// Whether `job` becomes a JobSet: only collective jobs do (ingest, merge and eval
/// pods do not meet, so a plain Indexed Job is all they need).
pub fn kind_of(k: &K8s, job: &Job) -> Kind {
    let collective = job.ranks.first().is_some_and(|r| r.env.iter().any(|(k, _)| k == "RANK"));
    if collective { k.kind } else { Kind::Job }
}

/// Rank 0's pod as the others reach it.
fn master_addr(kind: Kind, name: &str, namespace: &str) -> String {
    match kind {
        Kind::Job => format!("{name}-0.{name}.{namespace}.{CLUSTER_DOMAIN}"),
        Kind::JobSet => format!("{name}-{REPLICATED_JOB}-0-0.{name}.{namespace}.{CLUSTER_DOMAIN}"),
    }
}

fn metadata(k: &K8s, name: &str, id: &Identity) -> Value {
    let mut labels = id.labels.clone();
    labels.insert("app.kubernetes.io/managed-by".into(), "s3-orch".into());
    json!({"name": name, "namespace": k.namespace, "labels": labels})
}

fn resources(k: &K8s, cmd: &PodCommand) -> Result<Value> {
    let r = cmd.ranks_per_pod;
    let (mut requests, mut limits) = (Map::new(), Map::new());
    if let Some(c) = k.cpus_per_rank {
        requests.insert("cpu".into(), (c as usize * r).to_string().into());
    }
    if let Some(m) = &k.mem_per_rank {
        requests.insert("memory".into(), m.times(r).into());
        limits.insert("memory".into(), m.times(r).into());
    }
    if cmd.cuda {
        // A training pod takes the node's GPUs; a lone process (eval) one.
        let gpus = if cmd.collective { k.gpus_per_node.map_or(r, |g| g as usize) } else { 1 };
        if gpus < r {
            return Err(OrchError::Gpus { ranks_per_pod: r, gpus_per_node: gpus });
        }
        limits.insert("nvidia.com/gpu".into(), gpus.to_string().into());
    }
    let mut out = Map::new();
    if !requests.is_empty() {
        out.insert("requests".into(), requests.into());
    }
    if !limits.is_empty() {
        out.insert("limits".into(), limits.into());
    }
    Ok(out.into())
}

fn pod_template(
    k: &K8s,
    job: &Job,
    id: &Identity,
    cmd: &PodCommand,
    shipped: Option<&Shipped>,
    subdomain: Option<&str>,
) -> Result<Value> {
    let ingest = job.kind.stage() == Stage::Ingest;
    let image = if ingest { k.ingest_image.as_deref().or(k.image.as_deref()) } else { k.image.as_deref() };
    let image = image.ok_or_else(|| OrchError::NeedsImage { needed_by: "the k8s backend".into() })?;
    let mut container = json!({
        "name": CONTAINER,
        "image": image,
        "command": cmd.command,
        "args": cmd.args,
        "env": cmd.env,
        "resources": resources(k, cmd)?,
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
    });
    for v in &k.volumes {
        container["volumeMounts"].as_array_mut().expect("built above").push(v.mount.clone());
    }
    if let Some(s) = &k.secret {
        // The credentials by reference: the values stay in the cluster's Secret.
        container["envFrom"] = json!([{"secretRef": {"name": s}}]);
    }
    let mut spec = json!({
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": k.grace,
        // Service variables of the namespace would only crowd the ranks' environment.
        "enableServiceLinks": false,
        "containers": [container],
        // The data loader's shared memory: the runtime's default /dev/shm is 64 MiB.
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}}],
    });
    for v in &k.volumes {
        spec["volumes"].as_array_mut().expect("built above").push(v.volume.clone());
    }
    k.network.apply(&mut spec);
    if let Some(f) = shipped {
        spec["containers"][0]["volumeMounts"]
            .as_array_mut()
            .expect("built above")
            .push(json!({"name": "files", "mountPath": MOUNT, "readOnly": true}));
        spec["volumes"]
            .as_array_mut()
            .expect("built above")
            .push(json!({"name": "files", "configMap": {"name": id.files_configmap(), "items": f.items}}));
    }
    if let Some(s) = subdomain {
        spec["subdomain"] = s.into();
    }
    if !k.node_selector.is_empty() {
        spec["nodeSelector"] = Value::Object(k.node_selector.clone());
    }
    if !k.tolerations.is_empty() {
        spec["tolerations"] = Value::Array(k.tolerations.clone());
    }
    let mut template = json!({"metadata": {"labels": id.labels}, "spec": spec});
    k.gang.pod(&mut template, cmd.collective.then_some(id.name.as_str()));
    Ok(template)
}

fn job_spec(k: &K8s, cmd: &PodCommand, template: Value) -> Value {
    let mut spec = json!({
        "completionMode": "Indexed",
        "completions": cmd.pods,
        "parallelism": cmd.pods,
        // One failed pod fails the attempt: a group with a missing rank cannot go on,
        // and the launcher starts the next attempt from the last checkpoint (up to
        // max_retries when it was preempted or disrupted, see status::job_end).
        "backoffLimit": 0,
        "podFailurePolicy": {"rules": [
            {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "NotIn", "values": [0]}},
            {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]},
        "template": template,
    });
    if let Some(s) = k.deadline {
        spec["activeDeadlineSeconds"] = s.into();
    }
    spec
}

/// The attempt's objects, in the order they are applied.
pub fn manifests(k: &K8s, job: &Job) -> Result<Vec<Value>> {
    let id = Identity::of(job);
    let kind = kind_of(k, job);
    let shipped = job.ranks.first().map(|r| files::ship(&r.args)).transpose()?.flatten();
    let mut job = job.clone();
    if let Some(f) = &shipped {
        for r in &mut job.ranks {
            r.args = files::rename(&r.args, f, MOUNT);
        }
    }
    let job = &job;
    let port = k.network.port(&id.name, MASTER_PORT);
    let cmd = pod_command(job, (&master_addr(kind, &id.name, &k.namespace), port), &id.token_secret())?;
    let mut docs = Vec::new();
    if let Some(token) = &cmd.token {
        docs.push(json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": metadata(k, &id.token_secret(), &id),
            "type": "Opaque",
            "stringData": {super::container::TOKEN_VAR: token},
        }));
    }
    if let Some(f) = &shipped {
        docs.push(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata(k, &id.files_configmap(), &id),
            "data": f.data,
        }));
    }
    if cmd.collective
        && let Some(group) = k.gang.pod_group(&metadata(k, &id.name, &id), cmd.pods)
    {
        docs.push(group);
    }
    match kind {
        Kind::Job => {
            let subdomain = cmd.collective.then_some(id.name.as_str());
            if cmd.collective {
                docs.push(json!({
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": metadata(k, &id.name, &id),
                    "spec": {
                        "clusterIP": "None",
                        "selector": id.labels,
                        // Ranks look each other up while starting, before they are ready.
                        "publishNotReadyAddresses": true,
                        "ports": [{"name": "rendezvous", "port": port, "targetPort": port, "protocol": "TCP"}],
                    },
                }));
            }
            let template = pod_template(k, job, &id, &cmd, shipped.as_ref(), subdomain)?;
            let mut workload = json!({
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": metadata(k, &id.name, &id),
                "spec": job_spec(k, &cmd, template),
            });
            k.gang.admit(&mut workload);
            docs.push(workload);
        }
        Kind::JobSet => {
            let template = pod_template(k, job, &id, &cmd, shipped.as_ref(), None)?;
            let mut workload = json!({
                "apiVersion": JOBSET_API,
                "kind": "JobSet",
                "metadata": metadata(k, &id.name, &id),
                "spec": {
                    // Any failed child Job restarts all of them (a rank alone cannot
                    // rejoin the collective); they resume from the last checkpoint.
                    "failurePolicy": {"maxRestarts": JOBSET_MAX_RESTARTS},
                    "network": {"enableDNSHostnames": true, "subdomain": id.name, "publishNotReadyAddresses": true},
                    "replicatedJobs": [{
                        "name": REPLICATED_JOB,
                        "replicas": 1,
                        "template": {"metadata": {"labels": id.labels}, "spec": job_spec(k, &cmd, template)},
                    }],
                },
            });
            k.gang.admit(&mut workload);
            docs.push(workload);
        }
    }
    Ok(docs)
}
