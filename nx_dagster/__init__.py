"""nx_dagster: explain GPT-2 neurons as a reproducible, queryable data product."""

__version__ = "0.1.0"
