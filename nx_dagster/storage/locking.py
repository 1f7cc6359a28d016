"""One committing writer at a time: the catalog's writer lock, and retries while its database is busy.

A SQLite-backed DuckLake admits one committing process at a time; writers take an exclusive file lock
(`writer_lock`: `.catalog.lock` in the root's local state folder, which serializes this machine's
writers, and for a catalog in PostgreSQL also an advisory lock there) around their commit, and retry on
"database is locked" and on DuckLake's transaction conflicts, which is what concurrent writers to
PostgreSQL see (`retry`). Waiting for either is bounded by NX_CATALOG_WAIT_S (`wait_seconds`); past it
a writer fails with `CatalogBusy`, which names that setting.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import duckdb
import filelock

from nx_dagster import settings
from nx_dagster.errors import NxInputError
from nx_dagster.storage import attach
from nx_dagster.storage.location import Location

log = logging.getLogger(__name__)
T = TypeVar("T")


class CatalogBusy(NxInputError):
    """Another writer held the catalog for longer than NX_CATALOG_WAIT_S."""


def wait_seconds() -> float:
    """NX_CATALOG_WAIT_S: how long a writer waits for its turn (lock + retries), in seconds."""
    return settings.current().nx_catalog_wait_s


def lock_path(where: Location) -> Path:
    """The file of the writer lock of `where`'s catalog on this machine."""
    return where.state / ".catalog.lock"


def busy(where: Location, wait: float, what: str) -> CatalogBusy:
    """The error of a writer that waited `wait` seconds for `what` in vain."""
    return CatalogBusy(f"catalog {where.catalog.display()!r}", f"other writers held {what} for more than "
                       f"NX_CATALOG_WAIT_S={wait:g} s", "let the other runs finish, or raise NX_CATALOG_WAIT_S")


@contextlib.contextmanager
def writer_lock(where: Location) -> Iterator[None]:
    """The exclusive writer lock (an OS file lock: it dies with its process), and for a catalog in
    PostgreSQL also a session advisory lock there (it dies with its connection), so that writers on
    all machines commit one at a time: DuckLake lets two transactions that both insert a partition
    that was empty commit side by side, which would store it twice. Waited for at most
    NX_CATALOG_WAIT_S; past that, CatalogBusy."""
    where.state.mkdir(parents=True, exist_ok=True)
    wait = wait_seconds()
    lock = filelock.FileLock(lock_path(where), timeout=wait)
    start = time.monotonic()
    try:
        lock.acquire(poll_interval=0.05)
    except filelock.Timeout:
        raise busy(where, wait, "its writer lock") from None
    try:
        if where.catalog.shared:
            with attach.advisory_lock(where, max(0.0, wait - (time.monotonic() - start))) as held:
                if not held:
                    raise busy(where, wait, "the PostgreSQL writer lock")
                yield
        else:
            yield
    finally:
        lock.release()


def retry(where: Location, fn: Callable[[], T]) -> T:
    """Call `fn`, retrying while SQLite says "database is locked" (another process is committing),
    with jittered exponential backoff (50 ms doubling up to 2 s), for at most NX_CATALOG_WAIT_S."""
    wait = wait_seconds()
    deadline = time.monotonic() + wait
    for i in range(1_000_000):
        try:
            return fn()
        except duckdb.Error as e:
            if not attach.retryable(e):
                raise
            pause = min(2.0, 0.05 * 2 ** min(i, 6)) * (0.5 + random.random())
            if time.monotonic() + pause > deadline:
                raise busy(where, wait, "the catalog database") from e
            log.debug("catalog busy (%s); retry %d in %.2f s", e, i + 1, pause)
            time.sleep(pause)
