"""The kubernetes backend against a real cluster, where one is configured; skipped (with the reason) elsewhere.

No Kubernetes can run in this project's CI (no API server or kubelet is installable offline; see
docs/cloud-gpu.md), so this is the one test that may skip: issue 5 allows it. To run it:

    SEALAB_K8S_REGISTRY=registry.example.com:5000/sealab   # pushed to from here, pulled from by the nodes
    SEALAB_K8S_CONTEXT=my-cluster                          # or a kubeconfig: $KUBECONFIG / ~/.kube/config
    SEALAB_K8S_NAMESPACE=sealab-test                       # optional (default: default)
    ./dev test tests/integration/test_k8s_live.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import sealab_json

pytestmark = pytest.mark.docker


@pytest.fixture
def cluster_options() -> dict[str, str]:
    """The [backend] options of the configured cluster, or a skip saying what is missing."""
    registry = os.environ.get("SEALAB_K8S_REGISTRY")
    context = os.environ.get("SEALAB_K8S_CONTEXT")
    kubeconfig = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    if not registry:
        pytest.skip("no Kubernetes cluster configured: set SEALAB_K8S_REGISTRY (HOST[:PORT]/REPO the nodes pull "
                    "from) and SEALAB_K8S_CONTEXT or a kubeconfig")
    if not context and not any(Path(p).is_file() for p in kubeconfig.split(os.pathsep)):
        pytest.skip(f"no Kubernetes cluster configured: no SEALAB_K8S_CONTEXT and no kubeconfig at {kubeconfig}")
    options = {"registry": registry, "namespace": os.environ.get("SEALAB_K8S_NAMESPACE", "default")}
    if context:
        options["context"] = context
    return options


def test_a_tiny_experiment_runs_as_a_kubernetes_job(cluster_options, engine, make_workspace):
    """A 2-second experiment runs on the cluster by digest; result.json comes back through the log; nothing is left."""
    from executor.backends.k8s import KubernetesBackend
    from executor.ledger import Ledger
    from executor.run import execute
    from executor.workspace import Workspace

    backend = KubernetesBackend.from_options(cluster_options, engine)
    root = make_workspace(budget=2, grace=120)
    ws = Workspace.open(root)
    record = execute(ws, "HEAD", engine, Ledger(ws.ledger_path), backend=backend).to_dict()
    assert record["status"] == "ok", record["reason"]
    assert record["backend"] == "kubernetes" and record["placement"].startswith("kubernetes:")
    assert isinstance(record["metrics"]["val_bpb"], float)
    assert (ws.outputs / record["id"] / "result.json").is_file()
    assert backend.cleanup(record["id"]) == []
    assert sealab_json("verify", "--all", cwd=root)["mismatches"] == []  # verify holds whatever the backend
