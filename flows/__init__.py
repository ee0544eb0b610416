"""Prefect flows: the lifecycle, read top to bottom."""
