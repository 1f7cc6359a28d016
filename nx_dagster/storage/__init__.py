"""Storage: the DuckLake catalog of public tables."""

from nx_dagster.storage.catalog import Catalog, CatalogBusy, DiskFull

__all__ = ["Catalog", "CatalogBusy", "DiskFull"]
