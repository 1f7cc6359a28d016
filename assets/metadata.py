"""Readable Dagster metadata built from pyarrow tables: schemas, markdown previews, histograms."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pyarrow as pa


def schema(table: pa.Table) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(f.name, str(f.type)) for f in table.schema])


def markdown_table(rows: list[dict], floats: str = "{:.4g}") -> str:
    if not rows:
        return "_no rows_"
    cols = list(dict.fromkeys(c for r in rows for c in r))  # union of keys, first-seen order
    fmt = lambda v: floats.format(v) if isinstance(v, float) else ("NULL" if v is None else str(v))  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def histogram(values: np.ndarray, bins: int = 12, label: str = "value") -> str:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return "_no finite values_"
    counts, edges = np.histogram(values, bins=bins)
    top = counts.max() or 1
    lines = [f"| {label} | count | |", "|---|---|---|"]
    for c, lo, hi in zip(counts, edges[:-1], edges[1:]):
        lines.append(f"| {lo:.3g} – {hi:.3g} | {c} | {'█' * int(round(20 * c / top))} |")
    return "\n".join(lines)
