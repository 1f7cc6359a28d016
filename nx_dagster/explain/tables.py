"""Rows of the public tables `explanations`, `simulations` (and `scores`, from batch_scoring) as Arrow
tables whose columns and types follow `storage/schema.py` exactly: a column added there appears here
(as NULL unless this module fills it)."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, Sequence

import pyarrow as pa

from nx_dagster.explain.records import Explanation, Simulation
from nx_dagster.storage.schema import TABLES

_TYPES = {"VARCHAR": pa.string(), "INTEGER": pa.int32(), "BIGINT": pa.int64(), "FLOAT": pa.float32(),
          "DOUBLE": pa.float64(), "BOOLEAN": pa.bool_(), "TIMESTAMP WITH TIME ZONE": pa.timestamp("us", tz="UTC")}


def _arrow_type(sql: str) -> pa.DataType:
    sql = " ".join(sql.upper().split())
    if sql.endswith("[]"):
        return pa.list_(_arrow_type(sql[:-2]))
    return _TYPES[sql]


@lru_cache(maxsize=None)
def arrow_schema(table: str) -> pa.Schema:
    """The Arrow schema of a public table, parsed from its DDL."""
    fields = []
    for col in re.split(r",(?![^\[]*\])", TABLES[table]):
        name, sql_type = col.strip().split(None, 1)
        fields.append(pa.field(name, _arrow_type(sql_type)))
    return pa.schema(fields)


def rows_to_table(table: str, rows: Sequence[dict[str, Any]]) -> pa.Table:
    """Build an Arrow table for `table` from dict rows; missing columns are NULL, unknown keys dropped."""
    schema = arrow_schema(table)
    return pa.table({f.name: pa.array([r.get(f.name) for r in rows], type=f.type) for f in schema}, schema=schema)


def explanations_table(explanations: Sequence[Explanation], created_at: datetime | None = None) -> pa.Table:
    now = created_at or datetime.now(timezone.utc)
    return rows_to_table("explanations", [{**e.__dict__, "created_at": now} for e in explanations])


def explanations_from_table(table: pa.Table) -> list[Explanation]:
    """Explanations read back from the catalog (ids kept as stored)."""
    fields = Explanation.__dataclass_fields__
    return [Explanation(**{k: v for k, v in row.items() if k in fields}) for row in table.to_pylist()]


def simulations_table(simulations: Sequence[Simulation]) -> pa.Table:
    return rows_to_table("simulations", [s.__dict__ for s in simulations])


def explanation_variants(explanations: Sequence[Explanation] | pa.Table) -> dict[str, str]:
    """explanation_id -> the GELU variant it was written from (what `scores` needs and `simulations`
    does not store)."""
    if isinstance(explanations, pa.Table):
        return dict(zip(explanations.column("explanation_id").to_pylist(),
                        explanations.column("gelu_variant").to_pylist()))
    return {e.explanation_id: e.gelu_variant for e in explanations}
