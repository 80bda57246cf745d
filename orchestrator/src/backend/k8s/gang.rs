//! Gang admission: the pods of a training attempt start together or not at all, so
//! none waits at the rendezvous for peers still queued for GPUs. Two schedulers are
//! spoken: Kueue (a `kueue.x-k8s.io/queue-name` label on the Job or JobSet, created
//! suspended; Kueue admits the whole workload when its quota allows) and Volcano (a
//! `PodGroup` with `minMember` = the pods, and pods scheduled by `volcano`).

use serde_json::{Value, json};

use crate::error::{OrchError, Result};

/// Kueue's label naming the LocalQueue of a workload.
pub const KUEUE_QUEUE_LABEL: &str = "kueue.x-k8s.io/queue-name";
/// The pod annotation naming a pod's Volcano PodGroup.
pub const VOLCANO_GROUP_ANNOTATION: &str = "scheduling.k8s.io/group-name";
/// Volcano's PodGroup API.
pub const PODGROUP_API: &str = "scheduling.volcano.sh/v1beta1";
/// The PodGroups `kubectl delete` names.
pub const PODGROUP_RESOURCE: &str = "podgroups.scheduling.volcano.sh";

/// Who admits an attempt's pods (settings `k8s_gang`, `k8s_queue`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Gang {
    /// The default scheduler, pod by pod.
    #[default]
    None,
    /// Kueue, through this LocalQueue.
    Kueue {
        /// The LocalQueue in the attempt's namespace.
        queue: String,
    },
    /// Volcano, in this queue (its default queue when none).
    Volcano {
        /// The Volcano queue.
        queue: Option<String>,
    },
}

impl Gang {
    /// From the settings: `none` (default), `kueue` (needs `k8s_queue`) or `volcano`.
    pub fn parse(gang: Option<&str>, queue: Option<&str>) -> Result<Gang> {
        let queue = queue.map(str::trim).filter(|q| !q.is_empty()).map(str::to_string);
        match gang.map(str::trim) {
            None | Some("" | "none") => Ok(Gang::None),
            Some("kueue") => match queue {
                Some(queue) => Ok(Gang::Kueue { queue }),
                None => Err(OrchError::Setting {
                    name: "k8s_queue",
                    value: String::new(),
                    expected: "the Kueue LocalQueue to submit to (k8s_gang = \"kueue\" needs one)".into(),
                }),
            },
            Some("volcano") => Ok(Gang::Volcano { queue }),
            Some(other) => Err(OrchError::Setting {
                name: "k8s_gang",
                value: other.to_string(),
                expected: "none, kueue or volcano".into(),
            }),
        }
    }

    /// Marks the workload (a Job or JobSet) for its admission: Kueue's queue label
    /// and `suspend: true` (Kueue lifts it once the whole workload fits).
    pub fn admit(&self, workload: &mut Value) {
        if let Gang::Kueue { queue } = self {
            workload["metadata"]["labels"][KUEUE_QUEUE_LABEL] = queue.as_str().into();
            workload["spec"]["suspend"] = true.into();
        }
    }

    /// Volcano's PodGroup of a collective attempt of `pods` pods, named like it.
    pub fn pod_group(&self, metadata: &Value, pods: usize) -> Option<Value> {
        let Gang::Volcano { queue } = self else { return None };
        let mut spec = json!({"minMember": pods});
        if let Some(q) = queue {
            spec["queue"] = q.as_str().into();
        }
        Some(json!({"apiVersion": PODGROUP_API, "kind": "PodGroup", "metadata": metadata, "spec": spec}))
    }

    /// The pod template's part: Volcano schedules every pod (a collective one as a
    /// member of `group`, the attempt's PodGroup).
    pub fn pod(&self, template: &mut Value, group: Option<&str>) {
        let Gang::Volcano { queue } = self else { return };
        template["spec"]["schedulerName"] = "volcano".into();
        if let Some(g) = group {
            template["metadata"]["annotations"][VOLCANO_GROUP_ANNOTATION] = g.into();
        }
        if let Some(q) = queue {
            template["metadata"]["annotations"]["scheduling.volcano.sh/queue-name"] = q.as_str().into();
        }
    }
}

/// The PodGroup a Job's or JobSet's pods belong to, read back from its JSON (for
/// `cancel`, which knows only what the cluster says).
pub fn pod_group_of(obj: &Value) -> Option<String> {
    let template = if obj["kind"] == "JobSet" {
        &obj["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
    } else {
        &obj["spec"]["template"]
    };
    template["metadata"]["annotations"][VOLCANO_GROUP_ANNOTATION].as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_settings_choose_a_scheduler_and_kueue_needs_its_queue() {
        assert_eq!(Gang::parse(None, None).unwrap(), Gang::None);
        assert_eq!(Gang::parse(Some("kueue"), Some("gpu-queue")).unwrap(), Gang::Kueue { queue: "gpu-queue".into() });
        assert!(Gang::parse(Some("kueue"), None).unwrap_err().to_string().contains("k8s_queue"));
        assert_eq!(Gang::parse(Some("volcano"), None).unwrap(), Gang::Volcano { queue: None });
        assert!(Gang::parse(Some("yunikorn"), None).unwrap_err().to_string().contains("none, kueue or volcano"));
    }

    #[test]
    fn cancel_finds_the_pod_group_in_a_job_and_a_jobset() {
        let mut template = json!({"metadata": {"labels": {}}, "spec": {}});
        Gang::Volcano { queue: Some("q".into()) }.pod(&mut template, Some("run-stage1-a1"));
        assert_eq!(template["spec"]["schedulerName"], "volcano");
        let job = json!({"kind": "Job", "spec": {"template": template}});
        assert_eq!(pod_group_of(&job).as_deref(), Some("run-stage1-a1"));
        let set =
            json!({"kind": "JobSet", "spec": {"replicatedJobs": [{"template": {"spec": {"template": template}}}]}});
        assert_eq!(pod_group_of(&set).as_deref(), Some("run-stage1-a1"));
        assert_eq!(pod_group_of(&json!({"kind": "Job", "spec": {}})), None);
    }
}
