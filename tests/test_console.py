"""What `nxd run` prints for a failure (assets/console.py): one line, with the error's first line, for a
step's failure and for a run's failure outside every step (executor, instance storage)."""

from __future__ import annotations

import logging

from dagster._core.events import DagsterEvent, DagsterEventType, JobFailureData, StepFailureData
from dagster._utils.error import SerializableErrorInfo

from assets.console import _OneLineFormatter


def _line(event: DagsterEvent, message: str, step_key: str | None = None) -> str:
    record = logging.LogRecord("nxd", logging.ERROR, __file__, 1, message, None, None)
    record.dagster_meta = {"orig_message": message, "dagster_event": event, "step_key": step_key}
    return _OneLineFormatter().format(record)


def test_a_run_failure_outside_the_steps_prints_its_error():
    error = SerializableErrorInfo("InternalError: (psycopg2.errors.InFailedSqlTransaction) "
                                  "current transaction is aborted\n", ["  File x\n"], "InternalError")
    event = DagsterEvent(DagsterEventType.RUN_FAILURE.value, "nxd_run",
                         event_specific_data=JobFailureData(error=error))
    line = _line(event, 'Execution of run for "nxd_run" failed. An exception was thrown during execution.')
    assert line.endswith("run: Execution of run for \"nxd_run\" failed. An exception was thrown during execution. "
                         "InternalError: (psycopg2.errors.InFailedSqlTransaction) current "
                         "transaction is aborted"), line
    assert "File x" not in line and "\n" not in line


def test_a_step_failure_prints_its_error_without_the_stack_trace():
    error = SerializableErrorInfo("ValueError: layer 7 is out of range\n", ["  File y\n"], "ValueError")
    event = DagsterEvent(DagsterEventType.STEP_FAILURE.value, "nxd_run", step_key="activations",
                         event_specific_data=StepFailureData(error=error, user_failure_data=None))
    line = _line(event, "Execution of step failed.\n\nStack Trace:\n  File y", step_key="activations")
    assert line.endswith("activations: Execution of step failed. ValueError: layer 7 is out of range"), line


def test_an_input_error_prints_only_its_own_line():
    error = SerializableErrorInfo("dagster._core.definitions.events.Failure: layers '9': is past the last layer "
                                  "(8). Fix: use 0-7\n", [], "Failure")
    event = DagsterEvent(DagsterEventType.STEP_FAILURE.value, "nxd_run", step_key="activations",
                         event_specific_data=StepFailureData(error=error, user_failure_data=None))
    line = _line(event, "Execution of step failed.", step_key="activations")
    assert line.endswith("activations: Execution of step failed. layers '9': is past the last layer (8). Fix: use 0-7")
