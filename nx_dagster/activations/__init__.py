"""Activation recording: streaming top-k, random and quantile samples, moments, and the GELU fix impact."""

from nx_dagster.activations.recorder import LayerRecord, Recorder, RecorderSettings, record
from nx_dagster.activations.rows import record_rows, stats_rows

__all__ = ["LayerRecord", "Recorder", "RecorderSettings", "record", "record_rows", "stats_rows"]
