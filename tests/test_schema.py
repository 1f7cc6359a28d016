"""One schema per table: the DDL generated from the Arrow schemas is the SQL contract as it stood before
(TODAY: the DDL strings storage/schema.py held until the schemas replaced them), and docs/tables.md is
generated from them."""

from pathlib import Path

import pyarrow as pa
import pytest

from nx_dagster.storage import schema

TODAY = {
    "models": (
        "model VARCHAR, n_layer INTEGER, n_embd INTEGER, n_head INTEGER, n_neurons INTEGER, "
        "n_positions INTEGER, vocab_size INTEGER, checkpoint_sha256 VARCHAR, data_version VARCHAR, "
        "source VARCHAR, created_at TIMESTAMP WITH TIME ZONE"
    ),
    "sequences": (
        "model VARCHAR, corpus VARCHAR, sequence_id BIGINT, document VARCHAR, start_token INTEGER, "
        "token_ids INTEGER[], tokens VARCHAR[], source VARCHAR"
    ),
    "activation_records": (
        "model VARCHAR, corpus VARCHAR, gelu_variant VARCHAR, layer INTEGER, neuron INTEGER, "
        "kind VARCHAR, quantile INTEGER, rank INTEGER, split VARCHAR, sequence_id BIGINT, "
        "max_activation FLOAT, activations FLOAT[], source VARCHAR"
    ),
    "neuron_stats": (
        "model VARCHAR, corpus VARCHAR, gelu_variant VARCHAR, layer INTEGER, neuron INTEGER, "
        "n_tokens BIGINT, mean DOUBLE, variance DOUBLE, skewness DOUBLE, kurtosis DOUBLE, "
        "max_activation DOUBLE, quantile_boundaries DOUBLE[], source VARCHAR"
    ),
    "gelu_fix_impact": (
        "model VARCHAR, corpus VARCHAR, layer INTEGER, n BIGINT, median DOUBLE, p90 DOUBLE, p99 DOUBLE, "
        "p999 DOUBLE, max DOUBLE, mean DOUBLE"
    ),
    "neuron_connections": (
        "model VARCHAR, layer INTEGER, neuron INTEGER, direction VARCHAR, sign VARCHAR, rank INTEGER, "
        "other_layer INTEGER, other_neuron INTEGER, weight FLOAT, source VARCHAR"
    ),
    "token_connections": (
        "model VARCHAR, layer INTEGER, neuron INTEGER, direction VARCHAR, sign VARCHAR, rank INTEGER, "
        "token_id INTEGER, token VARCHAR, weight FLOAT, source VARCHAR"
    ),
    "token_activation_summary": (
        "model VARCHAR, corpus VARCHAR, gelu_variant VARCHAR, layer INTEGER, neuron INTEGER, "
        "rank INTEGER, token_id INTEGER, token VARCHAR, mean_activation FLOAT, count BIGINT, "
        "source VARCHAR"
    ),
    "explanations": (
        "explanation_id VARCHAR, model VARCHAR, gelu_variant VARCHAR, layer INTEGER, neuron INTEGER, "
        "explainer VARCHAR, explainer_model VARCHAR, prompt_version VARCHAR, candidate INTEGER, "
        "explanation VARCHAR, failure_reason VARCHAR, created_at TIMESTAMP WITH TIME ZONE, "
        "source VARCHAR"
    ),
    "simulations": (
        "explanation_id VARCHAR, model VARCHAR, layer INTEGER, neuron INTEGER, gelu_variant VARCHAR, "
        "explanation_gelu_variant VARCHAR, explainer VARCHAR, simulator VARCHAR, simulator_model VARCHAR, "
        "sequence_id BIGINT, kind VARCHAR, split VARCHAR, expected_activations FLOAT[], "
        "true_activations FLOAT[], failure_reason VARCHAR, source VARCHAR"
    ),
    "scores": (
        "explanation_id VARCHAR, model VARCHAR, layer INTEGER, neuron INTEGER, "
        "explanation_gelu_variant VARCHAR, gelu_variant VARCHAR, explainer VARCHAR, simulator VARCHAR, "
        "simulator_model VARCHAR, ev_correlation DOUBLE, ev_correlation_top DOUBLE, "
        "ev_correlation_random DOUBLE, rsquared DOUBLE, absolute_dev_explained DOUBLE, "
        "calibrated_rsquared DOUBLE, n_tokens BIGINT, failure_reason VARCHAR, n_sequences BIGINT, "
        "n_failed_sequences BIGINT, source VARCHAR"
    ),
    "llm_calls": (
        "call_key VARCHAR, endpoint VARCHAR, model VARCHAR, kind VARCHAR, request_json VARCHAR, "
        "response_json VARCHAR, status VARCHAR, http_status INTEGER, error VARCHAR, prompt_tokens BIGINT, "
        "completion_tokens BIGINT, cost_usd DOUBLE, latency_s DOUBLE, attempts INTEGER, "
        "created_at TIMESTAMP WITH TIME ZONE"
    ),
    "releases": (
        "release VARCHAR, created_at TIMESTAMP WITH TIME ZONE, snapshot BIGINT, parent_release VARCHAR, "
        "manifest VARCHAR, message VARCHAR, parent_snapshot BIGINT, n_rows BIGINT, n_files BIGINT, "
        "total_bytes BIGINT, new_files BIGINT, new_bytes BIGINT"
    ),
    "release_neuron_changes": (
        "release VARCHAR, parent_release VARCHAR, model VARCHAR, gelu_variant VARCHAR, layer INTEGER, "
        "neuron INTEGER, change VARCHAR, old_explanation_id VARCHAR, old_explanation VARCHAR, "
        "old_score DOUBLE, new_explanation_id VARCHAR, new_explanation VARCHAR, new_score DOUBLE"
    ),
}


def _normalized(ddl: str) -> str:
    return " ".join(ddl.split())


def test_generated_ddl_is_todays_sql_contract():
    """Bit for bit, up to whitespace: every name, type and column order of every table of TODAY; columns
    added since come after them (the contract: add columns, rename none)."""
    assert set(TODAY) <= set(schema.TABLES)
    for table, ddl in TODAY.items():
        generated = _normalized(schema.ddl(table))
        assert generated == _normalized(ddl) or generated.startswith(_normalized(ddl) + ", "), table


def test_columns_are_the_ddl_pairs():
    assert schema.columns("sequences")[-3:] == [
        ("token_ids", "INTEGER[]"), ("tokens", "VARCHAR[]"), ("source", "VARCHAR")]
    for table in schema.TABLES:
        assert ", ".join(f"{n} {t}" for n, t in schema.columns(table)) == schema.ddl(table)


def test_every_table_has_a_description_and_row_keys_name_its_columns():
    assert set(schema.DESCRIPTIONS) == set(schema.TABLES)
    for table, keys in schema.ROW_KEYS.items():
        assert set(keys) <= set(schema.TABLES[table].names), table
    assert set(schema.DATA_TABLES) | set(schema.RELEASE_TABLES) | set(schema.CHECK_TABLES) == set(schema.TABLES)


def test_docs_tables_md_is_generated():
    path = Path(__file__).resolve().parents[1] / "docs" / "tables.md"
    assert path.read_text() == schema.reference()


def test_table_converts_given_columns_to_the_table_types_in_table_order():
    t = schema.table("neuron_connections", {"weight": [0.5], "layer": pa.array([3], pa.int64()), "model": ["m"]})
    assert t.schema == pa.schema([("model", pa.string()), ("layer", pa.int32()), ("weight", pa.float32())])
    assert t.to_pylist() == [{"model": "m", "layer": 3, "weight": 0.5}]
    with pytest.raises(ValueError, match="no columns"):
        schema.table("neuron_connections", {"model": ["m"], "colour": ["red"]})


def test_rows_to_table_fills_every_column():
    t = schema.rows_to_table("models", [{"model": "m", "n_layer": 2, "extra": 1}])
    assert t.schema == schema.TABLES["models"]
    assert t.to_pylist()[0]["n_layer"] == 2 and t.to_pylist()[0]["source"] is None


def test_computed_schema_leaves_out_source():
    computed = schema.computed_schema("token_connections")
    assert computed.names == [n for n in schema.TABLES["token_connections"].names if n != "source"]
