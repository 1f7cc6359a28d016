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
from nx_dagster.storage.extensions import load_extension


@contextlib.contextmanager
def open_at(cat: Catalog, snapshot: int | None = None) -> Iterator[tuple[duckdb.DuckDBPyConnection, int]]:
    """Yield (a read-only connection with the catalog attached as `nx` at `snapshot`, the snapshot id).

    `snapshot` None means the latest. Nothing under the data root is written."""
    with cat.session(read_only=True) as con:
        latest = cat._retry(lambda: con.execute(f"SELECT max(snapshot_id) FROM {ALIAS}.snapshots()").fetchone()[0])
    if snapshot is None:
        snapshot = latest
    elif not 0 <= snapshot <= latest:
        raise NxInputError(f"snapshot {snapshot}", f"does not exist (this catalog has snapshots 0-{latest})",
                           "pick one from `nxd sql \"SELECT * FROM nx.snapshots()\"`, or leave --snapshot out for the latest")
    con = duckdb.connect()
    try:
        for ext in ("sqlite", "ducklake"):
            load_extension(con, ext)
        cat._retry(lambda: con.execute(
            f"ATTACH 'ducklake:sqlite:{cat.catalog_path}' AS {ALIAS} "
            f"(DATA_PATH '{cat.data_path}/', READ_ONLY, SNAPSHOT_VERSION {int(snapshot)})"))
        con.execute(f"USE {ALIAS}")
        yield con, snapshot
    finally:
        con.close()


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
