"""drift_monitor: serve the production stream with the champion, watch for drift, re-distil."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.events import emit_event

from distill.config import load_config
from distill.data import read_split
from distill.io import write_json
from monitoring.drift import DriftResult, detect_drift
from monitoring.production import append_window
from tasks import registry

DRIFT_EVENT = "distill.drift.detected"


@task(name="serve window")
def serve_window(model, window: pd.DataFrame, version: str, log_dir: str) -> pd.DataFrame:
    """Predict one window with the champion and append it to the production log."""
    out = model.predict(window[["text"]])
    served = window.assign(prediction=out["label"].to_numpy(), confidence=out["score"].to_numpy(),
                           model_version=version, timestamp=datetime.now(timezone.utc).isoformat())
    append_window(Path(log_dir), int(window["window"].iloc[0]), served)
    return served


@task(name="detect drift")
def drift_task(reference: pd.DataFrame, current: pd.DataFrame, report_path: str, drift_share: float,
               title: str) -> DriftResult:
    """One Evidently comparison of a window against the reference."""
    return detect_drift(reference, current, report_path=Path(report_path), drift_share=drift_share, title=title)


def window_key(window: pd.DataFrame) -> str:
    """A stable name for a window's traffic: its number and a hash of its texts."""
    digest = hashlib.sha256("\0".join(window["text"]).encode()).hexdigest()[:10]
    return f"window-{int(window['window'].iloc[0]):04d}-{digest}"


def keep_for_redistillation(project_dir: str, windows: list[pd.DataFrame]) -> list[str]:
    """Save drifted windows' texts under data/incoming; return the keys that were new."""
    incoming = Path(project_dir, "data/incoming")
    new = []
    for window in windows:
        path = incoming / f"{window_key(window)}.parquet"
        if not path.exists():
            window[["text"]].to_parquet(path, index=False)
            new.append(path.stem)
    return new


@flow(name="drift_monitor", log_prints=True)
def drift_monitor(project_dir: str = ".", redistill: bool = True) -> dict:
    """Serve every production window with the champion, compare it with the distillation inputs,
    alert on drift and start one re-distillation per new incident."""
    logger = get_run_logger()
    cfg = load_config(Path(project_dir, "params.yaml"))
    version = registry.champion_version(cfg, project_dir)
    if version is None:
        logger.warning("no champion student in the registry yet; nothing to monitor")
        return {"skipped": "no champion"}
    model = registry.load_champion(cfg, project_dir)
    prepared = Path(project_dir, "data/prepared")
    reference = pd.concat([read_split(prepared, s)[["text"]] for s in ("gold_train", "transfer")], ignore_index=True)
    ref_out = model.predict(reference)
    reference = reference.assign(prediction=ref_out["label"].to_numpy(), confidence=ref_out["score"].to_numpy())
    production = read_split(prepared, "production")
    reports = Path(project_dir, "reports/monitor")
    log_dir = str(Path(project_dir, "data/production_log"))
    rows, drifted = [], []
    for number, window in production.groupby("window", sort=True):
        served = serve_window(model, window, version, log_dir)
        result = drift_task(reference, served, str(reports / f"window-{number:04d}.html"),
                            cfg.monitor.drift_share, f"Window {number} vs distillation inputs")
        rows.append({"window": int(number), "requests": len(window), "drift": result.drift_detected,
                     "drifted_share": result.drifted_share, "drifted_columns": result.drifted_columns,
                     "report": str(result.report_html)})
        if result.drift_detected:
            drifted.append(served)
    table = pd.DataFrame(rows)
    logger.info("drift by window:\n%s", table[["window", "requests", "drift", "drifted_share"]].to_string(index=False))
    summary = {"champion_version": version, "windows": rows, "drifted_windows": [int(w["window"].iloc[0]) for w in drifted]}
    new_incidents = keep_for_redistillation(project_dir, drifted) if drifted else []
    summary["new_incidents"] = new_incidents
    if new_incidents:
        payload = {"windows": summary["drifted_windows"], "champion_version": version,
                   "reports": [r["report"] for r in rows if r["drift"]]}
        emit_event(event=DRIFT_EVENT, resource={"prefect.resource.id": f"distill.model.{cfg.promote.student_model}"},
                   payload=payload)
        logger.warning("ALERT %s: windows %s drifted from the distillation inputs (reports: %s)",
                       DRIFT_EVENT, summary["drifted_windows"], ", ".join(payload["reports"]))
    elif drifted:
        logger.info("drifted windows %s were already kept for re-distillation; no new incident",
                    summary["drifted_windows"])
    write_json(reports / "summary.json", summary)
    if new_incidents and redistill:
        from flows.pipeline import distill_pipeline

        logger.info("starting re-distillation with %d new texts", sum(len(w) for w in drifted))
        summary["redistillation"] = distill_pipeline(project_dir=project_dir, monitor=False, reason="drift")
    return summary
