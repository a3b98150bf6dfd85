"""The Kubernetes backend without a cluster: manifests (schema-validated offline), the /out log
protocol, the checks of the live pod, and the status mapping from canned API objects."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import kubernetes_validate
import pytest
from kubernetes import client as k8s

from executor.backends.interface import Job
from executor.errors import ConfigError, IdentityMismatch
from executor.backends.k8s import (ClusterUnavailable, Ending, K8sOptions, check_image, check_pod, ending, inputs_config_map,
                          job_manifest, network_policy, waiting_failure)
from executor.backends.outlog import WRAPPER, unpack, wrap
from executor.registry import BadReference
from executor.image.seal import CMD, REVISION, Sealed
from executor.types import Resources, RunSpec

K8S_VERSION = "1.30"  # a recent schema set bundled by kubernetes-validate
DIGEST = "sha256:" + "ab" * 32
REF = f"registry.example.com:5000/team/sealab@{DIGEST}"
IMAGE_ID = "sha256:" + "cd" * 32


def make_job(tmp_path: Path, gpus: int = 0, **kw) -> Job:
    sealed = Sealed(IMAGE_ID, b"{}", b"", {REVISION: "c0ffee" * 6 + "abcd"}, ())
    spec = RunSpec(budget_s=60.5, grace_s=30, resources=Resources(memory_mb=4096, cpus=1.5, gpus=gpus, out_mb=128))
    return Job("0123abcdef", "train", sealed, spec, tmp_path / "out",
               env={"SEALAB_EXPERIMENT": "0123abcdef", "OMP_NUM_THREADS": "1"}, **kw)


def validate(manifest: dict) -> None:
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


# -- manifests --------------------------------------------------------------------------------------
def test_job_manifest_validates_against_the_kubernetes_schema(tmp_path):
    """The Job (CPU and GPU, with /in) is valid batch/v1 under the bundled schema, in strict mode."""
    validate(job_manifest(make_job(tmp_path), REF))
    opts = K8sOptions(registry="r.example/x", node_selector={"gpu": "h100"}, image_pull_secret="pull",
                      tolerations=({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule",
                                    "tolerationSeconds": 30},))
    validate(job_manifest(make_job(tmp_path, gpus=2), REF, opts, inputs="sealab-0123abcdef-train-in"))


def test_network_policy_and_config_map_validate(tmp_path):
    """The NetworkPolicy and the /in ConfigMap are valid under the bundled schema."""
    validate(network_policy(make_job(tmp_path), "research"))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "windows.bin").write_bytes(bytes(range(256)))
    validate(inputs_config_map(make_job(tmp_path, in_dir=tmp_path / "in"), "research"))


def test_schema_validation_catches_a_broken_manifest(tmp_path):
    """The validation is real: a misspelt field fails strict validation."""
    manifest = job_manifest(make_job(tmp_path), REF)
    manifest["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(manifest)


def test_job_manifest_pins_the_digest_and_carries_every_security_field(tmp_path):
    """Image by digest, non-root read-only hardened container, no token, no links, Never, no retries, deadline."""
    job = make_job(tmp_path)
    m = job_manifest(job, REF, K8sOptions(registry="r.example/x", namespace="research", ttl_s=600))
    assert (m["apiVersion"], m["kind"], m["metadata"]["namespace"]) == ("batch/v1", "Job", "research")
    assert m["metadata"]["name"] == "sealab-0123abcdef-train"
    assert m["metadata"]["labels"]["sealab.experiment"] == "0123abcdef"
    assert m["metadata"]["annotations"]["sealab.image"] == IMAGE_ID
    spec = m["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] == 91  # 60.5 + 30, rounded up
    assert spec["ttlSecondsAfterFinished"] == 600
    assert spec["template"]["metadata"]["labels"]["sealab.experiment"] == "0123abcdef"
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert (pod["hostNetwork"], pod["hostPID"], pod["hostIPC"], pod["shareProcessNamespace"]) == (False,) * 4
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                                      "seccompProfile": {"type": "RuntimeDefault"}}
    [c] = pod["containers"]
    assert c["image"] == REF
    assert c["securityContext"] == {
        "readOnlyRootFilesystem": True, "runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000,
        "allowPrivilegeEscalation": False, "privileged": False, "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"}}
    assert c["env"] == [{"name": "OMP_NUM_THREADS", "value": "1"}, {"name": "SEALAB_EXPERIMENT", "value": "0123abcdef"}]
    assert "envFrom" not in c
    assert c["resources"]["limits"] == {"memory": "4096Mi", "cpu": "1500m", "ephemeral-storage": f"{128 + 256}Mi"}
    assert c["command"] == wrap(CMD, 8 << 20)
    mounts = {v["mountPath"]: v["name"] for v in c["volumeMounts"]}
    assert mounts == {"/tmp": "tmp", "/home/sealab": "home", "/out": "out"}
    volumes = {v["name"]: v["emptyDir"] for v in pod["volumes"]}
    assert volumes == {"tmp": {"medium": "Memory", "sizeLimit": "512Mi"},
                       "home": {"medium": "Memory", "sizeLimit": "64Mi"}, "out": {"sizeLimit": "128Mi"}}


def test_network_policy_denies_all_traffic_of_the_experiment_pods(tmp_path):
    """Both policy types, no rules: nothing in, nothing out, for pods with the experiment's labels."""
    p = network_policy(make_job(tmp_path), "research")
    assert p["spec"] == {"podSelector": {"matchLabels": {"sealab.experiment": "0123abcdef", "sealab.phase": "train"}},
                         "policyTypes": ["Ingress", "Egress"]}
    assert "ingress" not in p["spec"] and "egress" not in p["spec"]


def test_gpu_limits_and_shm_only_with_gpus(tmp_path):
    """nvidia.com/gpu (or the configured resource) and /dev/shm appear only when gpus > 0."""
    cpu = job_manifest(make_job(tmp_path), REF)["spec"]["template"]["spec"]
    assert not any("gpu" in k for k in cpu["containers"][0]["resources"]["limits"])
    assert "shm" not in {v["name"] for v in cpu["volumes"]}
    gpu = job_manifest(make_job(tmp_path, gpus=2), REF)["spec"]["template"]["spec"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}} in gpu["volumes"]
    amd = job_manifest(make_job(tmp_path, gpus=1), REF, K8sOptions(gpu_resource="amd.com/gpu"))
    assert amd["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["amd.com/gpu"] == "1"


@pytest.mark.parametrize("ref", ["registry.example.com/team/sealab:latest", "registry.example.com/team/sealab",
                                 f"registry.example.com/team/sealab:v1@{DIGEST}", "registry.example.com/x@sha256:abc",
                                 IMAGE_ID])
def test_an_image_not_pinned_by_digest_is_refused(tmp_path, ref):
    """A tag, a bare name, tag+digest or a short digest: BadReference naming the expected form."""
    with pytest.raises(BadReference, match=r"REPO@sha256:<64 hex digits>"):
        job_manifest(make_job(tmp_path), ref)


def test_inputs_travel_as_an_immutable_config_map_mounted_read_only(tmp_path):
    """/in's files become binaryData; the pod mounts it read-only; over 1 MiB is refused clearly."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "windows.bin").write_bytes(b"\x00\xff" * 10)
    job = make_job(tmp_path, in_dir=tmp_path / "in")
    cm = inputs_config_map(job)
    assert cm["immutable"] is True
    assert base64.b64decode(cm["binaryData"]["windows.bin"]) == b"\x00\xff" * 10
    pod = job_manifest(job, REF, inputs=cm["metadata"]["name"])["spec"]["template"]["spec"]
    assert {"mountPath": "/in", "name": "in", "readOnly": True} in pod["containers"][0]["volumeMounts"]
    (tmp_path / "in" / "windows.bin").write_bytes(b"x" * (1 << 20))
    with pytest.raises(ClusterUnavailable, match="ConfigMap"):
        inputs_config_map(job)
    assert inputs_config_map(make_job(tmp_path)) is None


def test_options_need_a_registry_and_reject_unknown_keys():
    """[backend] parsing: registry required and well formed, unknown keys and wrong types named."""
    with pytest.raises(ConfigError, match="registry"):
        K8sOptions.parse({"name": "kubernetes"})
    with pytest.raises(ConfigError, match="HOST"):
        K8sOptions.parse({"registry": "Bad Registry"})
    with pytest.raises(ConfigError, match="namepsace"):
        K8sOptions.parse({"registry": "r.example/x", "namepsace": "a"})
    with pytest.raises(ConfigError, match="ttl_s"):
        K8sOptions.parse({"registry": "r.example/x", "ttl_s": "soon"})
    opts = K8sOptions.parse({"name": "kubernetes", "registry": "r.example:5000/x", "namespace": "ml",
                             "context": "gpu", "node_selector": {"pool": "h100"},
                             "tolerations": [{"key": "gpu", "operator": "Exists"}]})
    assert (opts.namespace, opts.context, opts.gpu_resource) == ("ml", "gpu", "nvidia.com/gpu")
    assert opts.node_selector == {"pool": "h100"} and opts.tolerations == ({"key": "gpu", "operator": "Exists"},)


def test_options_take_scalar_forms_that_sealab_toml_allows():
    """[backend] holds scalars only: node_selector "k=v,…" and tolerations "key[=value][:Effect],…" as strings."""
    opts = K8sOptions.parse({"registry": "r.example/x", "node_selector": "pool=h100, zone=a",
                             "tolerations": "nvidia.com/gpu:NoSchedule,team=ml"})
    assert opts.node_selector == {"pool": "h100", "zone": "a"}
    assert opts.tolerations == ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                                {"key": "team", "operator": "Equal", "value": "ml"})
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        K8sOptions.parse({"registry": "r.example/x", "node_selector": "pool"})
    with pytest.raises(ConfigError, match="NoSchedule"):
        K8sOptions.parse({"registry": "r.example/x", "tolerations": "gpu:Never"})


# -- the live pod -----------------------------------------------------------------------------------
def test_check_image_accepts_only_the_pinned_digest():
    """containerStatuses[].imageID must name the pinned digest, whatever repository prefix the runtime shows."""
    check_image(f"registry.example.com:5000/team/sealab@{DIGEST}", REF)
    check_image(f"docker-pullable://registry.example.com:5000/team/sealab@{DIGEST}", REF)
    with pytest.raises(IdentityMismatch, match="image the pod runs"):
        check_image("registry.example.com:5000/team/sealab@sha256:" + "00" * 32, REF)
    with pytest.raises(IdentityMismatch):
        check_image("", REF)


def live_spec(manifest: dict) -> dict:
    """The pod spec as the API server would show it: defaults added, quantities canonicalised."""
    import copy

    spec = copy.deepcopy(manifest["spec"]["template"]["spec"])
    spec.update(dnsPolicy="ClusterFirst", schedulerName="default-scheduler", nodeName="gpu-node-1",
                tolerations=[{"key": "node.kubernetes.io/not-ready", "operator": "Exists"}])
    c = spec["containers"][0]
    c["terminationMessagePath"] = "/dev/termination-log"
    c["resources"]["requests"] = dict(c["resources"]["limits"])
    c["resources"]["limits"]["memory"] = "4Gi"
    return spec


def test_check_pod_allows_defaults_and_refuses_weakening(tmp_path):
    """Added defaults pass; a dropped securityContext field, a sidecar, an injected variable or another image fail."""
    manifest = job_manifest(make_job(tmp_path), REF)
    check_pod(live_spec(manifest), manifest)
    for mutate, what in [
        (lambda s: s["containers"][0]["securityContext"].pop("readOnlyRootFilesystem"), "readOnlyRootFilesystem"),
        (lambda s: s["containers"].append({"name": "sidecar", "image": "proxy"}), "containers"),
        (lambda s: s["containers"][0]["env"].append({"name": "HTTPS_PROXY", "value": "x"}), "env"),
        (lambda s: s["containers"][0].update(image="registry.example.com/other:latest"), "image"),
        (lambda s: s.update(automountServiceAccountToken=True), "automountServiceAccountToken"),
        (lambda s: s["containers"][0]["resources"]["limits"].update(memory="8Gi"), "memory"),
        (lambda s: s.update(initContainers=[{"name": "seed", "image": "busybox"}]), "initContainers"),
    ]:
        spec = live_spec(manifest)
        mutate(spec)
        with pytest.raises(IdentityMismatch, match=what):
            check_pod(spec, manifest)


# -- status mapping ---------------------------------------------------------------------------------
def job_status(*conditions: tuple[str, str]) -> k8s.V1Job:
    return k8s.V1Job(metadata=k8s.V1ObjectMeta(name="sealab-x-train"), status=k8s.V1JobStatus(conditions=[
        k8s.V1JobCondition(type=t, status="True", reason=r, message=f"{r} happened") for t, r in conditions]))


def pod_with(*, terminated: k8s.V1ContainerStateTerminated | None = None, waiting: str | None = None,
             reason: str | None = None, message: str | None = None) -> k8s.V1Pod:
    state = k8s.V1ContainerState(terminated=terminated,
                                 waiting=k8s.V1ContainerStateWaiting(reason=waiting, message="pull denied")
                                 if waiting else None)
    status = k8s.V1ContainerStatus(name="experiment", image="i", image_id=f"r@{DIGEST}", ready=False,
                                   restart_count=0, state=state)
    return k8s.V1Pod(status=k8s.V1PodStatus(container_statuses=[status], reason=reason, message=message))


def test_a_running_job_has_no_ending():
    """No Complete/Failed condition yet (FailureTarget is not final): None."""
    assert ending(job_status(), pod_with()) is None
    assert ending(job_status(("FailureTarget", "DeadlineExceeded")), pod_with()) is None


def test_status_mapping_from_canned_objects():
    """Complete -> exit 0; Failed with an exit -> that code; OOMKilled -> oom; DeadlineExceeded -> timed out."""
    done = k8s.V1ContainerStateTerminated(exit_code=0, reason="Completed")
    assert ending(job_status(("Complete", "")), pod_with(terminated=done)) == Ending(0, False, False)
    crashed = k8s.V1ContainerStateTerminated(exit_code=3, reason="Error")
    assert ending(job_status(("Failed", "BackoffLimitExceeded")), pod_with(terminated=crashed)) == Ending(3, False, False)
    oom = k8s.V1ContainerStateTerminated(exit_code=137, reason="OOMKilled")
    assert ending(job_status(("Failed", "BackoffLimitExceeded")), pod_with(terminated=oom)) == Ending(137, True, False)
    assert ending(job_status(("Failed", "DeadlineExceeded")), None) == Ending(None, False, True)
    assert ending(job_status(("Failed", "BackoffLimitExceeded")), pod_with(reason="DeadlineExceeded")).timed_out


def test_eviction_is_a_problem_and_a_failure_without_exit_is_infra():
    """An evicted pod carries the kubelet's message; a Job that failed with no container exit is ClusterUnavailable."""
    end = ending(job_status(("Failed", "BackoffLimitExceeded")),
                 pod_with(reason="Evicted", message="Usage of EmptyDir volume \"out\" exceeds the limit \"128Mi\"."))
    assert end.exit_code is None and "EmptyDir volume" in end.problem
    with pytest.raises(ClusterUnavailable, match="BackoffLimitExceeded"):
        ending(job_status(("Failed", "BackoffLimitExceeded")), pod_with())


def test_image_pull_failures_are_reported():
    """ImagePullBackOff is a reason to stop waiting; a first ErrImagePull (retried) is not yet."""
    assert "ImagePullBackOff" in waiting_failure(pod_with(waiting="ImagePullBackOff"))
    assert waiting_failure(pod_with(waiting="ErrImagePull")) is None
    assert waiting_failure(None) is None


# -- /out through the log ---------------------------------------------------------------------------
def block(files: dict[str, bytes], *, tamper=None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    sha, size, count = hashlib.sha256(data).hexdigest(), len(data), len(files)
    if tamper:
        data = tamper(data)
    text = base64.b64encode(data).decode()
    lines = [text[i:i + 76] for i in range(0, len(text), 76)]
    return ("\n==sealab-out v1 begin==\n" + "\n".join(lines) +
            f"\n==sealab-out v1 end files={count} bytes={size} sha256={sha}==\n").encode()


def test_out_round_trip():
    """The run's output comes back without the block; /out's files come back byte for byte."""
    files = {"result.json": b'{"val_bpb": 1.5}', "model.pt": bytes(range(256)) * 100}
    got = unpack(b"step 1\nstep 2" + block(files), 1 << 20)
    assert got.problem is None and got.files == files and got.output == b"step 1\nstep 2"


def test_an_empty_out_round_trips():
    """An empty /out is an empty archive, not a problem."""
    got = unpack(b"log\n" + block({}), 1 << 20)
    assert got.problem is None and got.files == {}


@pytest.mark.parametrize("log, problem", [
    (b"no block at all\n", "does not end with"),
    (block({"result.json": b"{}"})[:-40], "does not end with"),  # truncated end marker
    (block({"result.json": b"{}"}).replace(b"==sealab-out v1 begin==\n", b""), "no begin marker"),
    (block({"result.json": b"{}"}, tamper=lambda d: d[:-5]), "truncated or altered"),
    (block({"result.json": b"{}"}, tamper=lambda d: b"X" + d[1:]), "truncated or altered"),
    (b"\n==sealab-out v1 begin==\n!!!notbase64\n==sealab-out v1 end files=0 bytes=1 sha256=" + b"0" * 64 + b"==\n",
     "not valid base64"),
    (b"\n==sealab-out v1 over-cap files=2 bytes=999999999 cap=8388608==\n", "over the 8388608 bytes"),
    (b"\n==sealab-out v1 error PermissionError: denied==\n", "could not archive"),
])
def test_a_truncated_or_forged_block_is_a_problem_not_a_crash(log, problem):
    """Every defect of the block is reported as a problem, with no files accepted."""
    got = unpack(b"training...\n" + log, 1 << 20)
    assert got.files == {} and problem in got.problem


def test_a_block_printed_by_the_run_is_not_taken_for_the_wrappers():
    """A fake block printed mid-run stays output; only the block that ends the log counts."""
    forged = block({"result.json": b'{"val_bpb": 0.1}'})
    real = block({"result.json": b'{"val_bpb": 1.5}'})
    got = unpack(b"start" + forged + b"more output" + real, 1 << 20)
    assert got.files == {"result.json": b'{"val_bpb": 1.5}'} and forged.strip() in got.output
    assert unpack(b"start" + real + b"printed after", 1 << 20).problem is not None


def test_archive_with_paths_or_over_the_cap_is_refused():
    """Nested names, '..' and an archive that unpacks past the cap are problems."""
    assert "plain file name" in unpack(block({"../etc/passwd": b"x"}), 1 << 20).problem
    assert "plain file name" in unpack(block({"sub/result.json": b"x"}), 1 << 20).problem
    assert "more than 100 bytes" in unpack(block({"big": b"0" * 1000}), 100).problem


def run_wrapper(tmp_path: Path, script: str, cap: int = 1 << 20) -> subprocess.CompletedProcess:
    """The wrapper with /out pointed at a temporary directory (it is /out in the container)."""
    out = tmp_path / "o"
    out.mkdir(exist_ok=True)
    source = WRAPPER.replace('"/out"', repr(str(out)))
    source = source.replace("os.kill(-1, signal.SIGKILL)", "pass")  # not PID 1 here: do not signal everything
    return subprocess.run([sys.executable, "-I", "-S", "-c", source, str(cap), sys.executable, "-c", script],
                          capture_output=True, timeout=60, env={"OUT": str(out), "PATH": os.environ["PATH"]})


def test_the_wrapper_round_trips_through_unpack(tmp_path):
    """The real wrapper: the harness's exit code, its output, then /out's files that unpack reads back."""
    script = ("import os; open(os.environ['OUT'] + '/result.json', 'w').write('{\"val_bpb\": 1.25}');"
              "print('trained'); raise SystemExit(3)")
    done = run_wrapper(tmp_path, script)
    assert done.returncode == 3
    got = unpack(done.stdout, 1 << 20)
    assert got.problem is None and got.files == {"result.json": b'{"val_bpb": 1.25}'}
    assert got.output.strip() == b"trained"


def test_the_wrapper_reports_over_cap_and_a_signal_as_128_plus(tmp_path):
    """/out over the cap prints the over-cap marker; a harness killed by SIGKILL exits 137."""
    script = "import os, signal; open(os.environ['OUT'] + '/big', 'wb').write(b'0' * 5000); os.kill(os.getpid(), 9)"
    done = run_wrapper(tmp_path, script, cap=1000)
    assert done.returncode == 137
    assert "over the 1000 bytes" in unpack(done.stdout, 1000).problem


# -- the backend against a fake API (no cluster) ----------------------------------------------------
class FakeCluster:
    """The BatchV1Api, CoreV1Api and NetworkingV1Api calls the backend makes, over a scripted pod.

    Each job status read advances the pod: pending, then running, then ended as `finish` says.
    """

    def __init__(self, log: bytes, *, image_id: str = f"r@{DIGEST}", finish=("Complete", "", 0, "Completed"),
                 mutate=None, waiting: str | None = None) -> None:
        self.log, self.image_id, self.finish, self.mutate, self.waiting = log, image_id, finish, mutate, waiting
        self.calls: list[str] = []
        self.objects: dict[str, dict] = {}
        self.reads = 0

    # networking
    def create_namespaced_network_policy(self, ns, body):
        self.calls.append("create policy")
        self.objects[body["metadata"]["name"]] = body

    def delete_namespaced_network_policy(self, name, ns):
        self.calls.append("delete policy")
        self._delete(name)

    # core
    def create_namespaced_config_map(self, ns, body):
        self.calls.append("create configmap")
        self.objects[body["metadata"]["name"]] = body

    def delete_namespaced_config_map(self, name, ns):
        self.calls.append("delete configmap")
        self._delete(name)

    def list_namespaced_pod(self, ns, label_selector):
        job = self.objects.get(label_selector.removeprefix("job-name="))
        if job is None or self.reads < 2:
            return k8s.V1PodList(items=[])
        spec = k8s.ApiClient()._ApiClient__deserialize(job["spec"]["template"]["spec"], "V1PodSpec")
        spec.node_name = "gpu-node-1"
        if self.mutate:
            self.mutate(spec)
        state = k8s.V1ContainerState(waiting=k8s.V1ContainerStateWaiting(reason=self.waiting) if self.waiting else None)
        image_id = ""
        if self.reads >= 3 and not self.waiting:
            image_id = self.image_id
            state = k8s.V1ContainerState(running=k8s.V1ContainerStateRunning())
        if self.reads >= 4 and not self.waiting:
            _t, _r, code, reason = self.finish
            state = k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(exit_code=code, reason=reason))
        status = k8s.V1ContainerStatus(name="experiment", image="i", image_id=image_id, ready=False,
                                       restart_count=0, state=state)
        return k8s.V1PodList(items=[k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="pod-1"), spec=spec,
                                              status=k8s.V1PodStatus(container_statuses=[status]))])

    def read_namespaced_pod_log(self, pod, ns, container, follow, _preload_content):
        self.calls.append("follow log")
        log = self.log

        class Stream:
            def stream(self, n):
                yield from (log[i:i + n] for i in range(0, len(log), n))

            def release_conn(self):
                pass

        return Stream()

    # batch
    def create_namespaced_job(self, ns, body):
        self.calls.append("create job")
        self.objects[body["metadata"]["name"]] = body

    def read_namespaced_job_status(self, name, ns):
        self.reads += 1
        conditions = []
        if self.reads >= 4:
            kind, reason, _c, _r = self.finish
            conditions = [k8s.V1JobCondition(type=kind, status="True", reason=reason)]
        return k8s.V1Job(metadata=k8s.V1ObjectMeta(name=name), status=k8s.V1JobStatus(conditions=conditions))

    def delete_namespaced_job(self, name, ns, body):
        assert body.propagation_policy == "Foreground"
        self.calls.append("delete job")
        self._delete(name)

    def _delete(self, name):
        if self.objects.pop(name, None) is None:
            raise k8s.ApiException(status=404, reason="Not Found")


def backend_on(cluster: FakeCluster):
    from executor.backends.k8s import KubernetesBackend

    backend = KubernetesBackend(K8sOptions(registry="registry.example.com:5000/team/sealab", poll_s=0), k8s.ApiClient())
    backend.batch = backend.core = backend.net = cluster
    backend.publish = lambda job: REF
    return backend


def test_run_creates_the_policy_first_and_brings_out_back(tmp_path):
    """Policy before Job; the pod is checked, its log followed; /out lands in out_dir; everything is deleted."""
    cluster = FakeCluster(b"trained\n" + block({"result.json": b'{"val_bpb": 1.5}'}))
    end = backend_on(cluster).run(make_job(tmp_path))
    assert (end.exit_code, end.oom_killed, end.timed_out, end.over_cap) == (0, False, False, None)
    assert end.output == b"trained\n" and end.placement == "kubernetes:default/gpu-node-1"
    assert (tmp_path / "out" / "result.json").read_bytes() == b'{"val_bpb": 1.5}'
    assert cluster.calls[:2] == ["create policy", "create job"]
    assert {"delete job", "delete policy"} <= set(cluster.calls) and cluster.objects == {}


def test_run_maps_oom_and_deadline(tmp_path):
    """OOMKilled and DeadlineExceeded come back as Finished flags, not errors."""
    oom = backend_on(FakeCluster(b"", finish=("Failed", "BackoffLimitExceeded", 137, "OOMKilled"))).run(make_job(tmp_path))
    assert (oom.exit_code, oom.oom_killed, oom.over_cap) == (137, True, None)
    late = backend_on(FakeCluster(b"step 1\n", finish=("Failed", "DeadlineExceeded", 137, "Error"))).run(make_job(tmp_path))
    assert (late.exit_code, late.timed_out, late.output) == (None, True, b"step 1\n")


def test_a_lost_out_archive_makes_a_clear_reason(tmp_path):
    """Exit 0 with a truncated block: no files, and over_cap says why /out was not recovered."""
    cluster = FakeCluster(b"trained\n" + block({"result.json": b"{}"})[:-30])
    end = backend_on(cluster).run(make_job(tmp_path))
    assert end.exit_code == 0 and "/out was not recovered" in end.over_cap
    assert not (tmp_path / "out" / "result.json").exists()


def test_another_image_or_a_weakened_pod_is_refused_and_cleaned_up(tmp_path):
    """A different imageID or a pod without readOnlyRootFilesystem: IdentityMismatch, and nothing is left."""
    cluster = FakeCluster(b"", image_id="r@sha256:" + "00" * 32)
    with pytest.raises(IdentityMismatch, match="image the pod runs"):
        backend_on(cluster).run(make_job(tmp_path))
    assert cluster.objects == {}

    def weaken(spec):
        spec.containers[0].security_context.read_only_root_filesystem = None

    cluster = FakeCluster(b"", mutate=weaken)
    with pytest.raises(IdentityMismatch, match="readOnlyRootFilesystem"):
        backend_on(cluster).run(make_job(tmp_path))
    assert cluster.objects == {}


def test_an_image_the_nodes_cannot_pull_is_infra(tmp_path):
    """ImagePullBackOff stops the wait with ClusterUnavailable (an EngineUnavailable: the record says infra_error)."""
    cluster = FakeCluster(b"", waiting="ImagePullBackOff")
    with pytest.raises(ClusterUnavailable, match="ImagePullBackOff"):
        backend_on(cluster).run(make_job(tmp_path))
    assert cluster.objects == {}


def test_only_the_k8s_module_imports_kubernetes():
    """One module per outside library: executor/backends/k8s.py alone imports the kubernetes client."""
    from tests.unit.test_layering import imports

    everything = {**imports("executor"), **imports("agent"), **imports("policies")}
    users = sorted(p for p, names in everything.items() if any(n.split(".")[0] == "kubernetes" for n in names))
    assert users == ["executor/backends/k8s.py"]
