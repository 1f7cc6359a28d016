"""Files under NX_HOME (and its local state folder) that no snapshot references, removed on request (`nxd gc`).

A DuckLake transaction writes its Parquet files under data/ before it commits; if the commit fails
(a full disk, a kill) nothing references them but they stay, and so can a staging folder or a write
probe of a killed process. A write that fails cleans up after itself where it can
(`writes.remove_unreferenced`); `collect` finds everything of that kind (DuckLake's own
`ducklake_delete_orphaned_files` for data/, less the files of writers that still run and have not
committed yet, plus staging folders and probes whose process is gone) and removes it only when asked.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from nx_dagster import procs
from nx_dagster.storage import data_files
from nx_dagster.storage.attach import ALIAS
from nx_dagster.storage.catalog import Catalog


def _dead(name: str) -> bool:
    """A staging folder `<pid>-<start>-<uuid>` or probe `.write-probe-<pid>` whose process is gone."""
    parts = name.removeprefix(".write-probe-").split("-")
    if not parts[0].isdigit():
        return False
    start = parts[1] if len(parts) > 2 else ""
    return procs.is_alive(procs.identity()["host"], parts[0], start) is False


def collect(catalog: Catalog, apply: bool = False) -> list[tuple[str, int]]:
    """Files and folders under NX_HOME that nothing needs: data files no snapshot references, staging
    folders and write probes of processes that are gone. Returns [(path, bytes)]; removes them only
    if `apply`. Holds the writer lock, so a transaction in progress (whose files are not referenced
    yet) is never touched."""
    found: list[tuple[str, int]] = []
    with contextlib.ExitStack() as stack:
        # connect before locking: connecting may create missing tables, which takes the lock itself
        con = stack.enter_context(catalog.session()) if catalog.exists() else None
        stack.enter_context(catalog.writer_lock())
        if con is not None:
            # a catalog shared with other machines: spare files young enough to belong to a commit in flight
            age = (", older_than => now() - INTERVAL 1 DAY" if catalog.where.catalog.shared else ", cleanup_all => true")
            orphans = catalog.retry(lambda: con.execute(
                f"CALL ducklake_delete_orphaned_files('{ALIAS}', dry_run => true{age})").fetchall())
            # a writer that still runs has written its partition's file and waits for the lock to commit it
            orphans = [r[0] for r in orphans if not data_files.writer_alive(r[0].rsplit("/", 1)[-1])]
            fs = catalog.where.fs
            found += [(path, fs.size(path) if fs.exists(path) else 0) for path in orphans]
            if apply:
                for path in orphans:
                    with contextlib.suppress(FileNotFoundError):
                        fs.rm_file(path)
        staging = catalog.local / "staging"
        leftovers = [p for p in staging.iterdir() if _dead(p.name)] if staging.is_dir() else []
        leftovers += [p for p in catalog.local.glob(".write-probe-*") if _dead(p.name)]
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
