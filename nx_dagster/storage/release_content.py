"""What a release holds and how it differs from its parent: per-table state and changelog queries.

Everything here reads the catalog `nx` at explicit DuckLake snapshots (`AT (VERSION => n)`), so the
answers do not depend on what other writers do meanwhile, and nothing here writes.

Content checksum (per table): the sum modulo 2**64 of the low 64 bits of md5 over each row's text form
(`CAST(row AS VARCHAR)`, every column in table order). A sum is independent of row order and of how
rows are split into Parquet files (compaction, inlining, partition rewrites), and unlike an XOR two
equal rows do not cancel. md5 and DuckDB's text form of values are stable, unlike `hash()`, which
DuckDB does not promise to keep across versions. Printed as 16 hex digits.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from nx_dagster.storage.schema import ROW_KEYS

ALIAS = "nx"
_ROW_HASH = "md5_number_lower(CAST(_r AS VARCHAR))::HUGEINT"
_MOD = 2**64
LINEAGE_KEYS = ("checkpoint_sha256", "gelu_variants")


def tables_at(con: duckdb.DuckDBPyConnection, snapshot: int | None) -> set[str]:
    """Names of the tables that exist at `snapshot` (None: no snapshot, no tables)."""
    if snapshot is None:
        return set()
    return {r[0] for r in con.execute(
        f"SELECT table_name FROM __ducklake_metadata_{ALIAS}.ducklake_table "
        "WHERE begin_snapshot <= ? AND (end_snapshot IS NULL OR end_snapshot > ?)", [snapshot, snapshot]).fetchall()}


def _at(table: str, snapshot: int) -> str:
    return f"(SELECT * FROM {table} AT (VERSION => {int(snapshot)})) _r"


def checksum(con: duckdb.DuckDBPyConnection, table: str, snapshot: int) -> tuple[int, str]:
    """(row count, content checksum) of `table` at `snapshot` (see the module docstring)."""
    n, total = con.execute(f"SELECT count(*), coalesce(sum({_ROW_HASH}), 0) FROM {_at(table, snapshot)}").fetchone()
    return int(n), f"{int(total) % _MOD:016x}"


def files(con: duckdb.DuckDBPyConnection, table: str, snapshot: int, data_path: str | Path) -> list[dict]:
    """The Parquet files `table` references at `snapshot`: [{path, bytes, kind: data|delete}], paths
    relative to the data root's data/ folder. Rows DuckLake keeps inlined in its metadata (small
    writes) are in no file."""
    rows = con.execute(
        "SELECT data_file, data_file_size_bytes, delete_file, delete_file_size_bytes "
        f"FROM ducklake_list_files('{ALIAS}', ?, snapshot_version => ?)", [table, snapshot]).fetchall()
    out, root = [], str(data_path).rstrip("/") + "/"
    for data, data_bytes, delete, delete_bytes in rows:
        out.append({"path": data.removeprefix(root), "bytes": int(data_bytes or 0), "kind": "data"})
        if delete:
            out.append({"path": delete.removeprefix(root), "bytes": int(delete_bytes or 0), "kind": "delete"})
    return sorted(out, key=lambda f: f["path"])


def last_writes(con: duckdb.DuckDBPyConnection, snapshot: int) -> dict[str, tuple[int, str]]:
    """Per table present at `snapshot`: (id, ISO time) of the latest snapshot at or before it that
    created, inserted into, deleted from or compacted the table, from DuckLake's snapshot log (no data
    is read). A table untouched after a parent release's snapshot holds exactly what it held then."""
    ids = dict(con.execute(
        f"SELECT table_id::VARCHAR, table_name FROM __ducklake_metadata_{ALIAS}.ducklake_table "
        "WHERE begin_snapshot <= ? AND (end_snapshot IS NULL OR end_snapshot > ?)", [snapshot, snapshot]).fetchall())
    out: dict[str, tuple[int, str]] = {}
    for sid, at, changes in con.execute(
            f"SELECT snapshot_id, snapshot_time, changes FROM {ALIAS}.snapshots() WHERE snapshot_id <= ? "
            "ORDER BY snapshot_id", [snapshot]).fetchall():
        for values in (changes or {}).values():
            for v in values or []:
                name = ids.get(v) or (v.split(".", 1)[1].strip('"') if v.startswith("main.") else None)
                if name in ids.values():
                    out[name] = (int(sid), at.isoformat())
    return out


def row_changes(con: duckdb.DuckDBPyConnection, table: str, parent: int | None, snapshot: int,
                existed: bool) -> dict[str, int]:
    """Rows added / changed / removed in `table` from `parent` to `snapshot`, by the table's row keys
    (`schema.ROW_KEYS`): a key only in the new state is added (its rows count), only in the old
    removed, in both with another row count or content changed (the new rows count). A row deleted and
    written again unchanged is no change."""
    keys = ROW_KEYS[table]
    cols = ", ".join(keys)
    old = (f"SELECT {cols}, {_ROW_HASH} AS h FROM {_at(table, parent)}" if existed and parent is not None
           else f"SELECT {cols}, 0::HUGEINT AS h FROM {table} WHERE false")
    new = f"SELECT {cols}, {_ROW_HASH} AS h FROM {_at(table, snapshot)}"
    on = " AND ".join(f"o.{k} IS NOT DISTINCT FROM n.{k}" for k in keys)
    added, removed, changed = con.execute(f"""
        WITH o AS (SELECT {cols}, count(*) AS c, sum(h) AS s FROM ({old}) GROUP BY ALL),
             n AS (SELECT {cols}, count(*) AS c, sum(h) AS s FROM ({new}) GROUP BY ALL)
        SELECT coalesce(sum(n.c) FILTER (WHERE o.c IS NULL), 0),
               coalesce(sum(o.c) FILTER (WHERE n.c IS NULL), 0),
               coalesce(sum(n.c) FILTER (WHERE o.c IS NOT NULL AND n.c IS NOT NULL AND (o.c <> n.c OR o.s <> n.s)), 0)
        FROM o FULL OUTER JOIN n ON {on}""").fetchone()
    return {"added": int(added), "changed": int(changed), "removed": int(removed)}


def _best(snapshot: int | None, present: set[str]) -> str:
    """Per (model, variant, layer, neuron): the explanation with the best `ev_correlation` when scored on
    the variant it was written from (ties: lower explanation_id), and that score."""
    empty = ("SELECT NULL::VARCHAR model, NULL::VARCHAR gelu_variant, NULL::INTEGER layer, NULL::INTEGER neuron, "
             "NULL::VARCHAR explanation_id, NULL::VARCHAR explanation, NULL::DOUBLE score WHERE false")
    if snapshot is None or not {"scores", "explanations"} <= present:
        return empty
    v = int(snapshot)
    return f"""
        SELECT s.model, s.explanation_gelu_variant AS gelu_variant, s.layer, s.neuron, s.explanation_id,
               e.explanation, s.ev_correlation AS score
        FROM (SELECT * FROM scores AT (VERSION => {v})) s
        JOIN (SELECT * FROM explanations AT (VERSION => {v})) e ON e.explanation_id = s.explanation_id
        WHERE s.gelu_variant = s.explanation_gelu_variant
        QUALIFY row_number() OVER (PARTITION BY s.model, s.explanation_gelu_variant, s.layer, s.neuron
                                   ORDER BY s.ev_correlation DESC NULLS LAST, s.explanation_id) = 1"""


def neuron_changes_sql(parent: int | None, old_tables: set[str], snapshot: int, new_tables: set[str]) -> str:
    """A query of the neurons whose best explanation or best score differs between the two snapshots,
    with old and new values (the columns of `release_neuron_changes` after release, parent_release)."""
    return f"""
        WITH o AS ({_best(parent, old_tables)}), n AS ({_best(snapshot, new_tables)})
        SELECT coalesce(n.model, o.model) AS model, coalesce(n.gelu_variant, o.gelu_variant) AS gelu_variant,
               coalesce(n.layer, o.layer) AS layer, coalesce(n.neuron, o.neuron) AS neuron,
               CASE WHEN o.model IS NULL THEN 'added' WHEN n.model IS NULL THEN 'removed'
                    WHEN o.explanation IS DISTINCT FROM n.explanation THEN 'explanation' ELSE 'score' END AS change,
               o.explanation_id AS old_explanation_id, o.explanation AS old_explanation, o.score AS old_score,
               n.explanation_id AS new_explanation_id, n.explanation AS new_explanation, n.score AS new_score
        FROM o FULL OUTER JOIN n ON o.model = n.model AND o.gelu_variant = n.gelu_variant
             AND o.layer = n.layer AND o.neuron = n.neuron
        WHERE o.model IS NULL OR n.model IS NULL OR o.explanation IS DISTINCT FROM n.explanation
              OR o.score IS DISTINCT FROM n.score
        ORDER BY model, gelu_variant, layer, neuron"""


def lineage(con: duckdb.DuckDBPyConnection, table: str, snapshot: int, present: set[str]) -> dict:
    """Models (with their checkpoint sha256) and GELU variants present in `table` at `snapshot`."""
    cols = {r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_catalog = ? AND table_name = ?",
        [ALIAS, table]).fetchall()}
    out: dict = {}
    if "model" in cols and table != "llm_calls":  # llm_calls.model is the LLM, not the subject
        models = [r[0] for r in con.execute(
            f"SELECT DISTINCT model FROM {_at(table, snapshot)} WHERE model IS NOT NULL ORDER BY 1").fetchall()]
        sha = {}
        if "models" in present and models:
            sha = dict(con.execute(f"SELECT model, any_value(checkpoint_sha256) FROM {_at('models', snapshot)} "
                                   "GROUP BY model").fetchall())
        out["checkpoint_sha256"] = {m: sha.get(m) for m in models}
    if "gelu_variant" in cols:
        out["gelu_variants"] = [r[0] for r in con.execute(
            f"SELECT DISTINCT gelu_variant FROM {_at(table, snapshot)} WHERE gelu_variant IS NOT NULL ORDER BY 1"
        ).fetchall()]
    return out
