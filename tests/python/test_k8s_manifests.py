"""Every manifest `s3-orch launch ... --backend k8s --dry-run` renders (both stages,
ingest and merge; Indexed Job and JobSet) validates with `kubernetes-validate --strict`
for Kubernetes 1.31 and for the newest version it knows; JobSet, a CRD it has no
schema for, is checked structurally and its Job template validated as a Job.
The schemas ship in the wheel: nothing here reaches the network."""

import os
import pathlib
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("S3_ORCH_BIN", str(ROOT / "target" / "debug" / "s3-orch"))
VALIDATE = [sys.executable, "-m", "kubernetes_validate"]
VERSIONS = ["1.31.0", kubernetes_validate.latest_version()]
RANKS_SH = (ROOT / "orchestrator/src/backend/k8s/ranks.sh").read_text(encoding="utf-8")

STAGE = """name = "{name}"
preset = "small"
epochs = 1
batch = 1
[schedule]
kind = "constant"
"""

# 2 pods × 4 GPUs (the ranks run under ranks.sh), and 2 pods × 1 CPU rank.
PROFILES = {
    "gpu": """ranks = 8
nodes = 2
device = "cuda"
gpus_per_node = 4
cpus_per_rank = 8
mem_per_rank = "64Gi"
time_limit = "2-00:00:00"
namespace = "sam3d"
image = "registry.example.org/sam3d-trainer:1.0"
secret = "sam3d-s3"
grace_seconds = 300
workers = 3
train_bin = "s3-train"
ingest_bin = "s3-ingest"
[env]
NCCL_SOCKET_IFNAME = "eth0"
""",
    "cpu": """ranks = 2
nodes = 2
cpus_per_rank = 2
mem_per_rank = "4G"
image = "sam3d-trainer:cpu"
workers = 2
train_bin = "s3-train"
ingest_bin = "s3-ingest"
""",
}

# The gpu profile on a cluster with a gang scheduler, a shard cache volume, a
# read-only dataset claim, the host's network and RDMA.
CLUSTER_EXTRAS = """k8s_volumes = "emptyDir:/cache:200Gi,pvc:datasets:/mnt/data:ro,hostPath:/nvme:/nvme"
host_network = true
rdma_resource = "rdma/hca_shared_devices_a=1"
"""
PROFILES["kueue"] = PROFILES["gpu"].replace("[env]", 'k8s_gang = "kueue"\nk8s_queue = "gpu-queue"\n' + CLUSTER_EXTRAS + "[env]")
PROFILES["volcano"] = PROFILES["gpu"].replace("[env]", 'k8s_gang = "volcano"\nk8s_queue = "research"\n' + CLUSTER_EXTRAS + "[env]")

CATALOG = """[[datasets]]
name = "AMOS22"
modality = "CT"
pretrain = true
finetune = true
"""

ACCESS_KEY = "AKIAPYTESTK8SVALIDATE"
SECRET_KEY = "py/test+secret/ValueThatMustNotAppear9"


def render(tmp_path, step, profile, kind):
    (tmp_path / "stages").mkdir(exist_ok=True)
    for s in ("stage1", "stage2"):
        (tmp_path / "stages" / f"{s}.toml").write_text(STAGE.format(name=s))
    (tmp_path / "profile.toml").write_text(PROFILES[profile])
    (tmp_path / "manifests").mkdir(exist_ok=True)
    (tmp_path / "manifests" / "datasets.toml").write_text(CATALOG)
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
    r = subprocess.run(
        [BIN, "launch", step, "--backend", "k8s", "--cluster", "profile.toml", "--k8s-kind", kind,
         "--stages", "stages", "--runs", "runs", "--run", "v", "--data", "s3://sam3d/shards",
         "--manifest", "manifests/datasets.toml", "--out", "s3://sam3d/shards", "--dry-run"],
        cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ACCESS_KEY not in r.stdout and SECRET_KEY not in r.stdout, "a credential in a manifest"
    return r.stdout


def docs_of(text):
    return [d for d in yaml.safe_load_all(text) if d]


def validate_cli(path, count):
    """`kubernetes-validate --strict` for each version: every resource passed."""
    for version in VERSIONS:
        r = subprocess.run(VALIDATE + ["--strict", "-k", version, str(path)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.count(" passed for resource ") == count, r.stdout


JOBSET_SPEC = {"failurePolicy", "network", "replicatedJobs", "startupPolicy", "successPolicy", "suspend",
               "coordinator", "managedBy", "ttlSecondsAfterFinished"}


def check_jobset(doc):
    """JobSet v1alpha2 by its API's fields; each replicated Job's template validated as a Job."""
    assert doc["apiVersion"] == "jobset.x-k8s.io/v1alpha2"
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
    spec = doc["spec"]
    assert set(spec) <= JOBSET_SPEC, set(spec) - JOBSET_SPEC
    assert isinstance(spec["failurePolicy"]["maxRestarts"], int) and spec["failurePolicy"]["maxRestarts"] >= 1
    assert set(spec["network"]) <= {"enableDNSHostnames", "subdomain", "publishNotReadyAddresses"}
    assert spec["network"]["enableDNSHostnames"] is True
    for rj in spec["replicatedJobs"]:
        assert set(rj) <= {"name", "replicas", "template", "dependsOn"} and rj["replicas"] == 1
        pod = rj["template"]["spec"]["template"]["spec"]
        # JobSet's own default (OnFailure) would restart single ranks.
        assert pod["restartPolicy"] == "Never"
        as_job = {"apiVersion": "batch/v1", "kind": "Job",
                  "metadata": {"name": f"{doc['metadata']['name']}-{rj['name']}-0",
                               "labels": rj["template"]["metadata"]["labels"]},
                  "spec": rj["template"]["spec"]}
        for version in VERSIONS:
            kubernetes_validate.validate(as_job, version, strict=True)
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        name = doc["metadata"]["name"]
        assert env["MASTER_ADDR"].startswith(f"{name}-{rj['name']}-0-0.{spec['network']['subdomain']}.")


@pytest.mark.parametrize("kind", ["job", "jobset"])
@pytest.mark.parametrize("profile", ["gpu", "cpu"])
@pytest.mark.parametrize("step", ["stage1", "stage2", "ingest"])
def test_every_manifest_validates(tmp_path, step, profile, kind):
    text = render(tmp_path, step, profile, kind)
    docs = docs_of(text)
    native = [d for d in docs if d["kind"] != "JobSet"]
    path = tmp_path / "native.yaml"
    path.write_text(yaml.safe_dump_all(native))
    validate_cli(path, len(native))
    for d in docs:
        if d["kind"] == "JobSet":
            check_jobset(d)
    # The dry run's own text, comments and all, is what the validator reads too.
    raw = tmp_path / "dry-run.yaml"
    raw.write_text(text)
    validate_cli(raw, len(native))

    kinds = [d["kind"] for d in docs]
    if step == "ingest":
        assert kinds == ["ConfigMap", "Job", "Job"], "the catalogue and the workers, then the merge"
        assert docs[0]["data"] == {"datasets.toml": CATALOG}
        workers = docs[1]["spec"]
        n = int(PROFILES[profile].split("workers = ")[1].split()[0])
        assert workers["completions"] == workers["parallelism"] == n
        assert f"$(JOB_COMPLETION_INDEX)/{n}" in workers["template"]["spec"]["containers"][0]["args"]
        return
    assert kinds == (["Secret", "ConfigMap", "Service", "Job"] if kind == "job" else ["Secret", "ConfigMap", "JobSet"])
    files = docs[1]
    assert sorted(files["data"].values()) == sorted([CATALOG, STAGE.format(name=step)]), "the stage file and catalogue travel"
    job = docs[-1]["spec"] if kind == "job" else docs[-1]["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert (job["completionMode"], job["completions"], job["parallelism"], job["backoffLimit"]) == ("Indexed", 2, 2, 0)
    pod = job["template"]["spec"]
    c = pod["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    assert env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert "RANK" not in env and "WORLD_SIZE" not in env
    assert "secretKeyRef" in env["S3_JOB_TOKEN"]["valueFrom"], "the token by reference"
    if profile == "gpu":
        assert c["command"][:2] == ["bash", "-c"]
        # The literal block reads back as ranks.sh, its `$` doubled for Kubernetes.
        assert c["command"][2] == RANKS_SH.replace("$", "$$")
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "4"
        assert c["resources"]["requests"] == {"cpu": "32", "memory": "256Gi"}
        assert c["envFrom"] == [{"secretRef": {"name": "sam3d-s3"}}]
        assert job["activeDeadlineSeconds"] == 2 * 86400
        assert c["args"][-2:] == ["--world", "8"]
    else:
        assert c["command"] == ["s3-train"] and env["LOCAL_RANK"]["value"] == "0"
        assert "nvidia.com/gpu" not in c["resources"].get("limits", {})
    volume = next(v for v in pod["volumes"] if v["name"] == "files")
    assert volume["configMap"]["name"] == files["metadata"]["name"]
    assert {i["path"] for i in volume["configMap"]["items"]} == {f"stages/{step}.toml", "manifests/datasets.toml"}
    assert f"/etc/s3-orch/files/stages/{step}.toml" in c["args"]
    if kind == "job":
        svc = docs[2]["spec"]
        assert svc["clusterIP"] == "None" and svc["publishNotReadyAddresses"] is True
        assert svc["selector"] == job["template"]["metadata"]["labels"]
        assert pod["subdomain"] == docs[2]["metadata"]["name"]


def test_the_validator_rejects_what_it_should(tmp_path):
    """A control: strict validation is on and the schemas are there."""
    text = render(tmp_path, "stage1", "cpu", "job")
    job = docs_of(text)[-1]
    job["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(job))
    for version in VERSIONS:
        r = subprocess.run(VALIDATE + ["--strict", "-k", version, str(path)], capture_output=True, text=True)
        assert r.returncode != 0 and "gpus" in r.stdout, r.stdout + r.stderr


def check_pod_group(doc, pods):
    """Volcano's PodGroup (scheduling.volcano.sh/v1beta1) by its API's fields."""
    assert doc["apiVersion"] == "scheduling.volcano.sh/v1beta1"
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(doc["spec"]) <= {"minMember", "minTaskMember", "queue", "priorityClassName", "minResources"}
    assert doc["spec"]["minMember"] == pods, "the whole attempt or nothing"


@pytest.mark.parametrize("kind", ["job", "jobset"])
@pytest.mark.parametrize("gang", ["kueue", "volcano"])
@pytest.mark.parametrize("step", ["stage1", "ingest"])
def test_gang_admission_volumes_and_network_validate(tmp_path, step, gang, kind):
    text = render(tmp_path, step, gang, kind)
    docs = docs_of(text)
    native = [d for d in docs if d["kind"] not in ("JobSet", "PodGroup")]
    path = tmp_path / "native.yaml"
    path.write_text(yaml.safe_dump_all(native))
    validate_cli(path, len(native))
    for d in docs:
        if d["kind"] == "JobSet":
            check_jobset(d)
        if d["kind"] == "PodGroup":
            check_pod_group(d, 2)
    workloads = [d for d in docs if d["kind"] in ("Job", "JobSet")]
    collective = step != "ingest"
    for w in workloads:
        job = w["spec"] if w["kind"] == "Job" else w["spec"]["replicatedJobs"][0]["template"]["spec"]
        pod = job["template"]
        spec, c = pod["spec"], pod["spec"]["containers"][0]
        if gang == "kueue":
            assert w["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
            assert w["spec"]["suspend"] is True, "Kueue admits the whole workload by lifting it"
            assert "schedulerName" not in spec
        else:
            assert "kueue.x-k8s.io/queue-name" not in w["metadata"]["labels"]
            assert spec["schedulerName"] == "volcano"
            annotations = pod["metadata"].get("annotations", {})
            assert annotations.get("scheduling.volcano.sh/queue-name") == "research"
            if collective:
                assert annotations["scheduling.k8s.io/group-name"] == w["metadata"]["name"]
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes[mounts["/cache"]["name"]]["emptyDir"] == {"sizeLimit": "200Gi"}
        assert volumes[mounts["/mnt/data"]["name"]]["persistentVolumeClaim"] == {"claimName": "datasets"}
        assert mounts["/mnt/data"]["readOnly"] is True
        assert volumes[mounts["/nvme"]["name"]]["hostPath"]["path"] == "/nvme"
        assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
        assert c["resources"]["limits"]["rdma/hca_shared_devices_a"] == "1"
        assert c["securityContext"]["capabilities"]["add"] == ["IPC_LOCK"]
        if collective:
            port = next(e["value"] for e in c["env"] if e["name"] == "MASTER_PORT")
            assert port != "29500" and 20000 <= int(port) < 30000, "a port of its own on the host's network"
            for svc in (d for d in docs if d["kind"] == "Service"):
                assert svc["spec"]["ports"][0]["port"] == int(port)
    groups = [d for d in docs if d["kind"] == "PodGroup"]
    assert len(groups) == (1 if gang == "volcano" and collective else 0)
