"""The code location for the Celery executor (dagster-celery), for several machines without a cluster:
each step of a run is a Celery task on the queue of its machine kind (assets/deployment.py), and each
machine runs a worker for the queues it serves:

    dagster-celery worker start -A dagster_celery.app -y deploy/celery/celery.yaml -q gpu   # GPU machines
    dagster-celery worker start -A dagster_celery.app -y deploy/celery/celery.yaml -q llm   # near the LLM endpoint
    dagster-celery worker start -A dagster_celery.app -y deploy/celery/celery.yaml -q cpu

Launch `gpu_job`, `llm_job` and `cpu_job` (or backfills of them): their steps go to those queues.
Materializations started from the asset graph use the default executor, on the `cpu` queue. Broker
and result backend: NX_CELERY_BROKER and NX_CELERY_BACKEND (e.g. redis://HOST:6379/0 and /1).
"""

import dagster as dg
from dagster_celery import celery_executor

from assets.deployment import KINDS, deployment_definitions


def celery_for(queue: str) -> dg.ExecutorDefinition:
    return celery_executor.configured({
        "broker": {"env": "NX_CELERY_BROKER"},
        "backend": {"env": "NX_CELERY_BACKEND"},
        "config_source": {"task_default_queue": queue, "worker_prefetch_multiplier": 1},
    }, name=f"celery_{queue}")


@dg.definitions
def defs() -> dg.Definitions:
    return deployment_definitions(celery_for("cpu"), {kind: celery_for(kind) for kind in KINDS})
