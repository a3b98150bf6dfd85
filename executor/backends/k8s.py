"""The `kubernetes` backend: one Kubernetes Job per run, the image pinned by registry digest.

The only module importing the `kubernetes` client; its errors become ClusterUnavailable (an
EngineUnavailable, so the record says `infra_error`) in `cluster_errors` and nowhere else.

    run(job):  push the sealed image from this machine's engine to the registry -> REPO@sha256:…
               create a NetworkPolicy denying all traffic of the run's pods, [a ConfigMap for /in],
               and the Job (job_manifest: the hardening of Engine.create, in Kubernetes terms)
               poll: the live pod spec must still carry every field we set (check_pod: no mutating
               webhook weakened or replaced it), and the pod's imageID the pinned digest (check_image)
               follow the pod's log; /out comes back at its end (executor/backends/outlog.py: an emptyDir
               vanishes with the pod), decoded into job.out_dir
               delete the Job (Foreground), the policy and the ConfigMap, whatever happened

Differences from a Docker run, by design of Kubernetes: there is no per-pod `--network none`, so
isolation is a NetworkPolicy, which only a CNI that enforces NetworkPolicy (Calico, Cilium, …)
applies; there is no per-pod pids limit (the node's podPidsLimit applies); the deadline
(activeDeadlineSeconds) counts from the Job's creation, so scheduling and the image pull are in it.
"""

from __future__ import annotations

import base64
import contextlib
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import urllib3
from kubernetes import client as k8s
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException, OpenApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.utils import parse_quantity

from executor.backends.interface import Finished, Job, ensure_image, verify_image
from executor.docker_engine import IN_DIR, LABEL_EXPERIMENT, OUT_DIR, Engine, prepare_out_dir
from executor.errors import ConfigError, EngineUnavailable, IdentityMismatch, SealabError
from executor.hardening import HOME_DIR, Hardening
from executor.backends.outlog import unpack, wrap
from executor.registry import BadReference, parse_digest_ref, parse_registry
from executor.image.seal import REVISION

CONTAINER = "experiment"
LABEL_PHASE = "sealab.phase"
LOG_ALLOWANCE_MB = 256  # ephemeral storage beyond /out: the container's log and writable layer
CONFIG_MAP_MAX = 1000 * 1024  # a ConfigMap holds at most 1 MiB; /in must fit in one
PULL_FAILURES = ("ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError",
                 "CreateContainerError")


class ClusterUnavailable(EngineUnavailable):
    """The cluster (or the registry it pulls from) failed; the run's record says `infra_error`."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        SealabError.__init__(self, f"Kubernetes: {problem}")


@contextlib.contextmanager
def cluster_errors(doing: str) -> Iterator[None]:
    """Translate the client's errors (API, transport, kubeconfig) into sealab errors: the one choke point."""
    try:
        yield
    except ApiException as exc:
        raise ClusterUnavailable(f"{doing}: {exc.status} {exc.reason}: {_api_message(exc)}"[:400]) from exc
    except ConfigException as exc:
        raise ConfigError("sealab.toml", f"backend kubernetes: {doing}: {exc}") from exc
    except (OpenApiException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise ClusterUnavailable(f"{doing}: {type(exc).__name__}: {exc}"[:400]) from exc


def _api_message(exc: ApiException) -> str:
    import json

    try:
        return str(json.loads(exc.body or "{}").get("message") or "")
    except ValueError:
        return str(exc.body or "")[:200]


@dataclass(frozen=True, slots=True)
class K8sOptions:
    """The `[backend]` table of sealab.toml, for name = "kubernetes"."""

    registry: str = ""  # HOST[:PORT]/REPO both this machine's engine pushes to and the nodes pull from
    namespace: str = "default"
    kubeconfig: str | None = None  # None: $KUBECONFIG or ~/.kube/config; in_cluster: the pod's service account
    context: str | None = None
    in_cluster: bool = False
    gpu_resource: str = "nvidia.com/gpu"
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    image_pull_secret: str | None = None
    ttl_s: int = 3600  # ttlSecondsAfterFinished: a Job left behind by a crash of sealab goes away
    log_out_mb: int = 8  # /out files that may travel through the pod log (see executor/backends/outlog.py)
    start_timeout_s: int = 900  # past the deadline, how long sealab waits for the Job to end at all
    poll_s: float = 2.0

    @classmethod
    def parse(cls, options: Mapping[str, object]) -> K8sOptions:
        """Check and convert the `[backend]` options.

        Raises:
            ConfigError: an unknown key, a missing or malformed registry, or a value of the wrong type.
        """
        known = set(cls.__dataclass_fields__) | {"name"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError("sealab.toml", f"[backend] kubernetes: unknown keys {', '.join(unknown)} "
                                             f"(known: {', '.join(sorted(known - {'name'}))})")
        registry = options.get("registry")
        if not isinstance(registry, str) or not registry:
            raise ConfigError("sealab.toml", 'backend "kubernetes" needs [backend] registry = "HOST[:PORT]/REPO" '
                                             "(pushed to from here, pulled from by the nodes)")
        try:
            parse_registry(registry)
        except BadReference as exc:
            raise ConfigError("sealab.toml", f"[backend] registry: {exc}") from None
        values: dict[str, Any] = {"registry": registry}
        try:
            for key in ("namespace", "kubeconfig", "context", "gpu_resource", "image_pull_secret"):
                if options.get(key) is not None:
                    values[key] = _typed(options[key], str, key)
            for key in ("ttl_s", "log_out_mb", "start_timeout_s"):
                if options.get(key) is not None:
                    values[key] = _typed(options[key], int, key)
            if options.get("poll_s") is not None:
                values["poll_s"] = float(_typed(options["poll_s"], (int, float), "poll_s"))
            if options.get("in_cluster") is not None:
                values["in_cluster"] = _typed(options["in_cluster"], bool, "in_cluster")
            selector = options.get("node_selector") or {}
            if isinstance(selector, str):  # sealab.toml's [backend] holds scalars: "pool=h100,zone=a"
                selector = dict(_pair(item, "node_selector") for item in selector.split(",") if item.strip())
            selector = _typed(selector, dict, "node_selector")
            values["node_selector"] = {str(k): _typed(v, str, f"node_selector.{k}") for k, v in selector.items()}
            tolerations = options.get("tolerations") or []
            if isinstance(tolerations, str):  # "key[=value][:Effect],…", as in `kubectl taint`
                tolerations = [_toleration(item) for item in tolerations.split(",") if item.strip()]
            tolerations = _typed(tolerations, list, "tolerations")
            values["tolerations"] = tuple(_typed(t, dict, "tolerations[]") for t in tolerations)
        except (TypeError, ValueError) as exc:
            raise ConfigError("sealab.toml", f"[backend] {exc}") from None
        return cls(**values)


def _pair(item: str, key: str) -> tuple[str, str]:
    name, eq, value = item.strip().partition("=")
    if not eq or not name:
        raise ValueError(f"{key}: {item.strip()!r} is not KEY=VALUE")
    return name, value


def _toleration(item: str) -> dict[str, str]:
    """`key[=value][:Effect]` -> a toleration (operator Equal with a value, else Exists)."""
    head, _, effect = item.strip().partition(":")
    key, eq, value = head.partition("=")
    if not key or effect not in ("", "NoSchedule", "PreferNoSchedule", "NoExecute"):
        raise ValueError(f"tolerations: {item.strip()!r} is not key[=value][:NoSchedule|PreferNoSchedule|NoExecute]")
    toleration = {"key": key, "operator": "Equal" if eq else "Exists"}
    if eq:
        toleration["value"] = value
    if effect:
        toleration["effect"] = effect
    return toleration


def _typed(value: Any, kind: Any, key: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{key} = {value!r}: expected {getattr(kind, '__name__', kind)}")
    return value


# -- manifests (pure) --------------------------------------------------------------------------------
def pinned(image_ref: str) -> tuple[str, str]:
    """Split REPO@sha256:… into repository and digest.

    Raises:
        BadReference: anything else (a tag, a tag and a digest, a short digest, a bare image ID).
    """
    try:
        return parse_digest_ref(image_ref)
    except BadReference as exc:
        raise BadReference(f"{image_ref}: not pinned by digest; the kubernetes backend runs only "
                           f"REPO@sha256:<64 hex digits> ({exc})") from None


def job_manifest(job: Job, image_ref: str, options: K8sOptions = K8sOptions(), *,
                 inputs: str | None = None) -> dict[str, Any]:
    """The Job that runs `job` from `image_ref` (REPO@sha256:…), as the JSON the API server takes.

    `inputs`: the name of a ConfigMap mounted read-only at /in. Built with the client's model
    objects, so a misspelt field fails here, then serialised with `sanitize_for_serialization`.

    Raises:
        BadReference: `image_ref` is not pinned by digest (a tag, or a tag and a digest).
    """
    pinned(image_ref)
    res = job.spec.resources
    limits = {"memory": f"{res.memory_mb}Mi", "cpu": f"{math.ceil(res.cpus * 1000)}m",
              "ephemeral-storage": f"{job.out_cap + LOG_ALLOWANCE_MB}Mi"}
    if res.gpus > 0:
        limits[options.gpu_resource] = str(res.gpus)
    # /tmp and HOME are memory-backed like the Docker backend's tmpfs (charged to the memory limit);
    # /out is disk, capped like the bind mount; /dev/shm as Docker's shm_size for GPU runs.
    volumes = [k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=f"{res.tmp_mb}Mi")),
               k8s.V1Volume(name="home", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=f"{res.home_mb}Mi")),
               k8s.V1Volume(name="out", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit=f"{job.out_cap}Mi"))]
    mounts = [k8s.V1VolumeMount(name="tmp", mount_path="/tmp"), k8s.V1VolumeMount(name="home", mount_path=HOME_DIR),
              k8s.V1VolumeMount(name="out", mount_path=OUT_DIR)]
    if res.gpus > 0:
        volumes.append(k8s.V1Volume(name="shm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit="1Gi")))
        mounts.append(k8s.V1VolumeMount(name="shm", mount_path="/dev/shm"))
    if inputs is not None:
        volumes.append(k8s.V1Volume(name="in", config_map=k8s.V1ConfigMapVolumeSource(name=inputs, default_mode=0o444)))
        mounts.append(k8s.V1VolumeMount(name="in", mount_path=IN_DIR, read_only=True))
    seccomp = k8s.V1SeccompProfile(type="RuntimeDefault")
    context = Hardening.of(res).k8s_security_context()
    drop = context.pop("drop")
    container = k8s.V1Container(
        name=CONTAINER, image=image_ref, image_pull_policy="IfNotPresent",
        command=wrap(job.command or job.sealed.cmd, options.log_out_mb << 20),
        env=[k8s.V1EnvVar(name=k, value=v) for k, v in sorted(job.env.items())],
        resources=k8s.V1ResourceRequirements(limits=limits), volume_mounts=mounts,
        security_context=k8s.V1SecurityContext(**context, capabilities=k8s.V1Capabilities(drop=drop),
                                               seccomp_profile=seccomp),
    )
    pod = k8s.V1PodSpec(
        containers=[container], volumes=volumes, restart_policy="Never",
        automount_service_account_token=False, enable_service_links=False,
        host_network=False, host_pid=False, host_ipc=False, share_process_namespace=False,
        termination_grace_period_seconds=15,  # the wrapper needs a moment to print /out
        security_context=k8s.V1PodSecurityContext(run_as_non_root=True, run_as_user=context["run_as_user"],
                                                  run_as_group=context["run_as_group"],
                                                  fs_group=context["run_as_group"], seccomp_profile=seccomp),
        node_selector=dict(options.node_selector) or None,
        tolerations=[k8s.V1Toleration(**_snake(t)) for t in options.tolerations] or None,
        image_pull_secrets=[k8s.V1LocalObjectReference(name=options.image_pull_secret)]
        if options.image_pull_secret else None,
    )
    labels = _labels(job)
    body = k8s.V1Job(
        api_version="batch/v1", kind="Job",
        metadata=k8s.V1ObjectMeta(name=job.name, namespace=options.namespace, labels=labels,
                                  annotations={"sealab.image": job.sealed.image_id}),
        spec=k8s.V1JobSpec(
            backoff_limit=0, completions=1, parallelism=1, active_deadline_seconds=math.ceil(job.deadline),
            ttl_seconds_after_finished=options.ttl_s,
            template=k8s.V1PodTemplateSpec(metadata=k8s.V1ObjectMeta(labels=labels), spec=pod)),
    )
    return k8s.ApiClient().sanitize_for_serialization(body)


def network_policy(job: Job, namespace: str = "default") -> dict[str, Any]:
    """A NetworkPolicy denying all ingress and egress of the run's pods (no rules of either kind).

    Effective only on a cluster whose CNI enforces NetworkPolicy (Calico, Cilium, …).
    """
    body = k8s.V1NetworkPolicy(
        api_version="networking.k8s.io/v1", kind="NetworkPolicy",
        metadata=k8s.V1ObjectMeta(name=f"{job.name}-isolate", namespace=namespace, labels=_labels(job)),
        spec=k8s.V1NetworkPolicySpec(
            pod_selector=k8s.V1LabelSelector(match_labels={LABEL_EXPERIMENT: job.experiment_id, LABEL_PHASE: job.phase}),
            policy_types=["Ingress", "Egress"]),
    )
    return k8s.ApiClient().sanitize_for_serialization(body)


def inputs_config_map(job: Job, namespace: str = "default") -> dict[str, Any] | None:
    """The ConfigMap holding the regular files of `job.in_dir` (None without one), immutable.

    Raises:
        ClusterUnavailable: the files exceed what a ConfigMap holds (1 MiB).
    """
    if job.in_dir is None:
        return None
    files = {p.name: p.read_bytes() for p in sorted(job.in_dir.iterdir()) if p.is_file()}
    size = sum(len(data) for data in files.values())
    if size > CONFIG_MAP_MAX:
        raise ClusterUnavailable(f"/in holds {size} bytes; the kubernetes backend passes /in as a ConfigMap "
                                 f"(at most {CONFIG_MAP_MAX} bytes)")
    body = k8s.V1ConfigMap(
        api_version="v1", kind="ConfigMap", immutable=True,
        metadata=k8s.V1ObjectMeta(name=f"{job.name}-in", namespace=namespace, labels=_labels(job)),
        binary_data={name: base64.b64encode(data).decode() for name, data in files.items()},
    )
    return k8s.ApiClient().sanitize_for_serialization(body)


def _labels(job: Job) -> dict[str, str]:
    return {LABEL_EXPERIMENT: job.experiment_id, LABEL_PHASE: job.phase,
            "sealab.commit": job.sealed.labels.get(REVISION, "")}


def _snake(toleration: Mapping[str, Any]) -> dict[str, Any]:
    """A toleration as written in YAML (tolerationSeconds) -> the model's keyword (toleration_seconds)."""
    return {"".join("_" + c.lower() if c.isupper() else c for c in k): v for k, v in toleration.items()}


# -- checks and status (pure) ------------------------------------------------------------------------
def check_image(image_id: str, image_ref: str) -> None:
    """The image the container runs (`status.containerStatuses[].imageID`) must be the pinned digest.

    Raises:
        IdentityMismatch: another digest (or none).
    """
    _repo, digest = pinned(image_ref)
    actual = image_id.rpartition("@")[2] if "@" in image_id else image_id
    if actual != digest:
        raise IdentityMismatch("image the pod runs", digest, image_id or "none reported")


def check_pod(pod_spec: Mapping[str, Any], manifest: Mapping[str, Any]) -> None:
    """Every field the Job's pod template sets must hold in the live pod, as in Docker's check_container.

    Fields the API server or an admission plugin adds are allowed; a changed value, a removed field,
    an extra element in a list (a sidecar, an injected variable, a volume) or an init container is not. Tolerations are
    exempt (admission adds the default ones; they decide placement, not isolation).

    Raises:
        IdentityMismatch: naming the first difference.
    """
    wanted = manifest["spec"]["template"]["spec"]
    for path, expected, actual in _differences(wanted, pod_spec, "spec"):
        raise IdentityMismatch(f"pod {path}", repr(expected), repr(actual))
    for key in ("initContainers", "ephemeralContainers"):  # code that would run beside the sealed image
        if pod_spec.get(key):
            raise IdentityMismatch(f"pod spec.{key}", "none", repr(pod_spec[key])[:200])


def _differences(expected: Any, actual: Any, path: str) -> Iterator[tuple[str, Any, Any]]:
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            yield path, expected, actual
            return
        for key, value in expected.items():
            if key != "tolerations":
                yield from _differences(value, actual.get(key), f"{path}.{key}")
    elif isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            yield path, expected, actual
            return
        for i, (e, a) in enumerate(zip(expected, actual)):
            yield from _differences(e, a, f"{path}[{i}]")
    elif expected != actual and not _same_quantity(expected, actual):
        yield path, expected, actual


def _same_quantity(a: Any, b: Any) -> bool:
    """"4096Mi" and "4Gi", "2000m" and "2": the API server may canonicalise quantities."""
    if not (isinstance(a, str) and isinstance(b, str)):
        return False
    try:
        return parse_quantity(a) == parse_quantity(b)
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Ending:
    """How a finished Job ended, as its status and its pod's say."""

    exit_code: int | None
    oom_killed: bool
    timed_out: bool
    problem: str | None = None  # the pod was stopped by the cluster (evicted, …): why


def ending(job: k8s.V1Job, pod: k8s.V1Pod | None) -> Ending | None:
    """How the Job ended, or None while it has not (pure: from the V1Job and its V1Pod, if still there).

    DeadlineExceeded (of the Job or of the pod) is a timeout; a terminated container reports its exit
    code, and the reason OOMKilled an OOM; an evicted pod (e.g. /out over its sizeLimit) a problem.

    Raises:
        ClusterUnavailable: the Job failed without its container ever ending (e.g. never scheduled).
    """
    conditions = {c.type: c for c in (job.status.conditions if job.status else None) or [] if c.status == "True"}
    if "Complete" not in conditions and "Failed" not in conditions:
        return None
    failed = conditions.get("Failed")
    status = pod.status if pod is not None else None
    if (failed is not None and failed.reason == "DeadlineExceeded") or (status and status.reason == "DeadlineExceeded"):
        return Ending(None, False, True)
    terminated = _terminated(pod)
    if status is not None and status.reason == "Evicted":
        return Ending(terminated.exit_code if terminated else None, False, False,
                      f"the cluster evicted the pod: {status.message or 'no message'}")
    if terminated is not None:
        return Ending(terminated.exit_code, terminated.reason == "OOMKilled", False)
    why = f"{failed.reason}: {failed.message}" if failed is not None else "no container exit reported"
    raise ClusterUnavailable(f"job {job.metadata.name if job.metadata else '?'} ended without its container "
                             f"ending ({why})")


def _container_status(pod: k8s.V1Pod | None) -> k8s.V1ContainerStatus | None:
    statuses = (pod.status.container_statuses if pod is not None and pod.status else None) or []
    return next((s for s in statuses if s.name == CONTAINER), None)


def _terminated(pod: k8s.V1Pod | None) -> k8s.V1ContainerStateTerminated | None:
    status = _container_status(pod)
    if status is None:
        return None
    return (status.state.terminated if status.state else None) or \
        (status.last_state.terminated if status.last_state else None)


def waiting_failure(pod: k8s.V1Pod | None) -> str | None:
    """Why the container cannot start (an image it cannot pull, a bad config), or None."""
    status = _container_status(pod)
    waiting = status.state.waiting if status is not None and status.state else None
    if waiting is not None and waiting.reason in PULL_FAILURES:
        return f"{waiting.reason}: {waiting.message or ''}".strip()
    return None


# -- the backend -------------------------------------------------------------------------------------
class KubernetesBackend:
    """Runs each Job as a Kubernetes Job in `options.namespace`, from images pushed to `options.registry`."""

    name = "kubernetes"

    def __init__(self, options: K8sOptions, api: k8s.ApiClient, engine: Engine | None = None) -> None:
        self.options, self.api, self._engine = options, api, engine
        self.batch, self.core, self.net = k8s.BatchV1Api(api), k8s.CoreV1Api(api), k8s.NetworkingV1Api(api)

    @classmethod
    def from_options(cls, options: Mapping[str, object], engine: Engine | None = None) -> KubernetesBackend:
        """Connect with the kubeconfig (or the in-cluster service account) and check the cluster answers.

        Raises:
            ConfigError: bad `[backend]` options or no usable kubeconfig.
            ClusterUnavailable: the API server does not answer.
        """
        opts = K8sOptions.parse(options)
        with cluster_errors("loading the kubeconfig"):
            if opts.in_cluster:
                kube_config.load_incluster_config()
                api = k8s.ApiClient()
            else:
                api = kube_config.new_client_from_config(config_file=opts.kubeconfig, context=opts.context)
        backend = cls(opts, api, engine)
        with cluster_errors("reaching the API server"):
            k8s.VersionApi(api).get_code(_request_timeout=30)
        return backend

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = Engine.connect()
        return self._engine

    def publish(self, job: Job) -> str:
        """Push the sealed image (loaded and verified in this machine's engine first); returns REPO@sha256:…."""
        sealed, repo = job.sealed, self.options.registry
        ensure_image(self.engine, sealed)
        verify_image(self.engine, sealed)
        tag = f"{sealed.labels[REVISION][:12]}-{sealed.image_id.removeprefix('sha256:')[:12]}"
        self.engine.tag(sealed.image_id, f"{repo}:{tag}")
        digest, problem = self.engine.push_image(repo, tag)
        if problem or not digest:
            raise ClusterUnavailable(f"push of {sealed.image_id[:19]} to {repo} failed: {problem}")
        try:
            parse_digest_ref(f"{repo}@{digest}")
        except BadReference as exc:
            raise ClusterUnavailable(f"the registry answered an unusable digest: {exc}") from exc
        return f"{repo}@{digest}"

    def run(self, job: Job) -> Finished:
        ns, timings = self.options.namespace, {}
        t = time.monotonic()
        image_ref = self.publish(job)
        timings["push"] = time.monotonic() - t
        inputs = inputs_config_map(job, ns)
        manifest = job_manifest(job, image_ref, self.options, inputs=inputs["metadata"]["name"] if inputs else None)
        prepare_out_dir(job.out_dir)
        t = time.monotonic()
        try:
            with cluster_errors(f"creating job {job.name}"):
                # the policy first, so that the pod never exists without it
                self.net.create_namespaced_network_policy(ns, network_policy(job, ns))
                if inputs is not None:
                    self.core.create_namespaced_config_map(ns, inputs)
                self.batch.create_namespaced_job(ns, manifest)
            end, log, node = self._watch(job, manifest, image_ref)
        except BaseException:
            with contextlib.suppress(SealabError):  # the first failure is the one to report
                self._delete(job.name)
            raise
        self._delete(job.name)
        timings["run"] = time.monotonic() - t
        cap = self.options.log_out_mb << 20
        unpacked = unpack(log, cap)
        for name, data in unpacked.files.items():
            (job.out_dir / name).write_bytes(data)
        problem = end.problem
        if problem is None and unpacked.problem and end.exit_code is not None and not end.oom_killed:
            problem = f"/out was not recovered: {unpacked.problem}"
        return Finished(end.exit_code, end.oom_killed, end.timed_out, job.store_output([unpacked.output]),
                        f"kubernetes:{ns}/{node or '?'}", timings, problem)

    def _watch(self, job: Job, manifest: Mapping[str, Any], image_ref: str) -> tuple[Ending, bytes, str]:
        """Poll the Job until it ends; check the pod and its image; follow its log. Returns (ending, log, node)."""
        ns, name = self.options.namespace, job.name
        give_up = time.monotonic() + math.ceil(job.deadline) + self.options.start_timeout_s
        follower: _LogFollower | None = None
        checked = False
        pod: k8s.V1Pod | None = None
        while True:
            with cluster_errors(f"reading job {name}"):
                status = self.batch.read_namespaced_job_status(name, ns)
                pods = self.core.list_namespaced_pod(ns, label_selector=f"job-name={name}").items
            pod = pods[0] if pods else pod
            if pods and not checked:
                check_pod(self.api.sanitize_for_serialization(pods[0].spec), manifest)
                checked = True
            failure = waiting_failure(pods[0] if pods else None)
            if failure is not None:
                raise ClusterUnavailable(f"pod of {name} cannot start: {failure}"[:400])
            container = _container_status(pods[0] if pods else None)
            if container is not None and container.image_id and follower is None:
                check_image(container.image_id, image_ref)
                follower = _LogFollower(self.core, pods[0].metadata.name, ns, (self.options.log_out_mb << 22) + (64 << 20))
            end = ending(status, pods[0] if pods else None)
            if end is not None:
                break
            if time.monotonic() > give_up:
                raise ClusterUnavailable(f"job {name} has not ended {self.options.start_timeout_s} s after its deadline")
            time.sleep(self.options.poll_s)
        if follower is None:
            if end.timed_out:
                raise ClusterUnavailable(f"the pod of {name} never started before the deadline "
                                         f"({math.ceil(job.deadline)} s from the Job's creation)")
            raise ClusterUnavailable(f"job {name} ended, but no container of it was seen running")
        node = pod.spec.node_name if pod is not None and pod.spec else ""
        return end, follower.result(), node or ""

    def _delete(self, name: str) -> None:
        """Delete the Job (and, Foreground, its pod), its NetworkPolicy and ConfigMap; absent ones are fine."""
        ns = self.options.namespace
        foreground = k8s.V1DeleteOptions(propagation_policy="Foreground")
        for delete, what in ((lambda: self.batch.delete_namespaced_job(name, ns, body=foreground), name),
                             (lambda: self.net.delete_namespaced_network_policy(f"{name}-isolate", ns), f"{name}-isolate"),
                             (lambda: self.core.delete_namespaced_config_map(f"{name}-in", ns), f"{name}-in")):
            with cluster_errors(f"deleting {what}"):
                try:
                    delete()
                except ApiException as exc:
                    if exc.status != 404:
                        raise

    def cleanup(self, experiment_id: str) -> list[str]:
        """Delete the Jobs, NetworkPolicies and ConfigMaps labelled with the experiment; returns their names."""
        ns, selector = self.options.namespace, f"{LABEL_EXPERIMENT}={experiment_id}"
        with cluster_errors(f"listing the objects of {experiment_id}"):
            jobs = [j.metadata.name for j in self.batch.list_namespaced_job(ns, label_selector=selector).items]
            policies = [p.metadata.name for p in
                        self.net.list_namespaced_network_policy(ns, label_selector=selector).items]
            maps = [m.metadata.name for m in self.core.list_namespaced_config_map(ns, label_selector=selector).items]
        for name in jobs:
            self._delete(name)
        for name in policies:
            self._delete(name.removesuffix("-isolate"))
        for name in maps:
            self._delete(name.removesuffix("-in"))
        return jobs + policies + maps


class _LogFollower:
    """Follows a container's log in a thread from its start, so that nothing is lost when the pod goes
    (a Job past its deadline deletes it) or the kubelet rotates the file; keeps the last `limit` bytes."""

    def __init__(self, core: k8s.CoreV1Api, pod: str, namespace: str, limit: int) -> None:
        self.core, self.pod, self.namespace, self.limit = core, pod, namespace, limit
        self.data = bytearray()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._follow, daemon=True)
        self.thread.start()

    def _follow(self) -> None:
        try:
            resp = self.core.read_namespaced_pod_log(self.pod, self.namespace, container=CONTAINER, follow=True,
                                                     _preload_content=False)
            try:
                for chunk in resp.stream(1 << 16):
                    self.data += chunk
                    if len(self.data) > self.limit:
                        del self.data[:len(self.data) - self.limit]
            finally:
                resp.release_conn()
        except BaseException as exc:  # reported by result()
            self.error = exc

    def result(self, timeout_s: float = 60.0) -> bytes:
        """The log, once the stream ended (the container exited).

        Raises:
            ClusterUnavailable: the stream failed or did not end within `timeout_s`.
        """
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            raise ClusterUnavailable(f"the log of {self.pod} did not end {timeout_s:g} s after its job")
        if isinstance(self.error, SealabError):
            raise self.error
        if self.error is not None:
            try:
                with cluster_errors(f"reading the log of {self.pod}"):
                    raise self.error
            except SealabError:
                raise
            except BaseException as exc:
                raise ClusterUnavailable(f"reading the log of {self.pod}: {exc!r}"[:400]) from exc
        return bytes(self.data)
