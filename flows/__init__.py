"""Prefect flows: they only compose the stage functions of `tasks`."""
