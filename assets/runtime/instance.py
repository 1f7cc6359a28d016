"""One data root, one run history: the Dagster instance of a data root lives inside it.

`nxd run` opens `NX_HOME/.dagster` (created on first use with the project's instance settings), so the
runs, materializations and checks of one data root never appear as the latest state of another, and the
history moves or is copied together with the data. `DAGSTER_HOME`, when set, names another instance (for
example a PostgreSQL one shared by several machines); either way an instance serves exactly one data root:
the first run records the root's id in the instance, and a run that would write another root into it
stops with a named error. The repository's dagster.yaml points `dagster dev` at `./nx_data/.dagster`, the
default root's instance; `nxd ui --home DIR` opens the UI of any root.
"""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path

import dagster as dg

from nx_dagster.errors import NxInputError
from nx_dagster.storage import Catalog

INSTANCE_DIR = ".dagster"
ROOT_KEY = "nx_dagster/data_root_id"
# The instance settings of a data root. Storage is left to Dagster's defaults, which live under the
# instance folder itself, so a moved or copied data root keeps its history.
INSTANCE_YAML = """\
# The Dagster instance of this nx_dagster data root (written by nxd; run history lives beside this file).
telemetry:
  enabled: false
concurrency:
  pools:
    default_limit: 1  # one step at a time per pool: "compute" (forward passes), "llm", "catalog"
# For `nxd ui` (dagster dev) and a dagster-daemon; `nxd run` sweeps runs whose process is gone itself.
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
  free_slots_after_run_end_seconds: 60
"""


def instance_home(catalog: Catalog) -> Path:
    """DAGSTER_HOME when set, else the data root's own `.dagster` folder."""
    # DAGSTER_HOME is Dagster's own setting (Dagster reads it too), not one of nx_dagster's Settings
    explicit = os.environ.get("DAGSTER_HOME")
    return Path(explicit).expanduser().resolve() if explicit else catalog.local / INSTANCE_DIR


def open_instance(catalog: Catalog) -> dg.DagsterInstance:
    """The instance that holds `catalog`'s run history, claimed for that data root.

    Opening an instance for the first time creates its SQLite storage; two `nxd run`s started at once
    would race on that, so opening is serialized by a file lock in the instance folder."""
    from dagster._core.instance.ref import InstanceRef

    home = instance_home(catalog)
    home.mkdir(parents=True, exist_ok=True)
    if not os.environ.get("DAGSTER_HOME") and not (home / "dagster.yaml").exists():
        tmp = home / f"dagster.yaml.{os.getpid()}.tmp"
        tmp.write_text(INSTANCE_YAML)
        os.replace(tmp, home / "dagster.yaml")
    with open(home / ".nxd-open.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            try:
                instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
                instance.get_runs(limit=1)  # create the run and schedule storage while the lock is held
                instance.all_instigator_state()
            except Exception as e:
                error = storage_error(home, e)
                if error is None:
                    raise
                raise error from e
            claim_data_root(instance, catalog)
            return instance
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def storage_error(home: Path, e: Exception) -> NxInputError | None:
    """A one-line error for an instance whose storage cannot be opened: an environment variable its
    dagster.yaml reads is not set, or its PostgreSQL server refuses (unreachable, wrong credentials,
    no such database). None for anything else."""
    from dagster._config.errors import PostProcessingError

    where = f"Dagster instance {home / 'dagster.yaml'}"
    text = str(e)
    unset = re.search(r'environment variable "(\w+)" which is not set', text)
    if unset or isinstance(e, PostProcessingError):
        var = unset.group(1) if unset else "an environment variable"
        return NxInputError(where, f"its storage setting reads {var}, which is not set",
                            f"set {var} (e.g. NX_DAGSTER_PG_URL=postgresql+psycopg2://USER:PASSWORD@HOST:5432/DB), "
                            "or unset DAGSTER_HOME to use the data root's own instance")
    chain, cause = [], e
    while cause is not None:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    names = {type(c).__name__ for c in chain}
    if names & {"DagsterPostgresException", "OperationalError"}:
        reason = next((str(getattr(c, "orig", None) or c) for c in chain if type(c).__name__ == "OperationalError"),
                      text)
        reason = " ".join(reason.split())[:300]
        return NxInputError(where, f"cannot open its PostgreSQL storage ({reason})",
                            "check the server named by its postgres_url (NX_DAGSTER_PG_URL in deploy/dagster.yaml): "
                            "host, port, user, password and database")
    return None


def claim_data_root(instance: dg.DagsterInstance, catalog: Catalog) -> None:
    """Record `catalog`'s root id in `instance`, or raise NxInputError if it serves another data root."""
    root_id = catalog.root_id()
    storage = instance.run_storage
    claimed = storage.get_cursor_values({ROOT_KEY}).get(ROOT_KEY)
    if claimed is None:
        storage.set_cursor_values({ROOT_KEY: root_id})
    elif claimed != root_id:
        where = instance.root_directory if instance.is_persistent else "this instance"
        raise NxInputError(
            f"Dagster instance {where}", f"holds the run history of another data root (id {claimed}), "
            f"not of {catalog.home} (id {root_id})",
            f"unset DAGSTER_HOME so that the data root's own instance ({catalog.local / INSTANCE_DIR}) is used, "
            "or open this root's UI with `nxd ui --home <root>`")
