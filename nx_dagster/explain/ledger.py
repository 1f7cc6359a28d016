"""The LLM call ledger: every request and its outcome, durable per call, synced into `llm_calls`.

A call is keyed by the sha256 of (endpoint base URL without credentials, request kind, model, every
request parameter including the messages or prompt). The ledger is an SQLite file in WAL mode under
NX_HOME (`llm_ledger.sqlite`, or `NX_LLM_LEDGER`); each call is committed as soon as it returns, so a
killed run keeps every answer it received (a process kill loses nothing; only an OS crash could lose the
last commits). One row per key: a later outcome of the same call replaces the earlier one. A re-ask of
an unusable reply is another call: its key also hashes the attempt number (`call_key(..., attempt)`),
so every paid reply keeps its own row.

Statuses and what a rerun does with them:
- `pending`   — written just before the request is sent; still there only if the process died while
                the call was in flight: the endpoint may have answered (and billed) it. Resent on rerun
                (the HTTP API has no idempotency key, so such a call may be paid twice, never more).
- `ok`        — answered and usable; never sent again (the reply is read back from here).
- `unusable`  — answered with HTTP 200 (paid) but unusable: a non-JSON body, no choices, or a reply the
                caller could not parse (wrong number of values, refusal, out of range...). Not resent
                under its key; the caller may re-ask with the next attempt number, a bounded number of
                times per run.
- `rejected`  — a non-retryable 4xx other than auth (400, 404, 422...): the same request would be
                rejected again, so it is not resent; the failure is reported from here.
- `auth_error`— 401/403: the run stopped; resent on rerun (the key may have been fixed).
- `transient` — 429/5xx/timeout/connection error after every retry: resent on rerun.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import threading
import urllib.parse
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

import pyarrow as pa

from nx_dagster.storage import schema

OK, REJECTED, AUTH_ERROR, TRANSIENT = "ok", "rejected", "auth_error", "transient"
PENDING, UNUSABLE = "pending", "unusable"
STATUSES = (PENDING, OK, UNUSABLE, REJECTED, AUTH_ERROR, TRANSIENT)
FINAL_STATUSES = (OK, UNUSABLE, REJECTED)  # outcomes a rerun reuses instead of sending the same key again

_SECRET_PATTERNS = [re.compile(r"\bsk-[A-Za-z0-9_\-*]{4,}"), re.compile(r"(?i)bearer\s+\S+")]


def sanitize_url(url: str) -> str:
    """The URL without user:password, query or fragment, and without a trailing slash."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def redact(text: str | None, secrets: Iterable[str | None] = ()) -> str | None:
    """`text` with the given secrets and anything shaped like an API key replaced by [REDACTED]."""
    if text is None:
        return None
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "[REDACTED]")
    for pat in _SECRET_PATTERNS:
        text = pat.sub("[REDACTED]", text)
    return text


def call_key(endpoint: str, kind: str, model: str, params: dict, attempt: int = 0) -> str:
    """sha256 of the call; `attempt` > 0 (a re-ask of the same request) makes a key of its own."""
    ident = {"endpoint": sanitize_url(endpoint), "kind": kind, "model": model, "params": params}
    if attempt:
        ident["attempt"] = attempt
    blob = json.dumps(ident, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class LedgerEntry:
    call_key: str
    endpoint: str
    model: str
    kind: str
    request_json: str
    response_json: str | None
    status: str
    http_status: int | None
    error: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: float | None
    latency_s: float | None
    attempts: int
    created_at: str = ""

    @property
    def response(self) -> dict | None:
        return json.loads(self.response_json) if self.response_json else None


_COLUMNS = [f.name for f in fields(LedgerEntry)]  # the ledger file's columns, written to those of llm_calls


def default_ledger_path(state: Path | None = None) -> Path:
    """NX_LLM_LEDGER, else `llm_ledger.sqlite` in the local state folder `state` (else NX_HOME's)."""
    from nx_dagster import settings
    from nx_dagster.storage.location import Location

    explicit = settings.current().nx_llm_ledger
    if explicit is not None:
        return explicit
    return (state if state is not None else Location.resolve().state) / settings.LEDGER_FILE


class Ledger:
    """Thread-safe; several processes may share one file (SQLite serializes their commits)."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path else default_ledger_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._con = sqlite3.connect(self.path, check_same_thread=False, timeout=60, isolation_level=None)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=NORMAL")
        self._con.execute(f"CREATE TABLE IF NOT EXISTS calls ({', '.join(_COLUMNS)}, PRIMARY KEY (call_key))")

    def close(self) -> None:
        with self._lock:
            self._con.close()

    def get(self, key: str) -> LedgerEntry | None:
        with self._lock:
            row = self._con.execute(f"SELECT {', '.join(_COLUMNS)} FROM calls WHERE call_key = ?", [key]).fetchone()
        return LedgerEntry(*row) if row else None

    def record(self, entry: LedgerEntry) -> None:
        """Commit one outcome now (replacing any earlier outcome of the same call)."""
        entry.created_at = entry.created_at or datetime.now(timezone.utc).isoformat()
        values = [getattr(entry, c) for c in _COLUMNS]
        with self._lock:
            self._con.execute(f"INSERT OR REPLACE INTO calls VALUES ({', '.join('?' * len(_COLUMNS))})", values)

    def mark_unusable(self, key: str, reason: str) -> bool:
        """An `ok` reply the caller could not use becomes `unusable`, with the reason as its error.
        Returns whether a row changed (False when it was already marked)."""
        with self._lock:
            cur = self._con.execute("UPDATE calls SET status = ?, error = ? WHERE call_key = ? AND status = ?",
                                    [UNUSABLE, reason, key, OK])
            return cur.rowcount > 0

    def entries(self, keys: Sequence[str] | None = None) -> list[LedgerEntry]:
        sql = f"SELECT {', '.join(_COLUMNS)} FROM calls"
        with self._lock:
            if keys is None:
                rows = self._con.execute(sql + " ORDER BY created_at, call_key").fetchall()
            else:
                rows = []
                keys = list(dict.fromkeys(keys))
                for i in range(0, len(keys), 500):
                    chunk = keys[i:i + 500]
                    rows += self._con.execute(f"{sql} WHERE call_key IN ({', '.join('?' * len(chunk))})",
                                              chunk).fetchall()
        return [LedgerEntry(*r) for r in rows]

    def count(self, status: str | None = None) -> int:
        with self._lock:
            if status is None:
                return self._con.execute("SELECT count(*) FROM calls").fetchone()[0]
            return self._con.execute("SELECT count(*) FROM calls WHERE status = ?", [status]).fetchone()[0]

    def summary(self, keys: Sequence[str] | None = None) -> dict[str, float | int]:
        """Calls, outcomes, tokens and cost of the given calls (all by default), for run metadata."""
        entries = self.entries(keys)
        out: dict[str, float | int] = {"calls": len(entries), **{s: 0 for s in STATUSES}}
        for e in entries:
            out[e.status] = out.get(e.status, 0) + 1
        out["prompt_tokens"] = sum(e.prompt_tokens or 0 for e in entries)
        out["completion_tokens"] = sum(e.completion_tokens or 0 for e in entries)
        out["cost_usd"] = round(sum(e.cost_usd or 0.0 for e in entries), 6)
        out["calls_without_price"] = sum(e.status in (OK, UNUSABLE) and e.cost_usd is None for e in entries)
        return out

    def to_arrow(self, keys: Sequence[str] | None = None) -> pa.Table:
        """Ledger rows as a table matching `llm_calls`."""
        cols: dict[str, list] = {c: [] for c in _COLUMNS}
        for e in self.entries(keys):
            for c in _COLUMNS:
                v = getattr(e, c)
                cols[c].append(datetime.fromisoformat(v) if c == "created_at" and v else v)
        return schema.table("llm_calls", cols)


def sync_ledger(catalog, ledger: Ledger, keys: Sequence[str] | None = None, chunk: int = 20_000) -> int:
    """Copy ledger rows (all, or those of `keys`) into the catalog table `llm_calls`, replacing rows with
    the same call_key, so syncing twice leaves the same table. Returns the number of rows written."""
    table = ledger.to_arrow(keys)
    if table.num_rows == 0:
        return 0
    for start in range(0, table.num_rows, chunk):
        part = table.slice(start, chunk)
        catalog.replace("llm_calls", part, {"call_key": part.column("call_key").to_pylist()},
                        message=f"sync {part.num_rows} LLM calls")
    return table.num_rows
