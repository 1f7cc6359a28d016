"""Files under NX_HOME that no snapshot references: after a failed write, and on request (`nxd gc`).

A DuckLake transaction writes its Parquet files under data/ before it commits; if the commit fails
(a full disk, a kill) nothing references them but they stay, and so can a staging folder or a write
probe of a killed process. `remove_unreferenced` cleans up right after a failed transaction;
`collect` finds everything of that kind (DuckLake's own `ducklake_delete_orphaned_files` for data/,
plus staging folders and probes whose process is gone) and removes it only when asked.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from nx_dagster import procs
from nx_dagster.storage.extensions import load_extension

if TYPE_CHECKING:
    from nx_dagster.storage.catalog import Catalog

log = logging.getLogger(__name__)


def referenced(catalog: "Catalog") -> set[str]:
    """File names of every data and delete file that any snapshot references (DuckLake metadata)."""
    with contextlib.closing(duckdb.connect()) as con:
        load_extension(con, "sqlite")
        con.execute(f"ATTACH '{catalog.catalog_path}' AS meta (TYPE sqlite, READ_ONLY)")
        rows = catalog._retry(lambda: con.execute(
            "SELECT path FROM meta.ducklake_data_file UNION ALL SELECT path FROM meta.ducklake_delete_file"
        ).fetchall())
    return {Path(r[0]).name for r in rows}


def remove_unreferenced(catalog: "Catalog", created: set[Path]) -> None:
    """Remove the files in `created` (written under data/ by a transaction that failed) that the
    catalog does not reference. Call it with the writer lock held, so no other transaction wrote them."""
    if not created:
        return
    try:
        keep = referenced(catalog)
    except Exception:  # noqa: BLE001 - without the metadata, removing nothing is the safe choice
        log.exception("could not read the catalog to clean up after a failed write; kept %d files", len(created))
        return
    for path in created:
        if path.name not in keep:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                log.warning("removed %s, written by a failed transaction", path)


def _dead(name: str) -> bool:
    """A staging folder `<pid>-<start>-<uuid>` or probe `.write-probe-<pid>` whose process is gone."""
    parts = name.removeprefix(".write-probe-").split("-")
    if not parts[0].isdigit():
        return False
    start = parts[1] if len(parts) > 2 else ""
    return procs.is_alive(procs.identity()["host"], parts[0], start) is False


def collect(catalog: "Catalog", apply: bool = False) -> list[tuple[str, int]]:
    """Files and folders under NX_HOME that nothing needs: data files no snapshot references, staging
    folders and write probes of processes that are gone. Returns [(path, bytes)]; removes them only
    if `apply`. Holds the writer lock, so a transaction in progress (whose files are not referenced
    yet) is never touched."""
    found: list[tuple[str, int]] = []
    with contextlib.ExitStack() as stack:
        # connect before locking: connecting may create missing tables, which takes the lock itself
        con = stack.enter_context(catalog.session()) if catalog.catalog_path.is_file() else None
        stack.enter_context(catalog._writer_lock())
        if con is not None:
            orphans = catalog._retry(lambda: con.execute(
                "CALL ducklake_delete_orphaned_files('nx', dry_run => true, cleanup_all => true)").fetchall())
            found += [(r[0], _size(Path(r[0]))) for r in orphans]
            if apply and orphans:
                catalog._retry(lambda: con.execute(
                    "CALL ducklake_delete_orphaned_files('nx', dry_run => false, cleanup_all => true)").fetchall())
        staging = catalog.home / "staging"
        leftovers = [p for p in staging.iterdir() if _dead(p.name)] if staging.is_dir() else []
        leftovers += [p for p in catalog.home.glob(".write-probe-*") if _dead(p.name)]
        for path in leftovers:
            found.append((str(path), _size(path)))
            if apply:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
    return found


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0
