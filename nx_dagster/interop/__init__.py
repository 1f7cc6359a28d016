"""Interchange with other layouts: the published OpenAI neuron-explainer files, Parquet."""
