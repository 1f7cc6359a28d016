"""The code location for Kubernetes: Dagster's K8sRunLauncher starts one pod per run (a run is one
partition range of layers, see assets/deployment.py), and dagster-k8s's k8s_job_executor starts one pod
per step of that run on the node pool of the step's kind:

- `gpu` steps (activations, gelu_fix_impact, connections): nodes labelled `nx-dagster/pool=gpu`, one
  NVIDIA GPU each (`nvidia.com/gpu: 1`), tolerating the usual `nvidia.com/gpu` taint;
- `llm` steps (explanations, every scorer): nodes labelled `nx-dagster/pool=llm`, small CPU pods;
- `cpu` steps (model, sequences, release): nodes labelled `nx-dagster/pool=cpu`.

Served by `dagster api grpc --python-file deploy/k8s/definitions.py --working-directory /app` (see
deploy/k8s/values.yaml). Edit POD below for your cluster's labels, taints and sizes.
"""

import dagster as dg
from dagster_k8s import k8s_job_executor

from assets.deployment import deployment_definitions, step_kinds

POD = {
    "gpu": {
        "container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"},
                                           "requests": {"cpu": "4", "memory": "24Gi"}}},
        "pod_spec_config": {"node_selector": {"nx-dagster/pool": "gpu"},
                            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
    },
    "llm": {
        "container_config": {"resources": {"requests": {"cpu": "1", "memory": "2Gi"}}},
        "pod_spec_config": {"node_selector": {"nx-dagster/pool": "llm"}},
    },
    "cpu": {
        "container_config": {"resources": {"requests": {"cpu": "2", "memory": "8Gi"}}},
        "pod_spec_config": {"node_selector": {"nx-dagster/pool": "cpu"}},
    },
}


def executor_config(kinds: dict[str, str]) -> dict:
    """k8s_job_executor config: one pod per step, on the node pool of the step's kind (`cpu` for any
    step not in `kinds`). At most 4 step pods of one run at once; the `compute` and `llm` pools bound
    them across all runs."""
    per_step = {step: POD[kind] for step, kind in kinds.items() if kind != "cpu"}
    return {"step_k8s_config": POD["cpu"], "per_step_k8s_config": per_step, "max_concurrent": 4}


@dg.definitions
def defs() -> dg.Definitions:
    return deployment_definitions(k8s_job_executor.configured(executor_config(step_kinds()), name="k8s_nx"))
