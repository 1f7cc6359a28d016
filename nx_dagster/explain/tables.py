"""Rows of the public tables `explanations` and `simulations` as Arrow tables of their schemas
(`storage/schema.py`): a column added there appears here (as NULL unless this module fills it)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Sequence

import pyarrow as pa

from nx_dagster.explain.records import Explanation, Simulation
from nx_dagster.storage.schema import rows_to_table


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
