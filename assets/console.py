"""What `nxd run` prints while Dagster runs: one line per event, no stack traces.

Dagster's default console logger prints every failure with its stack trace; a user who gave a wrong input
needs the one line that names it and the fix (`nxd` prints it at the end), and the full trace stays in the
run's event log, shown in the UI. `input_errors_fail_fast` turns an `NxInputError` inside an asset into a
`dg.Failure` that the asset's retry policy does not retry: bad input does not get better by waiting.
"""

from __future__ import annotations

import contextlib
import logging
import sys

import dagster as dg

from nx_dagster.errors import NxInputError


class _OneLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        meta = getattr(record, "dagster_meta", None) or {}
        text = str(meta.get("orig_message") or record.getMessage())
        text = text.split("Stack Trace:", 1)[0]
        text = " ".join(line.strip() for line in text.splitlines() if line.strip())
        event = meta.get("dagster_event")
        err = None
        if event is not None and event.is_step_failure:
            err = event.step_failure_data.error
        elif event is not None and event.is_run_failure:  # an error outside every step (executor, storage)
            err = getattr(event.event_specific_data, "error", None)
        if err is not None:
            first = err.message.strip().splitlines()[0] if err.message.strip() else err.cls_name
            if err.cls_name and err.cls_name in first:  # "pkg.mod.Cls: what" -> "Cls: what" (or just "what")
                rest = first.split(": ", 1)[-1]
                plain = err.cls_name in NxInputError.kinds() or err.cls_name == "Failure"  # say it themselves
                first = rest if plain else f"{err.cls_name}: {rest}"
            text = f"{text} {first}"
        where = meta.get("step_key") or "run"
        return f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} {where}: {text}"


@dg.logger(config_schema={"log_level": dg.Field(str, is_required=False, default_value="INFO")},
           description="One line per event on stderr, stack traces left to the event log and the UI.")
def console_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    logger = logging.Logger("nxd", level=init_context.logger_config["log_level"].upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter())
    logger.addHandler(handler)
    return logger


@contextlib.contextmanager
def input_errors_fail_fast():
    """Re-raise an NxInputError as a Failure that retry policies leave alone (same one-line message)."""
    try:
        yield
    except NxInputError as e:
        raise dg.Failure(description=str(e), allow_retries=False) from e
