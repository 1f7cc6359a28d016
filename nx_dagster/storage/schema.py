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
        calibrated_rsquared DOUBLE, n_tokens BIGINT, failure_reason VARCHAR, source VARCHAR""",
    "llm_calls": """
        call_key VARCHAR, endpoint VARCHAR, model VARCHAR, kind VARCHAR, request_json VARCHAR,
        response_json VARCHAR, status VARCHAR, http_status INTEGER, error VARCHAR, prompt_tokens BIGINT,
        completion_tokens BIGINT, cost_usd DOUBLE, latency_s DOUBLE, attempts INTEGER,
        created_at TIMESTAMP WITH TIME ZONE""",
}
