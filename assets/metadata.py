"""Readable Dagster metadata built from pyarrow tables: schemas, markdown previews, histograms, and the
per-partition (per-layer) metadata of the layer-partitioned assets.

Text in a markdown table renders as written: every cell but the ones named `raw` (links) has its
markdown characters escaped, so a token such as `'**'` or `'|'` or a formula `x*sigmoid(1.702*x)`
shows as is."""

from __future__ import annotations

import re

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nx_dagster.viewer.serve import page_url

# what is markup inside a table cell; `_` only where it could open or close emphasis (an underscore
# between two letters or digits never does, so `activation_records` stays readable as written)
_MARKDOWN = re.compile(r"([\\`*\[\]<>|~&$]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z]))")


def schema(table: pa.Table) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(f.name, str(f.type)) for f in table.schema])


def md_escape(text: str) -> str:
    """`text` as literal markdown in a table cell: the characters that are markup there backslash-escaped
    (CommonMark escapes), line breaks as spaces."""
    return _MARKDOWN.sub(r"\\\1", " ".join(str(text).splitlines()))


def markdown_table(rows: list[dict], floats: str = "{:.4g}", raw: tuple[str, ...] = ()) -> str:
    """A markdown table of `rows` (the union of their keys as columns); cells of the `raw` columns are
    markdown already (links), every other cell is shown as written."""
    if not rows:
        return "_no rows_"
    cols = list(dict.fromkeys(c for r in rows for c in r))  # union of keys, first-seen order

    def cell(col: str, v) -> str:
        if v is None:
            return "NULL"
        text = floats.format(v) if isinstance(v, float) else str(v)
        return text if col in raw else md_escape(text)

    lines = ["| " + " | ".join(md_escape(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(c, r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def histogram(values: np.ndarray, bins: int = 12, label: str = "value") -> str:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return "_no finite values_"
    counts, edges = np.histogram(values, bins=bins)
    top = counts.max() or 1
    lines = [f"| {md_escape(label)} | count | |", "|---|---|---|"]
    for c, lo, hi in zip(counts, edges[:-1], edges[1:]):
        lines.append(f"| {md_escape(f'{lo:.3g} – {hi:.3g}')} | {c} | {'█' * int(round(20 * c / top))} |")
    return "\n".join(lines)


def of_layer(table: pa.Table, layer: int) -> pa.Table:
    return table.filter(pc.equal(table["layer"], layer))


def layer_metadata(tables: dict[str, pa.Table], layer: int) -> dict:
    """One activations partition's own metadata: its layer, row counts, strongest neurons (with their
    tokens of highest mean activation and a link to their page at `nxd viewer --serve`) and the
    distribution of its neurons' maximum activations. `tables`: records, stats, summary of the run."""
    records, stats, summary = (of_layer(tables[k], layer) for k in ("records", "stats", "summary"))
    top_rows = sorted(stats.select(["neuron", "max_activation", "mean", "variance", "kurtosis"]).to_pylist(),
                      key=lambda r: -r["max_activation"])[:10]
    tokens: dict[int, list[str]] = {}
    for r in summary.filter(pc.less(summary["rank"], 3)).select(["neuron", "rank", "token"]).to_pylist():
        tokens.setdefault(r["neuron"], []).append(repr(r["token"]))
    for r in top_rows:
        r["top_mean_tokens"] = " ".join(tokens.get(r["neuron"], []))
        r["page"] = f"[{layer}/{r['neuron']}]({page_url(layer, r['neuron'])})"
    return {
        "layer": layer, "dagster/row_count": records.num_rows, "neuron_stats_rows": stats.num_rows,
        "token_summary_rows": summary.num_rows,
        "strongest_neurons": dg.MetadataValue.md(markdown_table(top_rows, raw=("page",))),
        "max_activation_distribution": dg.MetadataValue.md(
            histogram(stats["max_activation"].to_numpy(), label="max activation")),
    }


def fix_impact_table(rows: list[dict], published: dict[str, float]) -> dg.MetadataValue:
    """The `gelu_fix_impact` rows (layer NULL = all layers) beside OpenAI's published GPT-2 small figures."""
    keys = ("median", "p90", "p99", "p999", "max", "n")
    shown = [{"layer": "all" if r["layer"] is None else r["layer"], **{k: r[k] for k in keys}} for r in rows]
    shown.append({"layer": "OpenAI GPT-2 small (published)", **published, "max": None, "n": None})
    return dg.MetadataValue.md(markdown_table(shown))
