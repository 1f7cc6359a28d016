"""Immutable, named releases of the catalog: a DuckLake snapshot plus a manifest and a changelog.

A release does not copy data. It names the snapshot that was current when it was made (every table as
of that moment) and stores, in one transaction, one row of `releases` (manifest JSON: per table rows,
content checksum, files, lineage, code versions, last write; changelog against the parent release) and
the rows of `release_neuron_changes` (neurons whose best explanation or best score changed). Nothing
else is written, so a release adds no Parquet files of its own: after re-running one layer the next
release references that layer's new files and shares every other file with its parent.

Rules: a name matches `NAME_RULE` and is never reused; a release that fails leaves no row (the
transaction rolls back); the parent is the release with the highest snapshot. Every release stays
readable: `Catalog.session(read_only=True, snapshot=release_snapshot(cat, NAME))`. Snapshot expiry
must skip `protected_snapshots()`; `expire_snapshots()` here does.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re

import duckdb

from nx_dagster.errors import NxInputError
from nx_dagster.storage import release_content as content
from nx_dagster.storage.catalog import ALIAS, Catalog
from nx_dagster.storage.schema import DATA_TABLES

log = logging.getLogger(__name__)
NAME_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NEURON_CHANGES_SHOWN = 20  # neuron changes copied into the manifest; all of them are in release_neuron_changes


def _existing(con: duckdb.DuckDBPyConnection) -> list[tuple[str, int]]:
    """(release, snapshot) of every release, oldest first; [] on a catalog made before releases existed."""
    present = {r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_catalog = ?", [ALIAS]).fetchall()}
    if "releases" not in present:
        return []
    return [(r, int(s)) for r, s in con.execute(
        "SELECT release, snapshot FROM releases ORDER BY snapshot, created_at").fetchall()]


def _listing(names: list[str]) -> str:
    return f"existing releases: {', '.join(names)}" if names else "no release exists yet"


def list_releases(catalog: Catalog) -> list[tuple[str, int]]:
    """(release, snapshot) of every release of the catalog, oldest first."""
    with catalog.session(read_only=True) as con:
        return _existing(con)


def release_snapshot(catalog: Catalog, name: str) -> int:
    """The snapshot release `name` points at. Raises NxInputError (listing the releases) if unknown."""
    found = dict(list_releases(catalog))
    if name not in found:
        raise NxInputError(f"release {name!r}", f"does not exist ({_listing(list(found))})",
                           "use one of the existing release names, or make it with `nxd release NAME`")
    return found[name]


def read_release(catalog: Catalog, name: str) -> dict:
    """The `releases` row of `name` with its manifest parsed. Raises NxInputError if unknown."""
    release_snapshot(catalog, name)
    with catalog.session(read_only=True) as con:
        cur = con.execute("SELECT * FROM releases WHERE release = ?", [name])
        row = dict(zip([d[0] for d in cur.description], cur.fetchone()))
    row["manifest"] = json.loads(row["manifest"])
    return row


def check_new_name(catalog: Catalog, name: str) -> None:
    """Raise NxInputError unless `name` is well formed and not yet used (the catalog must exist)."""
    _check_form(name)
    with catalog.session(read_only=True) as con:
        _check_unused(name, _existing(con))


def _check_form(name: str) -> None:
    if not isinstance(name, str) or not NAME_RULE.fullmatch(name):
        raise NxInputError(f"release name {name!r}", "is not a valid name",
                           "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")


def _check_unused(name: str, existing: list[tuple[str, int]]) -> None:
    if name in dict(existing):
        raise NxInputError(f"release name {name!r}", f"is already taken ({_listing([r for r, _ in existing])})",
                           "choose a new name: a release is immutable and its name is never reused")


def protected_snapshots(catalog: Catalog) -> set[int]:
    """Snapshots that snapshot expiry, compaction clean-up or garbage collection must keep: those of every
    release (plus the current one, which expiry never removes anyway)."""
    with catalog.session(read_only=True) as con:
        current = con.execute(f"SELECT max(snapshot_id) FROM {ALIAS}.snapshots()").fetchone()[0]
        return {s for _, s in _existing(con)} | {int(current)}


def expire_snapshots(catalog: Catalog, older_than: dt.datetime | None = None) -> list[int]:
    """Expire the snapshots older than `older_than` (default: all but the current one) that no release
    needs, then delete the files only they referenced. Returns the expired snapshot ids."""
    with catalog.session() as con, catalog.writer_lock():
        keep = {s for _, s in _existing(con)}
        current = con.execute(f"SELECT max(snapshot_id) FROM {ALIAS}.snapshots()").fetchone()[0]
        rows = con.execute(f"SELECT snapshot_id, snapshot_time FROM {ALIAS}.snapshots()").fetchall()
        doomed = [int(s) for s, at in rows if s != current and int(s) not in keep
                  and (older_than is None or at < older_than)]
        if doomed:
            con.execute(f"CALL ducklake_expire_snapshots('{ALIAS}', versions => {doomed})")
            con.execute(f"CALL ducklake_cleanup_old_files('{ALIAS}', cleanup_all => true)")
        return doomed


def create_release(catalog: Catalog, name: str, message: str = "",
                   code_versions: dict[str, dict[str, str]] | None = None) -> dict:
    """Freeze every table into release `name` and return its `releases` row (manifest parsed).

    `code_versions` maps table -> {asset: code version} of the assets that produced it (the Dagster
    layer knows them). Raises NxInputError, before anything is written, for a malformed or used name."""
    _check_form(name)
    con = catalog.connect()  # creates missing tables; before the lock (it takes it itself)
    try:
        with catalog.writer_lock():  # no other commit until the release row is in: the snapshot is stable
            existing = _existing(con)
            _check_unused(name, existing)
            return catalog.retry(lambda: _freeze(catalog, con, name, message, code_versions or {}, existing))
    finally:
        con.close()


def _freeze(catalog, con, name, message, code_versions, existing) -> dict:
    snapshot = int(con.execute(f"SELECT max(snapshot_id) FROM {ALIAS}.snapshots()").fetchone()[0])
    parent = parent_snap = parent_manifest = None
    if existing:
        parent, parent_snap = existing[-1]
        parent_manifest = json.loads(con.execute("SELECT manifest FROM releases WHERE release = ?", [parent]).fetchone()[0])
    new_tables, old_tables = content.tables_at(con, snapshot), content.tables_at(con, parent_snap)
    writes = content.last_writes(con, snapshot)
    tables: dict[str, dict] = {}
    for t in DATA_TABLES:
        if t not in new_tables:
            continue
        before = (parent_manifest or {}).get("tables", {}).get(t)
        last, at = writes.get(t, (None, None))
        unchanged = before is not None and last is not None and last <= parent_snap
        entry = {"rows": before["rows"], "checksum": before["checksum"]} if unchanged else dict(
            zip(("rows", "checksum"), content.checksum(con, t, snapshot)))
        entry["files"] = content.files(con, t, snapshot, catalog.data_url)
        entry.update({k: before[k] for k in content.LINEAGE_KEYS if k in before} if unchanged
                     else content.lineage(con, t, snapshot, new_tables))
        entry["code_versions"] = code_versions.get(t, {})
        entry["last_written_snapshot"], entry["last_written_at"] = last, at
        entry["changes"] = ({"added": 0, "changed": 0, "removed": 0} if unchanged
                            else content.row_changes(con, t, parent_snap, snapshot, t in old_tables))
        tables[t] = entry
    parent_files = {f["path"] for e in (parent_manifest or {}).get("tables", {}).values() for f in e["files"]}
    all_files = [f for e in tables.values() for f in e["files"]]
    new_files = [f for f in all_files if f["path"] not in parent_files]
    created_at = dt.datetime.now(dt.timezone.utc)
    neurons_moved = (parent is None or any(tables.get(t, {}).get("changes", {}) != {"added": 0, "changed": 0, "removed": 0}
                                           for t in ("scores", "explanations")))
    manifest = {
        "release": name, "snapshot": snapshot, "parent_release": parent, "parent_snapshot": parent_snap,
        "created_at": created_at.isoformat(), "message": message,
        "checksum_method": "sum mod 2^64 of md5_number_lower(CAST(row AS VARCHAR)) over all rows",
        "totals": {"rows": sum(e["rows"] for e in tables.values()), "files": len(all_files),
                   "bytes": sum(f["bytes"] for f in all_files), "new_files": len(new_files),
                   "new_bytes": sum(f["bytes"] for f in new_files)},
        "tables": tables,
    }
    con.execute("BEGIN TRANSACTION")
    try:
        if neurons_moved:
            con.execute(f"INSERT INTO release_neuron_changes SELECT ?, ?, * FROM ("
                        f"{content.neuron_changes_sql(parent_snap, old_tables, snapshot, new_tables)})", [name, parent])
        shown = con.execute(
            "SELECT * EXCLUDE (release, parent_release) FROM release_neuron_changes WHERE release = ? "
            f"ORDER BY model, gelu_variant, layer, neuron LIMIT {NEURON_CHANGES_SHOWN}", [name]).fetch_arrow_table()
        n_moved = con.execute("SELECT count(*) FROM release_neuron_changes WHERE release = ?", [name]).fetchone()[0]
        manifest["changelog"] = {
            "parent_release": parent,
            "tables": {t: e["changes"] for t, e in tables.items()},
            "neurons_changed": int(n_moved), "neuron_changes": shown.to_pylist(),
        }
        totals = manifest["totals"]
        con.execute("INSERT INTO releases BY NAME SELECT * FROM (VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)) v("
                    "release, created_at, snapshot, parent_release, manifest, message, parent_snapshot, n_rows, "
                    "n_files, total_bytes, new_files, new_bytes)",
                    [name, created_at, snapshot, parent, json.dumps(manifest, default=str), message, parent_snap,
                     totals["rows"], totals["files"], totals["bytes"], totals["new_files"], totals["new_bytes"]])
        con.execute(f"CALL {ALIAS}.set_commit_message('nx_dagster', ?)", [f"release {name}"])
        con.execute("COMMIT")
    except BaseException:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:
            pass
        raise
    log.info("release %s: snapshot %s, %s rows, %s new files", name, snapshot, totals["rows"], totals["new_files"])
    return {"release": name, "created_at": created_at, "snapshot": snapshot, "parent_release": parent,
            "manifest": manifest, "message": message}
