"""The public tables (PRODUCT.md §4). Columns may be added; none may be renamed.

`replace_keys` are the columns that identify one partition of a table: a write replaces every row
that matches the incoming rows on those columns.
"""

TABLES: dict[str, str] = {
    "models": """
        model VARCHAR, n_layer INTEGER, n_embd INTEGER, n_head INTEGER, n_neurons INTEGER,
        n_positions INTEGER, vocab_size INTEGER, checkpoint_sha256 VARCHAR, data_version VARCHAR,
        source VARCHAR, created_at TIMESTAMP WITH TIME ZONE""",
    "sequences": """
        model VARCHAR, corpus VARCHAR, sequence_id BIGINT, document VARCHAR, start_token INTEGER,
        token_ids INTEGER[], tokens VARCHAR[]""",
    "activation_records": """
        model VARCHAR, corpus VARCHAR, gelu_variant VARCHAR, layer INTEGER, neuron INTEGER, kind VARCHAR,
        quantile INTEGER, rank INTEGER, split VARCHAR, sequence_id BIGINT, max_activation FLOAT,
        activations FLOAT[]""",
    "neuron_stats": """
        model VARCHAR, corpus VARCHAR, gelu_variant VARCHAR, layer INTEGER, neuron INTEGER, n_tokens BIGINT,
        mean DOUBLE, variance DOUBLE, skewness DOUBLE, kurtosis DOUBLE, max_activation DOUBLE,
        quantile_boundaries DOUBLE[]""",
    "gelu_fix_impact": """
        model VARCHAR, corpus VARCHAR, layer INTEGER, n BIGINT, median DOUBLE, p90 DOUBLE, p99 DOUBLE,
        p999 DOUBLE, max DOUBLE, mean DOUBLE""",
}
