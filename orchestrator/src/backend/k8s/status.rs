//! Reading `kubectl get ... -o json`: whether a Job (JobSet) ended, each pod's exit
//! code, and how the attempt ended. Pure functions, so tests feed them sample output.

use serde_json::{Map, Value};

use super::Kind;
use super::container::CONTAINER;
use crate::backend::JobEnd;

/// Where a Job or JobSet stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Pods still run (or wait to).
    Running,
    /// Every pod succeeded.
    Complete,
    /// It failed: the condition's reason and message.
    Failed(String),
}

/// The phase of a Job (`kind` Job) or JobSet from its JSON.
pub fn phase(kind: Kind, obj: &Value) -> Phase {
    let (done, failed) = match kind {
        Kind::Job => ("Complete", "Failed"),
        Kind::JobSet => ("Completed", "Failed"),
    };
    let conditions = obj["status"]["conditions"].as_array().map(Vec::as_slice).unwrap_or_default();
    let holds = |t: &str| conditions.iter().find(|c| c["type"] == t && c["status"] == "True");
    if holds(done).is_some() {
        return Phase::Complete;
    }
    match holds(failed) {
        Some(c) => Phase::Failed(
            [c["reason"].as_str(), c["message"].as_str()].into_iter().flatten().collect::<Vec<_>>().join(": "),
        ),
        None => Phase::Running,
    }
}

/// The object's labels.
pub fn labels(obj: &Value) -> Map<String, Value> {
    obj["metadata"]["labels"].as_object().cloned().unwrap_or_default()
}

/// One pod of the attempt, as last seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodState {
    /// Its completion index.
    pub index: usize,
    /// Its name (for `kubectl logs`).
    pub name: String,
    /// The rank container's exit code once it ended.
    pub exit_code: Option<i32>,
    /// Why the container has not started (`ImagePullBackOff: ...`), while it waits.
    pub waiting: Option<String>,
    /// Kubernetes took the pod away (`DisruptionTarget`: preempted by the scheduler,
    /// evicted, its node drained or lost): no fault of the rank.
    pub disrupted: bool,
}

/// The newest pod of each completion index in a `kubectl get pods -o json` list
/// (a JobSet restart leaves older ones behind for a while).
pub fn pods(list: &Value) -> Vec<PodState> {
    let mut newest: std::collections::BTreeMap<usize, (&str, PodState)> = Default::default();
    for p in list["items"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let meta = &p["metadata"];
        let Some(index) = meta["annotations"]["batch.kubernetes.io/job-completion-index"]
            .as_str()
            .and_then(|s| s.parse::<usize>().ok())
        else {
            continue;
        };
        let created = meta["creationTimestamp"].as_str().unwrap_or_default();
        let status = &p["status"];
        let container = status["containerStatuses"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == CONTAINER))
            .unwrap_or(&Value::Null);
        let exit_code = container["state"]["terminated"]["exitCode"]
            .as_i64()
            .map(|c| c as i32)
            .or_else(|| (status["phase"] == "Succeeded").then_some(0));
        let w = &container["state"]["waiting"];
        let waiting = w["reason"]
            .as_str()
            .filter(|r| *r != "ContainerCreating")
            .map(|r| w["message"].as_str().map_or(r.to_string(), |m| format!("{r}: {m}")));
        let disrupted = status["conditions"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["type"] == "DisruptionTarget" && c["status"] == "True"));
        let name = meta["name"].as_str().unwrap_or_default().to_string();
        let state = PodState { index, name, exit_code, waiting, disrupted };
        // RFC 3339 times of one clock compare as text.
        if newest.get(&index).is_none_or(|(t, _)| created >= *t) {
            newest.insert(index, (created, state));
        }
    }
    newest.into_values().map(|(_, s)| s).collect()
}

/// The attempt's end from its `pods` (each running `ranks_per_pod` ranks): every rank
/// of a pod gets the pod's exit code (None: never seen to end); a disrupted pod that
/// did not succeed counts as preempted (75), whatever killed it. The rank to blame is
/// the first of an undisrupted pod that exited with a real failure; none when a pod
/// was disrupted and no other failed on its own (the Job stops the rest after a pod
/// ends: 137, 143 and unseen ends are the consequence); failing both, the first of a
/// pod killed or never seen to end.
pub fn job_end(pods: &[PodState], count: usize, ranks_per_pod: usize) -> JobEnd {
    let mut codes = vec![None; count];
    let mut disrupted = false;
    for p in pods {
        if let Some(c) = codes.get_mut(p.index) {
            *c = if p.disrupted && p.exit_code != Some(0) {
                Some(i32::from(s3_shards::exit::PREEMPTED))
            } else {
                p.exit_code
            };
            disrupted |= p.disrupted;
        }
    }
    let real_failure = |c: &Option<i32>| c.is_some() && s3_shards::exit::is_failure(*c);
    let killed = |c: &Option<i32>| matches!(c, Some(137 | 143));
    let cause = codes.iter().position(|c| real_failure(c) && !killed(c));
    let blamed = if cause.is_some() || disrupted {
        cause
    } else {
        codes.iter().position(real_failure).or_else(|| codes.iter().position(Option::is_none))
    };
    JobEnd {
        exit_codes: codes.iter().flat_map(|c| std::iter::repeat_n(*c, ranks_per_pod)).collect(),
        failed_rank: blamed.map(|pod| pod * ranks_per_pod),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn job_and_jobset_phases() {
        let running = json!({"status": {"active": 2}});
        assert_eq!(phase(Kind::Job, &running), Phase::Running);
        let done = json!({"status": {"conditions": [
            {"type": "SuccessCriteriaMet", "status": "True"},
            {"type": "Complete", "status": "True"}]}});
        assert_eq!(phase(Kind::Job, &done), Phase::Complete);
        let failed = json!({"status": {"conditions": [
            {"type": "FailureTarget", "status": "True"},
            {"type": "Failed", "status": "True", "reason": "PodFailurePolicy",
             "message": "Container rank for pod ns/x-1-abc failed with exit code 2 matching FailJob rule at index 0"}]}});
        let Phase::Failed(why) = phase(Kind::Job, &failed) else { panic!() };
        assert!(why.starts_with("PodFailurePolicy: Container rank") && why.contains("exit code 2"), "{why}");
        let not_yet = json!({"status": {"conditions": [{"type": "Failed", "status": "False"}]}});
        assert_eq!(phase(Kind::Job, &not_yet), Phase::Running);
        let set = json!({"status": {"conditions": [{"type": "Completed", "status": "True"}]}});
        assert_eq!(phase(Kind::JobSet, &set), Phase::Complete);
        assert_eq!(phase(Kind::Job, &set), Phase::Running);
    }

    fn pod(name: &str, index: &str, created: &str, status: Value) -> Value {
        json!({"metadata": {"name": name, "creationTimestamp": created,
                            "annotations": {"batch.kubernetes.io/job-completion-index": index}},
               "status": status})
    }

    fn terminated(code: i32) -> Value {
        json!({"phase": if code == 0 { "Succeeded" } else { "Failed" },
               "containerStatuses": [{"name": "rank", "state": {"terminated": {"exitCode": code}}}]})
    }

    #[test]
    fn exit_codes_per_index_from_the_newest_pod() {
        let list = json!({"items": [
            pod("j-1-new", "1", "2025-01-01T10:05:00Z", terminated(0)),
            pod("j-0-a", "0", "2025-01-01T10:00:00Z", terminated(0)),
            pod("j-1-old", "1", "2025-01-01T10:00:00Z", terminated(2)),
            pod("j-2-a", "2", "2025-01-01T10:00:00Z", json!({"phase": "Pending", "containerStatuses": [
                {"name": "rank", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}}}]})),
            json!({"metadata": {"name": "stray"}}),
        ]});
        let p = pods(&list);
        assert_eq!(p.len(), 3);
        assert_eq!((p[1].name.as_str(), p[1].exit_code), ("j-1-new", Some(0)));
        assert_eq!(p[2].waiting.as_deref(), Some("ImagePullBackOff: no such image"));
        assert_eq!(p[2].exit_code, None);
    }

    fn states(codes: &[Option<i32>]) -> Vec<PodState> {
        codes
            .iter()
            .enumerate()
            .map(|(index, &exit_code)| PodState {
                index,
                name: format!("p{index}"),
                exit_code,
                waiting: None,
                disrupted: false,
            })
            .collect()
    }

    #[test]
    fn the_end_blames_the_cause_not_the_pods_stopped_after_it() {
        let e = job_end(&states(&[Some(0), Some(0)]), 2, 4);
        assert_eq!((e.exit_codes, e.failed_rank), (vec![Some(0); 8], None));
        // Pod 1 failed; the Job then stopped pod 0 (143) and deleted pod 2 (unseen).
        let e = job_end(&states(&[Some(143), Some(2), None]), 3, 2);
        assert_eq!(e.failed_rank, Some(2));
        assert_eq!(e.exit_codes, [Some(143), Some(143), Some(2), Some(2), None, None]);
        // Preempted everywhere: no rank to blame.
        assert_eq!(job_end(&states(&[Some(75), Some(75)]), 2, 1).failed_rank, None);
        // OOM-killed (137) with nothing else: that pod.
        assert_eq!(job_end(&states(&[Some(75), Some(137)]), 2, 1).failed_rank, Some(1));
        // Pods never seen (deleted with the Job): the first.
        assert_eq!(job_end(&[], 2, 1).failed_rank, Some(0));
    }

    #[test]
    fn a_disrupted_pod_is_a_preemption_unless_another_failed_on_its_own() {
        let list = json!({"items": [
            pod("j-0", "0", "2025-01-01T10:00:00Z", terminated(143)),
            pod("j-1", "1", "2025-01-01T10:00:00Z", json!({"phase": "Failed",
                "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}],
                "containerStatuses": [{"name": "rank", "state": {"terminated": {"exitCode": 137}}}]})),
            pod("j-2", "2", "2025-01-01T10:00:00Z", json!({"phase": "Running"})),
        ]});
        let p = pods(&list);
        assert_eq!(p.iter().map(|p| p.disrupted).collect::<Vec<_>>(), [false, true, false]);
        // Pod 1 was taken (killed after its grace), the Job stopped pod 0 and pod 2's
        // end was not seen: a preempted attempt, nobody to blame.
        let e = job_end(&p, 3, 2);
        assert_eq!(e.exit_codes, [Some(143), Some(143), Some(75), Some(75), None, None]);
        assert_eq!(e.failed_rank, None);
        // A node lost with its pod: no exit code at all, still a preemption.
        let mut lost = p.clone();
        lost[1].exit_code = None;
        assert_eq!(job_end(&lost, 3, 1).exit_codes[1], Some(75));
        // A rank that failed by itself is blamed, disruption or not.
        let mut failed = p.clone();
        failed[2].exit_code = Some(1);
        assert_eq!(job_end(&failed, 3, 1).failed_rank, Some(2));
        // A disrupted pod that had already succeeded keeps its 0.
        let mut done = p;
        done[1].exit_code = Some(0);
        assert_eq!(job_end(&done, 3, 1).exit_codes[1], Some(0));
    }
}
