"""Process-wide settings for running flows locally, applied at entry points only."""

from __future__ import annotations

import os

LOCAL_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # no telemetry from the temporary server
    "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "true",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def configure_local_runtime() -> None:
    """Set the environment defaults for an embedded run (the user's own values win)."""
    for key, value in LOCAL_DEFAULTS.items():
        os.environ.setdefault(key, value)
