"""Library entry points for each pipeline stage: compute, write the partition, return metadata.

The Dagster assets and plain Python both call these; nothing here knows about Dagster.
"""
