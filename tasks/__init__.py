"""One module per pipeline stage: plain functions over paths and params (no Prefect)."""
