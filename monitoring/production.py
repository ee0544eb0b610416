"""The production log: every prediction the champion served, one Parquet file per window."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from distill.io import atomic_file

COLUMNS = ["request_id", "window", "text", "prediction", "confidence", "model_version", "timestamp", "true_label"]


def append_window(log_dir: Path, window: int, frame: pd.DataFrame) -> Path:
    """Write one window of served predictions as its own partition (atomic, one writer per window)."""
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"production log rows lack columns {missing}")
    path = Path(log_dir) / f"window={window:04d}.parquet"
    with atomic_file(path, "wb") as handle:
        frame[COLUMNS].to_parquet(handle, index=False)
    return path


def read_log(log_dir: Path) -> pd.DataFrame:
    """Every logged prediction, in request order."""
    files = sorted(Path(log_dir).glob("window=*.parquet"))
    if not files:
        return pd.DataFrame(columns=COLUMNS)
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True).sort_values("request_id")
