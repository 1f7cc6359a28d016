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
    if snapshot is not None and snapshot < 0:
        raise NxInputError(f"snapshot {snapshot}", "is negative", "snapshot ids count from 0; see nx.snapshots()")
    if not cat.catalog_path.is_file():
        cat.connect(read_only=True)  # raises the catalog's own "holds no catalog yet" error
    con = duckdb.connect()
    try:
        for ext in ("sqlite", "ducklake"):
            load_extension(con, ext)
        at = "" if snapshot is None else f", SNAPSHOT_VERSION {int(snapshot)}"
        try:
            cat._retry(lambda: con.execute(
                f"ATTACH 'ducklake:sqlite:{cat.catalog_path}' AS {ALIAS} (DATA_PATH '{cat.data_path}/', READ_ONLY{at})"))
        except duckdb.InvalidInputException as e:
            if "no snapshot found" not in str(e).lower():
                raise
            raise NxInputError(f"snapshot {snapshot}", "does not exist in this catalog",
                               "pick a snapshot_id from `nxd sql \"SELECT * FROM nx.snapshots()\"`, or leave "
                               "--snapshot out for the latest") from None
        con.execute(f"USE {ALIAS}")
        current = con.execute(f"SELECT id FROM {ALIAS}.current_snapshot()").fetchone()[0]
        yield con, current
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
