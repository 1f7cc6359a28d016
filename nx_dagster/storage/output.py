"""Print a query result as a table, CSV or JSON, for every column type DuckDB and DuckLake return.

- `table`: DuckDB's own box rendering (every type has a text form).
- `csv`: one header line, then rows (pyarrow's writer). Nested values (LIST, ARRAY, STRUCT, MAP,
  UNION) are written as JSON text in one cell (DuckDB's `to_json`: map keys become strings); types
  the CSV writer cannot take (INTERVAL, BLOB, BIT, ...) as DuckDB's text form (`CAST(... AS VARCHAR)`);
  NULL is an empty cell.
- `json`: one array of row objects (DuckDB's `to_json` per row, so nested values stay nested); NULL is
  null, and NaN / Infinity / -Infinity, which JSON cannot hold, are the strings "NaN", "Infinity",
  "-Infinity".
"""

from __future__ import annotations

import json
import sys
from typing import IO

import duckdb

NESTED = {"list", "array", "struct", "map", "union"}
CSV_NATIVE = {"boolean", "tinyint", "smallint", "integer", "bigint", "hugeint", "utinyint", "usmallint", "uinteger",
              "ubigint", "float", "double", "decimal", "varchar", "date", "time", "timestamp", "timestamp_s",
              "timestamp_ms", "timestamp_ns", "timestamp with time zone", "uuid", "enum"}


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def csv_relation(rel: duckdb.DuckDBPyRelation) -> duckdb.DuckDBPyRelation:
    """`rel` with each column in a form the CSV writer takes (see the module docstring)."""
    exprs = []
    for name, typ in zip(rel.columns, rel.types):
        col = _quote(name)
        if typ.id in NESTED:
            exprs.append(f"to_json({col}) AS {col}")
        elif typ.id not in CSV_NATIVE:
            exprs.append(f"CAST({col} AS VARCHAR) AS {col}")
        else:
            exprs.append(col)
    return rel.project(", ".join(exprs)) if exprs else rel


def write(rel: duckdb.DuckDBPyRelation, fmt: str, max_rows: int = 40, out: IO | None = None) -> None:
    """Print `rel` to `out` (stdout) as `fmt` ("table", "csv" or "json"). Raises ValueError for JSON
    rows with duplicate column names (a JSON object cannot hold them)."""
    out = out or sys.stdout
    if fmt == "table":
        rel.show(max_rows=max_rows, max_width=200)  # DuckDB prints to the process's stdout
        return
    if fmt == "csv":
        import pyarrow.csv as pacsv

        out.flush()
        buffer = getattr(out, "buffer", None)
        table = csv_relation(rel).to_arrow_table()
        if buffer is not None:
            pacsv.write_csv(table, buffer)
            buffer.flush()
        else:  # a text stream (captured output): write through an in-memory buffer
            import io

            raw = io.BytesIO()
            pacsv.write_csv(table, raw)
            out.write(raw.getvalue().decode())
        return
    if len(set(rel.columns)) != len(rel.columns):
        raise ValueError(f"JSON rows need unique column names, the result has {rel.columns}: alias the duplicates")
    rows = [json.loads(r[0], parse_constant=str) for r in rel.set_alias("_row").project("to_json(_row)").fetchall()]
    json.dump(rows, out)
    out.write("\n")

