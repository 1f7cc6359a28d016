"""Storage: the DuckLake catalog of public tables."""

from nx_dagster.storage.catalog import Catalog, CatalogBusy, DiskFull, home_from_env

__all__ = ["Catalog", "CatalogBusy", "DiskFull", "home_from_env"]
