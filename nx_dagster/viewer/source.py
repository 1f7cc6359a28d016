"""Open the catalog for reading as of one snapshot, and pick the model to show.

Every write to the catalog is a DuckLake snapshot. The viewer and the terminal card read through a
connection attached read-only at one snapshot (`SNAPSHOT_VERSION`), so what they show is one
consistent state of every table; a release (a named snapshot) can be opened the same way.

Errors: `NxInputError` for a data root with no catalog, a snapshot that does not exist, or a model
that the catalog does not hold.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import duckdb

from nx_dagster.errors import NxInputError
from nx_dagster.storage import Catalog
from nx_dagster.storage.catalog import ALIAS


@contextlib.contextmanager
def open_at(cat: Catalog, snapshot: int | None = None) -> Iterator[tuple[duckdb.DuckDBPyConnection, int]]:
    """Yield (a read-only connection with the catalog attached as `nx` at `snapshot`, the snapshot id).

    `snapshot` None means the latest. Nothing under the data root is written."""
    if snapshot is not None and snapshot < 0:
        raise NxInputError(f"snapshot {snapshot}", "is negative", "snapshot ids count from 0; see nx.snapshots()")
    with cat.session(read_only=True, snapshot=snapshot) as con:
        current = con.execute(f"SELECT id FROM {ALIAS}.current_snapshot()").fetchone()[0]
        yield con, current


def pick_model(con: duckdb.DuckDBPyConnection, model: str | None = None) -> dict:
    """The `models` row to show: `model` if given, else the most recently written one.

    Returns the row as a dict (model, n_layer, n_neurons, ...)."""
    rows = con.execute("SELECT * FROM models ORDER BY created_at DESC").fetch_arrow_table().to_pylist()
    if not rows:
        raise NxInputError("catalog", "holds no model at this snapshot", "run `nxd run` first (or pick a later snapshot)")
    if model is None:
        return rows[0]
    for r in rows:
        if r["model"] == model:
            return r
    raise NxInputError(f"model {model!r}", "is not in the catalog",
                       f"use one of {', '.join(sorted(r['model'] for r in rows))}")
