"""Where a data root lives: its data (a local folder or `s3://bucket/prefix`), its catalog database, and
the local state that one machine keeps for it.

- `NX_HOME` (the data root): a local folder (default `./nx_data`) or `s3://bucket/prefix`. The Parquet
  data lives under `NX_HOME/data/`, with `root_id` beside it; releases and exports can live there too.
- `NX_CATALOG` (the DuckLake metadata): unset means a SQLite file `catalog.sqlite` in the local state
  folder; a path (or `sqlite:PATH`) names another SQLite file; `postgresql://user:password@host:port/db`
  puts the metadata in PostgreSQL (several machines, see docs/several-machines.md).
- The local state folder holds what never goes to object storage: the default catalog file, the writer
  lock, staging Parquet, the Dagster run history (`.dagster`) and the LLM call ledger. For a local
  NX_HOME it is NX_HOME itself (the root stays self-contained and relocatable). For `s3://bucket/prefix`
  it is `NX_STATE` if set, else `~/.nx_dagster/s3/bucket/prefix`: one machine's catalog for that data,
  kept across runs so that one `nxd` process after another sees the same tables and releases.

Errors: `NxInputError` for a scheme other than a local path or s3://, and for an NX_CATALOG that is
neither a file path nor a PostgreSQL URL.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from nx_dagster import settings
from nx_dagster.errors import NxInputError

CATALOG_FILE = "catalog.sqlite"


@dataclass(frozen=True)
class CatalogDb:
    """The database that holds the DuckLake metadata: `kind` "sqlite" (then `target` is a file path) or
    "postgres" (then `target` is a libpq key=value connection string, `url` the URL as given)."""

    kind: str
    target: str
    url: str

    @property
    def attach_uri(self) -> str:
        return f"ducklake:{self.kind}:{self.target}"

    @property
    def shared(self) -> bool:
        """Whether writers on other machines may commit to it at the same time (PostgreSQL)."""
        return self.kind == "postgres"

    def display(self) -> str:
        """The location without a password, for messages and metadata."""
        if self.kind == "sqlite":
            return self.target
        parts = urlsplit(self.url)
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        if parts.username:
            netloc = f"{parts.username}@{netloc}"
        return f"{parts.scheme}://{netloc}{parts.path}"


def parse_catalog(raw: str | None, state: Path) -> CatalogDb:
    """NX_CATALOG (or the resource field) as a `CatalogDb`; None or "" is `state/catalog.sqlite`."""
    raw = (raw or "").strip()
    if not raw:
        path = state / CATALOG_FILE
        return CatalogDb("sqlite", str(path), str(path))
    scheme = raw.split("://", 1)[0].lower() if "://" in raw else ""
    if scheme in ("postgresql", "postgres"):
        return CatalogDb("postgres", _libpq(raw), raw)
    if raw.startswith("sqlite:") and not scheme:
        raw = raw.removeprefix("sqlite:")
    elif scheme == "sqlite":
        raw = raw.split("://", 1)[1]
    elif scheme:
        raise NxInputError(f"NX_CATALOG {raw!r}", f"uses the scheme {scheme}://, which is not a catalog database",
                           "set it to a SQLite file path, or postgresql://user:password@host:port/database")
    path = Path(raw).expanduser().resolve()
    return CatalogDb("sqlite", str(path), str(path))


def _libpq(url: str) -> str:
    """postgresql://user:pw@host:port/db?sslmode=… as a libpq key=value string (values quoted)."""
    parts = urlsplit(url)
    fields = {"host": parts.hostname, "port": parts.port, "user": unquote(parts.username or "") or None,
              "password": unquote(parts.password or "") or None, "dbname": unquote(parts.path.lstrip("/")) or None}
    fields.update(dict(parse_qsl(parts.query)))
    quote = lambda v: "'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'"  # noqa: E731
    return " ".join(f"{k}={quote(v)}" for k, v in fields.items() if v is not None)


@dataclass(frozen=True)
class Location:
    """A data root resolved: `home` (an absolute local path, or `s3://bucket/prefix` without a trailing
    slash), the fsspec filesystem that serves it, the local state folder and the catalog database."""

    home: str
    remote: bool
    state: Path
    catalog: CatalogDb

    @classmethod
    def resolve(cls, home: str | os.PathLike | None = None, catalog: str | None = None) -> "Location":
        """The one resolution of a data root: `home` and `catalog` where given, else the Settings'
        (NX_HOME, NX_CATALOG, NX_STATE)."""
        s = settings.current()
        raw = str(home or s.nx_home).strip()
        scheme = raw.split("://", 1)[0].lower() if "://" in raw else ""
        if scheme == "s3":
            bucket_prefix = raw.split("://", 1)[1].strip("/")
            if not bucket_prefix:
                raise NxInputError(f"NX_HOME {raw!r}", "names no bucket", "use s3://bucket/prefix")
            home_s = f"s3://{bucket_prefix}"
            state = (s.nx_state or Path("~/.nx_dagster/s3").expanduser() / bucket_prefix).resolve()
            remote = True
        elif scheme and scheme != "file":
            raise NxInputError(f"NX_HOME {raw!r}", f"uses {scheme}://, which this version cannot store data on",
                               "use a local folder or s3://bucket/prefix (any S3-compatible server: AWS_ENDPOINT_URL)")
        else:
            state = Path(raw.removeprefix("file://")).expanduser().resolve()
            home_s, remote = str(state), False
        db = catalog if catalog is not None else s.nx_catalog
        return cls(home_s, remote, state, parse_catalog(db, state))

    @property
    def bucket(self) -> str | None:
        return self.home.removeprefix("s3://").split("/", 1)[0] if self.remote else None

    @cached_property
    def fs(self):
        """The fsspec filesystem of `home` (s3fs for s3://, configured from the standard AWS settings)."""
        if self.remote:
            from nx_dagster.storage import s3

            return s3.filesystem()
        import fsspec

        return fsspec.filesystem("file")

    def url(self, *parts: str) -> str:
        """`home` joined with `parts` by "/" (a local path or an s3:// URL)."""
        return "/".join([self.home.rstrip("/"), *(p.strip("/") for p in parts)])

    @property
    def data_url(self) -> str:
        """Where DuckLake writes Parquet: `NX_HOME/data/` (with the trailing slash DuckLake wants)."""
        return self.url("data") + "/"
