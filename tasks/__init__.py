"""Prefect tasks: thin adapters around the core stages and around DVC, MLflow and Evidently."""
