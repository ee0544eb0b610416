"""The drift monitor's tasks: replay traffic through the champion, Evidently per window, embeddings,
the canary check, the alert (a Prefect event, which the redistill deployment's trigger listens to).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from distill.config import PipelineConfig
from distill.data import read_split
from distill.layout import LAYOUT
from monitoring import alerts
from monitoring.drift import DriftResult, detect_drift
from monitoring.production import log_root, logged_ids, text_sha256
from monitoring.serve import Predictor
from monitoring.teacher_shift import cached_answers, disagreement, ensure_canary, teacher_sample
from tasks import registry

DRIFT_EVENT = "distill.drift.detected"
TEACHER_EVENT = "distill.teacher.changed"


@task(name="serve simulated traffic", cache_policy=NO_CACHE)  # the served model (an ONNX Runtime session) cannot be hashed
def serve_simulated(cfg: PipelineConfig, project_dir: str, model, version: str) -> int:
    """Replay the prepared production split through the champion, once per request; the ground truth
    follows as feedback. Timestamps put window k at the k-th of the last n periods."""
    production = read_split(LAYOUT.under(project_dir).prepared, "production")
    production = production.assign(request_id=[f"sim-{r}-{text_sha256(str(t))[:8]}"
                                               for r, t in zip(production["request_id"], production["text"])])
    root = log_root(cfg.monitor.log_path, project_dir)
    new = production[~production["request_id"].isin(logged_ids(root))]
    if new.empty:
        return 0
    period = pd.Timedelta(cfg.monitor.window)
    start = pd.Timestamp.now(tz="UTC").floor(period) - period * int(production["window"].nunique())
    predictor = Predictor(model, version, root, cfg.monitor.log_text, source="simulated")
    for number, window in new.groupby("window", sort=True):
        offsets = np.arange(len(window)) * (period / max(len(window), 1))
        predictor.predict(window["text"].astype(str).tolist(), window["request_id"].tolist(),
                          [start + period * int(number) + o for o in offsets])
        truth = window[window["true_label"].notna()]
        if len(truth):
            predictor.feedback(truth["request_id"].tolist(), truth["true_label"].astype(str).tolist())
    return len(new)


@task(name="detect drift")
def drift_task(reference: pd.DataFrame, current: pd.DataFrame, report_path: str, cfg: PipelineConfig, title: str,
               reference_embeddings: np.ndarray | None, current_embeddings: np.ndarray | None,
               workspace: str | None = None, snapshot: dict | None = None) -> DriftResult:
    """One Evidently comparison of a window against the reference (added to the Evidently workspace if given,
    with ``snapshot``'s timestamp, tags and metadata)."""
    return detect_drift(reference, current, report_path=Path(report_path), drift_share=cfg.monitor.drift_share,
                        title=title, reference_embeddings=reference_embeddings,
                        current_embeddings=current_embeddings, min_labelled=cfg.monitor.min_labelled,
                        workspace=Path(workspace) if workspace else None, **(snapshot or {}))


@task(name="embed texts")
def embed_task(texts: list[str], cache_dir: str) -> np.ndarray:
    """MiniLM sentence embeddings (cached by content)."""
    from monitoring.embeddings import cached_embeddings

    return cached_embeddings(texts, Path(cache_dir))


@task(name="load the teacher", **registry.NETWORK)
def load_teacher(cfg: PipelineConfig, project_dir: str, teacher_version: str):
    """The registered teacher version the champion is compared with."""
    return registry.load_version(cfg, teacher_version, project_dir, name=cfg.promote.teacher_model)


@task(name="canary check", cache_policy=NO_CACHE)  # the models cannot be hashed
def canary_task(cfg: PipelineConfig, project_dir: str, student, teacher) -> tuple[float, int]:
    """Teacher vs student disagreement on the fixed canary set."""
    canary, note = ensure_canary(Path(project_dir, cfg.monitor.canary_path),
                                 read_split(LAYOUT.under(project_dir).prepared, "gold_test"), cfg.monitor.canary_size,
                                 cfg.seed)
    if note:
        get_run_logger().warning(note)
    texts = canary[["text"]]
    return disagreement(teacher.predict(texts)["label"].tolist(), student.predict(texts)["label"].tolist()), len(canary)


@task(name="ask the teacher", cache_policy=NO_CACHE)  # the teacher model cannot be hashed
def teacher_answers(teacher, window: pd.DataFrame, size: int, cache: str) -> pd.Series:
    """The teacher's label for a fixed sample of the window's requests (``size`` at most), NaN for the rest."""
    rows = teacher_sample(window["request_id"], window["text"], size)
    texts = window.loc[rows, "text"].astype(str).tolist()
    answers = cached_answers(lambda new: teacher.predict(pd.DataFrame({"text": new}))["label"].tolist(), texts,
                             Path(cache))
    return pd.Series(answers, index=rows, dtype="object").reindex(window.index)


@task(name="alert")
def alert(event: str, cfg: PipelineConfig, payload: dict) -> dict:
    """Emit the Prefect event (the redistill deployment's trigger) and send the optional notification."""
    logger = get_run_logger()
    emitted = emit_event(event=event, resource={"prefect.resource.id": f"distill.model.{cfg.promote.student_model}",
                                                "prefect.resource.name": cfg.promote.student_model},
                         payload=payload)
    lines = [f"{k}: {v}" for k, v in payload.items() if k not in ("windows_detail",)]
    sent = alerts.notify(cfg.monitor.notify_url_env, f"[distill] {event}", "\n".join(lines))
    logger.warning("ALERT %s (incident %s): %s", event, payload.get("incident"), "; ".join(lines))
    return {"event": event, "event_id": str(emitted.id) if emitted else None, "notified": sent}
