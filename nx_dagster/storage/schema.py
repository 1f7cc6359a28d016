"""The public tables (PRODUCT.md §4). Columns may be added; none may be renamed.

`replace_keys` are the columns that identify one partition of a table: a write replaces every row
that matches the incoming rows on those columns.

`source` (tables that `nxd import` fills): the URL of the published file a row was imported from; NULL
for rows computed here.
"""

TABLES: dict[str, str] = {
    "models": """
        model VARCHAR, n_layer INTEGER, n_embd INTEGER, n_head INTEGER, n_neurons INTEGER,
        n_positions INTEGER, vocab_size INTEGER, checkpoint_sha256 VARCHAR, data_version VARCHAR,
        source VARCHAR, created_at TIMESTAMP WITH TIME ZONE""",
    "sequences": """
        model VARCHAR, corpus VARCHAR, sequence_id BIGINT, document VARCHAR, start_token INTEGER,
        token_ids INTEGER[], tokens VARCHAR[], source VARCHAR""",
    "activation_records": """
        model VARCHAR, corpus VARCHAR, gelu_variant VARCHAR, layer INTEGER, neuron INTEGER, kind VARCHAR,
        quantile INTEGER, rank INTEGER, split VARCHAR, sequence_id BIGINT, max_activation FLOAT,
        activations FLOAT[], source VARCHAR""",
    "neuron_stats": """
        model VARCHAR, corpus VARCHAR, gelu_variant VARCHAR, layer INTEGER, neuron INTEGER, n_tokens BIGINT,
        mean DOUBLE, variance DOUBLE, skewness DOUBLE, kurtosis DOUBLE, max_activation DOUBLE,
        quantile_boundaries DOUBLE[], source VARCHAR""",
    "gelu_fix_impact": """
        model VARCHAR, corpus VARCHAR, layer INTEGER, n BIGINT, median DOUBLE, p90 DOUBLE, p99 DOUBLE,
        p999 DOUBLE, max DOUBLE, mean DOUBLE""",
    "neuron_connections": """
        model VARCHAR, layer INTEGER, neuron INTEGER, direction VARCHAR, sign VARCHAR, rank INTEGER,
        other_layer INTEGER, other_neuron INTEGER, weight FLOAT, source VARCHAR""",
    "token_connections": """
        model VARCHAR, layer INTEGER, neuron INTEGER, direction VARCHAR, sign VARCHAR, rank INTEGER,
        token_id INTEGER, token VARCHAR, weight FLOAT, source VARCHAR""",
    "token_activation_summary": """
        model VARCHAR, corpus VARCHAR, gelu_variant VARCHAR, layer INTEGER, neuron INTEGER, rank INTEGER,
        token_id INTEGER, token VARCHAR, mean_activation FLOAT, count BIGINT, source VARCHAR""",
    "explanations": """
        explanation_id VARCHAR, model VARCHAR, gelu_variant VARCHAR, layer INTEGER, neuron INTEGER,
        explainer VARCHAR, explainer_model VARCHAR, prompt_version VARCHAR, candidate INTEGER,
        explanation VARCHAR, failure_reason VARCHAR, created_at TIMESTAMP WITH TIME ZONE, source VARCHAR""",
    "simulations": """
        explanation_id VARCHAR, model VARCHAR, layer INTEGER, neuron INTEGER, gelu_variant VARCHAR,
        explanation_gelu_variant VARCHAR, explainer VARCHAR, simulator VARCHAR, simulator_model VARCHAR, sequence_id BIGINT, kind VARCHAR, split VARCHAR,
        expected_activations FLOAT[], true_activations FLOAT[], failure_reason VARCHAR, source VARCHAR""",
    "scores": """
        explanation_id VARCHAR, model VARCHAR, layer INTEGER, neuron INTEGER, explanation_gelu_variant VARCHAR,
        gelu_variant VARCHAR, explainer VARCHAR, simulator VARCHAR, simulator_model VARCHAR, ev_correlation DOUBLE,
        ev_correlation_top DOUBLE, ev_correlation_random DOUBLE, rsquared DOUBLE, absolute_dev_explained DOUBLE,
        calibrated_rsquared DOUBLE, n_tokens BIGINT, failure_reason VARCHAR, n_sequences BIGINT,
        n_failed_sequences BIGINT, source VARCHAR""",
    "llm_calls": """
        call_key VARCHAR, endpoint VARCHAR, model VARCHAR, kind VARCHAR, request_json VARCHAR,
        response_json VARCHAR, status VARCHAR, http_status INTEGER, error VARCHAR, prompt_tokens BIGINT,
        completion_tokens BIGINT, cost_usd DOUBLE, latency_s DOUBLE, attempts INTEGER,
        created_at TIMESTAMP WITH TIME ZONE""",
    # Written only by a release (nx_dagster/storage/releases.py), never replaced: one row per release.
    "releases": """
        release VARCHAR, created_at TIMESTAMP WITH TIME ZONE, snapshot BIGINT, parent_release VARCHAR,
        manifest VARCHAR, message VARCHAR, parent_snapshot BIGINT, n_rows BIGINT, n_files BIGINT,
        total_bytes BIGINT, new_files BIGINT, new_bytes BIGINT""",
    "release_neuron_changes": """
        release VARCHAR, parent_release VARCHAR, model VARCHAR, gelu_variant VARCHAR, layer INTEGER,
        neuron INTEGER, change VARCHAR, old_explanation_id VARCHAR, old_explanation VARCHAR, old_score DOUBLE,
        new_explanation_id VARCHAR, new_explanation VARCHAR, new_score DOUBLE""",
}

# The tables a release freezes (the release bookkeeping itself is not part of a release's content).
RELEASE_TABLES = ("releases", "release_neuron_changes")
DATA_TABLES = tuple(t for t in TABLES if t not in RELEASE_TABLES)

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
    "llm_calls": ("call_key",),
}
