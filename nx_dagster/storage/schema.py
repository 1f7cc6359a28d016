"""The public tables (PRODUCT.md §4): one Arrow schema per table, the only place that names their columns
and types. Columns may be added; none may be renamed.

The DuckDB DDL (`ddl`, `columns`: what the catalog creates and migrates, and the types a written file's
columns are cast to) is generated from these schemas, and so are the writers' Arrow tables (`table`,
`rows_to_table`) and the column reference docs/tables.md (`reference`).

`source` (tables that `nxd import` fills): the URL of the published file a row was imported from; NULL
for rows computed here.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import pyarrow as pa

VARCHAR, INTEGER, BIGINT = pa.string(), pa.int32(), pa.int64()
FLOAT, DOUBLE, BOOLEAN = pa.float32(), pa.float64(), pa.bool_()
TIMESTAMPTZ = pa.timestamp("us", tz="UTC")
_SQL_TYPES = {VARCHAR: "VARCHAR", INTEGER: "INTEGER", BIGINT: "BIGINT", FLOAT: "FLOAT", DOUBLE: "DOUBLE",
              BOOLEAN: "BOOLEAN", TIMESTAMPTZ: "TIMESTAMP WITH TIME ZONE"}


# the columns that place a connection's top-k entry (connections.neurons.list_columns builds them)
_CONNECTION_PLACE = [("model", VARCHAR), ("layer", INTEGER), ("neuron", INTEGER), ("direction", VARCHAR),
                     ("sign", VARCHAR), ("rank", INTEGER)]

# table -> (one-line description, columns)
_TABLES: dict[str, tuple[str, list[tuple[str, pa.DataType]]]] = {
    "models": ("One row per model checkpoint: its shape and the checkpoint it was read from.", [
        ("model", VARCHAR), ("n_layer", INTEGER), ("n_embd", INTEGER), ("n_head", INTEGER), ("n_neurons", INTEGER),
        ("n_positions", INTEGER), ("vocab_size", INTEGER), ("checkpoint_sha256", VARCHAR),
        ("data_version", VARCHAR), ("source", VARCHAR), ("created_at", TIMESTAMPTZ)]),
    "sequences": ("The corpus sequences activations are recorded on, as token ids and token strings.", [
        ("model", VARCHAR), ("corpus", VARCHAR), ("sequence_id", BIGINT), ("document", VARCHAR),
        ("start_token", INTEGER), ("token_ids", pa.list_(INTEGER)), ("tokens", pa.list_(VARCHAR)),
        ("source", VARCHAR)]),
    "activation_records": ("Per neuron, the top, random and quantile sequences with their activations.", [
        ("model", VARCHAR), ("corpus", VARCHAR), ("gelu_variant", VARCHAR), ("layer", INTEGER), ("neuron", INTEGER),
        ("kind", VARCHAR), ("quantile", INTEGER), ("rank", INTEGER), ("split", VARCHAR), ("sequence_id", BIGINT),
        ("max_activation", FLOAT), ("activations", pa.list_(FLOAT)), ("source", VARCHAR)]),
    "neuron_stats": ("Per neuron, the moments, maximum and quantile boundaries of its activations.", [
        ("model", VARCHAR), ("corpus", VARCHAR), ("gelu_variant", VARCHAR), ("layer", INTEGER), ("neuron", INTEGER),
        ("n_tokens", BIGINT), ("mean", DOUBLE), ("variance", DOUBLE), ("skewness", DOUBLE), ("kurtosis", DOUBLE),
        ("max_activation", DOUBLE), ("quantile_boundaries", pa.list_(DOUBLE)), ("source", VARCHAR)]),
    "gelu_fix_impact": ("Per layer (NULL: all layers), the distribution of |post_fix - pre_fix| activations.", [
        ("model", VARCHAR), ("corpus", VARCHAR), ("layer", INTEGER), ("n", BIGINT), ("median", DOUBLE),
        ("p90", DOUBLE), ("p99", DOUBLE), ("p999", DOUBLE), ("max", DOUBLE), ("mean", DOUBLE)]),
    "neuron_connections": ("Per neuron, the top-k upstream and downstream neurons by weight, of each sign.", [
        *_CONNECTION_PLACE, ("other_layer", INTEGER), ("other_neuron", INTEGER), ("weight", FLOAT),
        ("source", VARCHAR)]),
    "token_connections": ("Per neuron, the top-k input and output tokens by weight, of each sign.", [
        *_CONNECTION_PLACE, ("token_id", INTEGER), ("token", VARCHAR), ("weight", FLOAT), ("source", VARCHAR)]),
    "token_activation_summary": ("Per neuron, the tokens with the highest mean activation over the corpus.", [
        ("model", VARCHAR), ("corpus", VARCHAR), ("gelu_variant", VARCHAR), ("layer", INTEGER), ("neuron", INTEGER),
        ("rank", INTEGER), ("token_id", INTEGER), ("token", VARCHAR), ("mean_activation", FLOAT),
        ("count", BIGINT), ("source", VARCHAR)]),
    "explanations": ("Explanations of neurons written by an explainer (an LLM or a baseline).", [
        ("explanation_id", VARCHAR), ("model", VARCHAR), ("gelu_variant", VARCHAR), ("layer", INTEGER),
        ("neuron", INTEGER), ("explainer", VARCHAR), ("explainer_model", VARCHAR), ("prompt_version", VARCHAR),
        ("candidate", INTEGER), ("explanation", VARCHAR), ("failure_reason", VARCHAR),
        ("created_at", TIMESTAMPTZ), ("source", VARCHAR)]),
    "simulations": ("Per explanation and scored sequence, the simulated and the true activations.", [
        ("explanation_id", VARCHAR), ("model", VARCHAR), ("layer", INTEGER), ("neuron", INTEGER),
        ("gelu_variant", VARCHAR), ("explanation_gelu_variant", VARCHAR), ("explainer", VARCHAR),
        ("simulator", VARCHAR), ("simulator_model", VARCHAR), ("sequence_id", BIGINT), ("kind", VARCHAR),
        ("split", VARCHAR), ("expected_activations", pa.list_(FLOAT)), ("true_activations", pa.list_(FLOAT)),
        ("failure_reason", VARCHAR), ("source", VARCHAR)]),
    "scores": ("Per explanation and simulator, how well the simulation matches the true activations.", [
        ("explanation_id", VARCHAR), ("model", VARCHAR), ("layer", INTEGER), ("neuron", INTEGER),
        ("explanation_gelu_variant", VARCHAR), ("gelu_variant", VARCHAR), ("explainer", VARCHAR),
        ("simulator", VARCHAR), ("simulator_model", VARCHAR), ("ev_correlation", DOUBLE),
        ("ev_correlation_top", DOUBLE), ("ev_correlation_random", DOUBLE), ("rsquared", DOUBLE),
        ("absolute_dev_explained", DOUBLE), ("calibrated_rsquared", DOUBLE), ("n_tokens", BIGINT),
        ("failure_reason", VARCHAR), ("n_sequences", BIGINT), ("n_failed_sequences", BIGINT), ("source", VARCHAR),
        # the bootstrap interval of ev_correlation (scored sequences resampled with bootstrap_seed) and the
        # null: another neuron's explanation simulated on this neuron's records (NULL where none was drawn)
        ("ev_correlation_ci_low", DOUBLE), ("ev_correlation_ci_high", DOUBLE), ("bootstrap_seed", BIGINT),
        ("null_explanation_id", VARCHAR), ("null_ev_correlation", DOUBLE)]),
    "classification_scores": ("Per explanation, scorer (detection or fuzzing) and judge: how often the judge, "
                              "reading the explanation, tells activating excerpts from the others.", [
        ("explanation_id", VARCHAR), ("model", VARCHAR), ("layer", INTEGER), ("neuron", INTEGER),
        ("explanation_gelu_variant", VARCHAR), ("gelu_variant", VARCHAR), ("explainer", VARCHAR),
        ("scorer", VARCHAR), ("judge", VARCHAR), ("judge_model", VARCHAR), ("n_positive", INTEGER),
        ("n_negative", INTEGER), ("true_positive", INTEGER), ("false_positive", INTEGER),
        ("true_negative", INTEGER), ("false_negative", INTEGER), ("balanced_accuracy", DOUBLE),
        ("balanced_accuracy_ci_low", DOUBLE), ("balanced_accuracy_ci_high", DOUBLE), ("f1", DOUBLE),
        ("auroc", DOUBLE), ("null_explanation_id", VARCHAR), ("null_balanced_accuracy", DOUBLE),
        ("bootstrap_seed", BIGINT), ("excerpt_sequence_ids", pa.list_(BIGINT)),
        ("excerpt_truth", pa.list_(BOOLEAN)), ("excerpt_probability", pa.list_(DOUBLE)),
        ("failure_reason", VARCHAR), ("source", VARCHAR)]),
    "intruder_scores": ("Per neuron and judge (no explanation): how often the judge finds the excerpt of "
                        "another neuron among the neuron's own.", [
        ("model", VARCHAR), ("gelu_variant", VARCHAR), ("layer", INTEGER), ("neuron", INTEGER), ("judge", VARCHAR),
        ("judge_model", VARCHAR), ("n_trials", INTEGER), ("n_correct", INTEGER), ("accuracy", DOUBLE),
        ("accuracy_ci_low", DOUBLE), ("accuracy_ci_high", DOUBLE), ("chance", DOUBLE), ("bootstrap_seed", BIGINT),
        ("failure_reason", VARCHAR), ("source", VARCHAR)]),
    "method_checks": ("Per `nxd check-method` run and scorer: a method set-up on planted neurons of known "
                      "meaning (recovered, scores of planted vs random neurons, LLM cost per neuron).", [
        ("check_id", VARCHAR), ("created_at", TIMESTAMPTZ), ("explainer", VARCHAR), ("explainer_model", VARCHAR),
        ("simulator", VARCHAR), ("simulator_model", VARCHAR), ("judge", VARCHAR), ("judge_model", VARCHAR),
        ("scorer", VARCHAR), ("n_planted", INTEGER), ("n_recovered", INTEGER), ("n_random", INTEGER),
        ("planted_mean", DOUBLE), ("planted_ci_low_mean", DOUBLE), ("planted_null_mean", DOUBLE),
        ("planted_above_null", DOUBLE), ("random_mean", DOUBLE), ("random_null_mean", DOUBLE),
        ("random_above_null", DOUBLE), ("llm_calls", BIGINT), ("prompt_tokens", BIGINT),
        ("completion_tokens", BIGINT), ("cost_usd_per_neuron", DOUBLE), ("seconds", DOUBLE),
        ("passed", BOOLEAN)]),
    "llm_calls": ("Every LLM request and its outcome, copied from the call ledger.", [
        ("call_key", VARCHAR), ("endpoint", VARCHAR), ("model", VARCHAR), ("kind", VARCHAR),
        ("request_json", VARCHAR), ("response_json", VARCHAR), ("status", VARCHAR), ("http_status", INTEGER),
        ("error", VARCHAR), ("prompt_tokens", BIGINT), ("completion_tokens", BIGINT), ("cost_usd", DOUBLE),
        ("latency_s", DOUBLE), ("attempts", INTEGER), ("created_at", TIMESTAMPTZ)]),
    # Written only by a release (nx_dagster/storage/releases.py), never replaced: one row per release.
    "releases": ("One row per release: its snapshot, parent and manifest.", [
        ("release", VARCHAR), ("created_at", TIMESTAMPTZ), ("snapshot", BIGINT), ("parent_release", VARCHAR),
        ("manifest", VARCHAR), ("message", VARCHAR), ("parent_snapshot", BIGINT), ("n_rows", BIGINT),
        ("n_files", BIGINT), ("total_bytes", BIGINT), ("new_files", BIGINT), ("new_bytes", BIGINT)]),
    "release_neuron_changes": ("Per release, the neurons whose best explanation or best score changed.", [
        ("release", VARCHAR), ("parent_release", VARCHAR), ("model", VARCHAR), ("gelu_variant", VARCHAR),
        ("layer", INTEGER), ("neuron", INTEGER), ("change", VARCHAR), ("old_explanation_id", VARCHAR),
        ("old_explanation", VARCHAR), ("old_score", DOUBLE), ("new_explanation_id", VARCHAR),
        ("new_explanation", VARCHAR), ("new_score", DOUBLE)]),
}
TABLES: dict[str, pa.Schema] = {name: pa.schema(cols) for name, (_, cols) in _TABLES.items()}
DESCRIPTIONS: dict[str, str] = {name: text for name, (text, _) in _TABLES.items()}

# The tables a release freezes (the release bookkeeping itself is not part of a release's content).
RELEASE_TABLES = ("releases", "release_neuron_changes")
# Records of `nxd check-method` runs: about a method set-up, not a model's data, so neither frozen in a
# release nor exported.
CHECK_TABLES = ("method_checks",)
DATA_TABLES = tuple(t for t in TABLES if t not in RELEASE_TABLES + CHECK_TABLES)

# Columns that identify a row's "slot" for a release changelog: a slot present only in the new release is
# added, only in the parent removed, in both with other content changed.
ROW_KEYS: dict[str, tuple[str, ...]] = {
    "models": ("model",),
    "sequences": ("model", "corpus", "sequence_id"),
    "activation_records": ("model", "corpus", "gelu_variant", "layer", "neuron", "kind", "quantile", "rank"),
    "neuron_stats": ("model", "corpus", "gelu_variant", "layer", "neuron"),
    "gelu_fix_impact": ("model", "corpus", "layer"),
    "neuron_connections": ("model", "layer", "neuron", "direction", "sign", "rank"),
    "token_connections": ("model", "layer", "neuron", "direction", "sign", "rank"),
    "token_activation_summary": ("model", "corpus", "gelu_variant", "layer", "neuron", "rank"),
    "explanations": ("explanation_id",),
    "simulations": ("explanation_id", "gelu_variant", "simulator", "simulator_model", "sequence_id", "kind", "split"),
    "scores": ("explanation_id", "gelu_variant", "simulator", "simulator_model"),
    "classification_scores": ("explanation_id", "gelu_variant", "scorer", "judge", "judge_model"),
    "intruder_scores": ("model", "gelu_variant", "layer", "neuron", "judge", "judge_model"),
    "method_checks": ("check_id", "scorer"),
    "llm_calls": ("call_key",),
}


def sql_type(t: pa.DataType) -> str:
    """The DuckDB type of an Arrow type of these schemas (a list is its element type with `[]`)."""
    if pa.types.is_list(t):
        return f"{sql_type(t.value_type)}[]"
    return _SQL_TYPES[t]


def columns(table: str) -> list[tuple[str, str]]:
    """(name, DuckDB type) of each column of `table`, in order."""
    return [(f.name, sql_type(f.type)) for f in TABLES[table]]


def ddl(table: str) -> str:
    """The column list of `table`'s CREATE TABLE."""
    return ", ".join(f"{name} {sql}" for name, sql in columns(table))


def computed_schema(table: str) -> pa.Schema:
    """`table`'s schema without `source`: the columns of the rows computed here (they leave it NULL)."""
    return pa.schema([f for f in TABLES[table] if f.name != "source"])


def table(name: str, cols: Mapping[str, Any]) -> pa.Table:
    """An Arrow table of `name`'s columns given in `cols` (arrays, numpy arrays or lists), in the table's
    column order, each converted to its type there. A column `name` does not have is a ValueError."""
    schema = TABLES[name]
    unknown = sorted(set(cols) - set(schema.names))
    if unknown:
        raise ValueError(f"{name} has no columns {unknown}")
    chosen = pa.schema([f for f in schema if f.name in cols])
    return pa.table({f.name: cols[f.name] for f in chosen}, schema=chosen)


def rows_to_table(name: str, rows: Sequence[dict[str, Any]]) -> pa.Table:
    """All of `name`'s columns from dict rows; a column the rows lack is NULL, a key not a column dropped."""
    return table(name, {f.name: [r.get(f.name) for r in rows] for f in TABLES[name]})


def reference() -> str:
    """The column reference docs/tables.md: per table its description and its columns with DuckDB types."""
    regenerate = "python -c \"from nx_dagster.storage.schema import reference; print(reference(), end='')\""
    out = ["# Tables", "",
           "The public tables and their columns (PRODUCT.md §4). Generated from `nx_dagster/storage/schema.py`",
           "by `schema.reference()` (tests/test_schema.py checks that it matches); to regenerate:", "",
           f"    {regenerate} > docs/tables.md", ""]
    for name in TABLES:
        out += [f"## `{name}`", "", DESCRIPTIONS[name], "", "| column | type |", "| --- | --- |"]
        out += [f"| `{col}` | {sql} |" for col, sql in columns(name)]
        out.append("")
    return "\n".join(out)
