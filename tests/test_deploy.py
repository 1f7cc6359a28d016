"""The deployment files under deploy/ (issue 12, point 4), validated as far as this machine can without a
cluster or a broker: both code locations pass `dagster definitions validate` with their executors; every
pod configuration becomes a real Kubernetes Job through dagster-k8s's own builder (which rejects unknown
Kubernetes fields); the Helm values parse and their pod settings are valid Kubernetes models; the Celery
worker file passes dagster-celery's own config check. Not tested here: `helm template` (no helm binary
or chart here), pods on a cluster, a Celery broker.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
pytest.importorskip("dagster_k8s")
pytest.importorskip("dagster_celery")


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.parent.name + "_definitions", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("location", ["k8s", "celery"])
def test_code_location_validates(location):
    env = {"NX_CELERY_BROKER": "redis://127.0.0.1:6379/0", "NX_CELERY_BACKEND": "redis://127.0.0.1:6379/1"}
    out = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-f",
                          str(DEPLOY / location / "definitions.py"), "-d", str(ROOT)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env={**os.environ, **env, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0 and "Validation successful" in out.stdout + out.stderr, out.stdout + out.stderr


def test_steps_go_to_the_pool_of_their_kind():
    from assets.deployment import step_kinds

    kinds = step_kinds()
    # `activations` is one step for both lineages' records and gelu_fix_impact (one pass over the corpus)
    assert {s for s, k in kinds.items() if k == "gpu"} == {"activations", "connections"}
    assert {s for s, k in kinds.items() if k == "llm"} == {
        "pre_fix__explanations", "post_fix__explanations", "pre_fix__scores", "post_fix__scores",
        "post_fix__scores_of_pre_fix_explanations", "pre_fix__classification_scores",
        "post_fix__classification_scores", "post_fix__classification_scores_of_pre_fix_explanations",
        "pre_fix__intruder_scores", "post_fix__intruder_scores", "method_check"}

    d = _load(DEPLOY / "k8s" / "definitions.py").defs()
    jobs = {j.name: j for j in d.resolve_all_job_defs()}
    assert {n.name for n in jobs["gpu_job"].graph.nodes} == {s for s, k in kinds.items() if k == "gpu"}
    # method_check runs on request (`nxd check-method`), never as part of a kind's job
    assert {n.name for n in jobs["llm_job"].graph.nodes} == {s for s, k in kinds.items() if k == "llm"} - {
        "method_check"}
    import dagster as dg

    partitioned = [a for a in d.assets if a.partitions_def is not None]
    assert partitioned and all(a.backfill_policy == dg.BackfillPolicy.multi_run(1) for a in partitioned)


@pytest.mark.parametrize("bad", ["0", "two", "-1"])
def test_layers_per_run_must_be_a_positive_integer(bad, monkeypatch):
    from assets.deployment import deployment_definitions
    from nx_dagster.errors import NxInputError

    import dagster as dg

    monkeypatch.setenv("NX_LAYERS_PER_RUN", bad)
    with pytest.raises(NxInputError, match="NX_LAYERS_PER_RUN"):
        deployment_definitions(dg.in_process_executor)


def test_k8s_step_pods_are_valid_kubernetes_jobs():
    """The executor config passes k8s_job_executor's schema, and dagster-k8s builds each step's Job from
    it with the builder the executor uses, which raises on any field Kubernetes does not have."""
    from dagster._config import validate_config
    from dagster_k8s import k8s_job_executor
    from dagster_k8s.job import DagsterK8sJobConfig, UserDefinedDagsterK8sConfig, construct_dagster_k8s_job

    from assets.deployment import step_kinds

    config = _load(DEPLOY / "k8s" / "definitions.py").executor_config(step_kinds())
    assert validate_config(k8s_job_executor.config_schema.config_type, config).success
    job_config = DagsterK8sJobConfig(job_image="REGISTRY/nx-dagster:0.1.0", dagster_home="/opt/dagster/dagster_home",
                                     instance_config_map="nx-instance")

    def pod(step: str):
        user = config["per_step_k8s_config"].get(step, config["step_k8s_config"])
        job = construct_dagster_k8s_job(job_config, ["dagster", "api", "execute_step"], "nx-step",
                                        user_defined_k8s_config=UserDefinedDagsterK8sConfig.from_dict(user))
        return job.spec.template.spec

    gpu, llm, cpu = pod("activations"), pod("pre_fix__scores"), pod("sequences")
    assert gpu.node_selector == {"nx-dagster/pool": "gpu"} and gpu.tolerations[0].key == "nvidia.com/gpu"
    assert gpu.containers[0].resources.limits == {"nvidia.com/gpu": "1"}
    assert llm.node_selector == {"nx-dagster/pool": "llm"} and not llm.containers[0].resources.limits
    assert cpu.node_selector == {"nx-dagster/pool": "cpu"}
    with pytest.raises(Exception, match="nodeSelectr"):
        construct_dagster_k8s_job(job_config, [], "nx-bad", user_defined_k8s_config=UserDefinedDagsterK8sConfig.from_dict(
            {"pod_spec_config": {"nodeSelectr": {"a": "b"}}}))


def test_helm_values_parse_and_their_pod_settings_are_kubernetes_models():
    import kubernetes.client as k8s
    from dagster_k8s.models import k8s_model_from_dict, k8s_snake_case_dict

    values = yaml.safe_load((DEPLOY / "k8s" / "values.yaml").read_text())
    assert values["postgresql"]["enabled"] is False  # the external server of the catalog
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["dagsterDaemon"]["runRetries"]["enabled"] and values["dagsterDaemon"]["runMonitoring"]["enabled"]
    deployment = values["dagster-user-deployments"]["deployments"][0]
    assert deployment["dagsterApiGrpcArgs"][:2] == ["--python-file", "deploy/k8s/definitions.py"]
    assert (ROOT / deployment["dagsterApiGrpcArgs"][1]).exists()
    run = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]
    spec = k8s_model_from_dict(k8s.V1PodSpec, k8s_snake_case_dict(k8s.V1PodSpec, {**run["podSpecConfig"], "containers": []}))
    assert spec.node_selector == {"nx-dagster/pool": "cpu"}
    container = k8s_model_from_dict(k8s.V1Container, k8s_snake_case_dict(k8s.V1Container, {**run["containerConfig"], "name": "run"}))
    assert container.resources.requests["memory"] == "2Gi"


def test_celery_worker_config_passes_dagster_celerys_check(monkeypatch):
    from dagster_celery.cli import get_validated_config

    monkeypatch.setenv("NX_CELERY_BROKER", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("NX_CELERY_BACKEND", "redis://127.0.0.1:6379/1")
    config = get_validated_config(str(DEPLOY / "celery" / "celery.yaml"))
    assert config["broker"] == "redis://127.0.0.1:6379/0"
    assert config["config_source"]["worker_prefetch_multiplier"] == 1


def test_instance_yaml_is_a_valid_postgres_instance(tmp_path):
    """deploy/dagster.yaml passes Dagster's instance config check (tests/test_dagster_postgres.py runs
    it against a real server)."""
    from dagster._core.instance.config import dagster_instance_config

    (tmp_path / "dagster.yaml").write_text((DEPLOY / "dagster.yaml").read_text())
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["storage"]["postgres"]["postgres_url"] == {"env": "NX_DAGSTER_PG_URL"}
    assert config["concurrency"]["pools"]["default_limit"] == 1
