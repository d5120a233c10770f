"""Models and their Lightning wrappers: torch code only, no I/O, no Prefect."""
