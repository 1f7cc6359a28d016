"""Load DuckDB extensions without the network: from the duckdb-extension-* PyPI packages when installed,
else by a plain `INSTALL name` (which needs DuckDB's extension server).

DuckDB checks an extension's signature on every LOAD, into every new database: about 0.25 s per
extension, so half a second for each catalog connection (ducklake + sqlite), which dominated small
commits and queries. `connect` checks each extension once per process: the first database that loads
it does so with the signature check; later databases of the same process that load only extensions
already checked here skip re-checking the same installed files.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import duckdb

# DuckDB calls the sqlite extension `sqlite_scanner` once loaded; the package is duckdb-extension-sqlite.
_PACKAGES = {"ducklake": "ducklake", "sqlite": "sqlite", "httpfs": "httpfs", "postgres": "postgres"}


def packaged_extension(name: str) -> Path | None:
    spec = importlib.util.find_spec(f"duckdb_extension_{_PACKAGES[name]}")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0])
    wanted = f"v{duckdb.__version__}"
    files = sorted(root.rglob(f"{name}.duckdb_extension"))
    exact = [f for f in files if wanted in f.parts]
    return (exact or files or [None])[0]


_checked: set[str] = set()  # extensions this process has loaded with DuckDB's signature check


def connect(names: list[str]) -> duckdb.DuckDBPyConnection:
    """A new in-memory DuckDB database with the extensions `names` loaded (see the module's note)."""
    trusted = all(n in _checked for n in names)
    con = duckdb.connect(config={"allow_unsigned_extensions": "true"} if trusted else {})
    try:
        for n in names:
            load_extension(con, n)
    except BaseException:
        con.close()
        raise
    if not trusted:
        _checked.update(names)
    return con


def load_extension(con: duckdb.DuckDBPyConnection, name: str) -> None:
    try:
        con.execute(f"LOAD {name}")
        return
    except duckdb.Error:
        pass
    path = packaged_extension(name)
    try:
        con.execute(f"INSTALL '{path}'" if path else f"INSTALL {name}")
        con.execute(f"LOAD {name}")
    except duckdb.Error as e:
        raise RuntimeError(
            f"DuckDB extension {name!r} could not be installed ({e}). "
            f"Fix: pip install duckdb-extension-{_PACKAGES[name]}=={duckdb.__version__} "
            "(works offline), or allow DuckDB to reach its extension server."
        ) from e
