"""Storage: the DuckLake catalog of public tables."""

from nx_dagster.storage.catalog import Catalog

__all__ = ["Catalog"]
