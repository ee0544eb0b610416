"""The production log: every prediction the champion served, and the ground truth that arrives later.

Layout under the log root (a folder, or a ``file://`` URL)::

    requests/part-<utc time>-<uuid>.parquet    one file per served batch
    feedback/part-<utc time>-<uuid>.parquet    one file per batch of ground-truth labels

Every writer creates its own file under a unique name, written to a hidden temporary name and then
renamed (``os.replace`` is atomic on one file system). Writers therefore never share a file and need
no lock; a reader sees a batch whole or not at all, whatever number of threads or processes serve.
Readers only look at ``part-*.parquet``; a crashed writer leaves at most a hidden temporary file.

Ground truth joins the requests by ``request_id`` when the log is read (the latest label wins).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlparse

import pandas as pd

TextPolicy = Literal["raw", "hash", "drop"]
REQUEST_COLUMNS = ["request_id", "timestamp", "text", "text_sha256", "prediction", "confidence",
                   "probabilities", "model_version", "source"]
FEEDBACK_COLUMNS = ["request_id", "true_label", "feedback_at"]


def log_root(location: str | Path, project_dir: str | Path = ".") -> Path:
    """The log folder for a path (relative to the project) or a ``file://`` URL."""
    text = str(location)
    if "://" in text:
        url = urlparse(text)
        if url.scheme != "file":
            raise ValueError(f"monitor.log_path {text!r}: only local paths and file:// URLs are supported")
        return Path(unquote(url.path))
    path = Path(text)
    return path if path.is_absolute() else Path(project_dir) / path


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _write_part(folder: Path, frame: pd.DataFrame) -> Path:
    """Write ``frame`` as a new, uniquely named part file, atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    path = folder / f"part-{stamp}-{uuid.uuid4().hex}.parquet"
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".parquet", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            frame.to_parquet(handle, index=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def append_predictions(root: Path, frame: pd.DataFrame, text_policy: TextPolicy = "raw") -> Path:
    """Append served predictions; ``frame`` has REQUEST_COLUMNS except ``text_sha256``.

    ``text_policy``: ``raw`` keeps the text, ``hash`` keeps only its SHA-256, ``drop`` keeps neither.
    """
    missing = [c for c in REQUEST_COLUMNS if c not in frame.columns and c != "text_sha256"]
    if missing:
        raise ValueError(f"production log rows lack columns {missing}")
    out = frame.copy()
    texts = out["text"].astype(str)
    out["text_sha256"] = texts.map(text_sha256) if text_policy != "drop" else None
    if text_policy != "raw":
        out["text"] = None
    out["request_id"] = out["request_id"].astype(str)
    out["text"] = out["text"].astype("string")
    out["text_sha256"] = out["text_sha256"].astype("string")
    out["timestamp"] = pd.to_datetime(out["timestamp"], utc=True)
    return _write_part(Path(root) / "requests", out[REQUEST_COLUMNS])


def record_feedback(root: Path, request_ids: list[str], labels: list[str]) -> Path:
    """Append ground-truth labels for earlier requests."""
    if len(request_ids) != len(labels):
        raise ValueError("request_ids and labels differ in length")
    frame = pd.DataFrame({"request_id": [str(r) for r in request_ids], "true_label": [str(l) for l in labels],
                          "feedback_at": pd.Timestamp.now(tz="UTC")})
    return _write_part(Path(root) / "feedback", frame)


def _read_parts(folder: Path, columns: list[str]) -> pd.DataFrame:
    files = sorted(folder.glob("part-*.parquet"))
    if not files:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in columns})
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def read_log(root: Path, since: pd.Timestamp | None = None, until: pd.Timestamp | None = None) -> pd.DataFrame:
    """Logged requests with ``timestamp`` in ``[since, until)``, ground truth joined as ``true_label``."""
    requests = _read_parts(Path(root) / "requests", REQUEST_COLUMNS)
    if len(requests):
        requests["timestamp"] = pd.to_datetime(requests["timestamp"], utc=True)
        if since is not None:
            requests = requests[requests["timestamp"] >= since]
        if until is not None:
            requests = requests[requests["timestamp"] < until]
    feedback = _read_parts(Path(root) / "feedback", FEEDBACK_COLUMNS)
    if len(feedback):
        feedback = feedback.sort_values("feedback_at").drop_duplicates("request_id", keep="last")
    joined = requests.merge(feedback[["request_id", "true_label"]], on="request_id", how="left")
    return joined.sort_values(["timestamp", "request_id"], kind="stable").reset_index(drop=True)


def logged_ids(root: Path) -> set[str]:
    """Request ids already in the log."""
    folder = Path(root) / "requests"
    return {str(r) for f in sorted(folder.glob("part-*.parquet"))
            for r in pd.read_parquet(f, columns=["request_id"])["request_id"]}


def assign_windows(log: pd.DataFrame, period: str) -> pd.DataFrame:
    """Add ``window_start`` (the timestamp floored to ``period``, e.g. ``1h``)."""
    return log.assign(window_start=pd.to_datetime(log["timestamp"], utc=True).dt.floor(period))


def probabilities_json(row_probs: dict[str, float]) -> str:
    return json.dumps({k: round(float(v), 6) for k, v in row_probs.items()}, sort_keys=True)


def labelled_holdout(root: Path) -> pd.DataFrame:
    """The hold-out kept from drifted windows (``holdout/*.parquet`` under the log) joined to the ground
    truth that has arrived: columns ``text``, ``label``; rows without ground truth are left out."""
    files = sorted((Path(root) / "holdout").glob("*.parquet"))
    if not files:
        return pd.DataFrame({"text": pd.Series(dtype="string"), "label": pd.Series(dtype="string")})
    held = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    truth = read_log(root)[["request_id", "true_label"]]
    held = held.merge(truth, on="request_id", how="left").dropna(subset=["true_label"])
    return held.rename(columns={"true_label": "label"})[["text", "label"]].reset_index(drop=True)
