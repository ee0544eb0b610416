"""drift_monitor: watch production and the teacher, alert, re-distil once per incident.

drift_monitor
  serve the simulated production stream through the champion (same path as `distill serve`)
  read the production log, cut it into time windows
  Evidently drift per window vs the distillation inputs (+ quality where ground truth arrived)
  teacher shift: registry alias vs the champion's lineage tags, and the canary set
  on a new incident: keep the traffic in data/incoming, emit distill.drift.detected or
  distill.teacher.changed, notify; re-distil inline (embedded run) or leave it to the trigger

The re-distillation itself is the flow "redistill" (flows/redistill.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger

from distill.config import PipelineConfig, run_config
from distill.data import read_split
from distill.io import write_json
from distill.layout import LAYOUT
from monitoring import alerts
from monitoring.alerts import REPORTS, incidents_dir
from monitoring.production import assign_windows, log_root, read_log
from monitoring.teacher_shift import TeacherShift, check_teacher_shift
from tasks import registry
from tasks.task_switch import champion_labels, other_task
from tasks.monitor import (DRIFT_EVENT, TEACHER_EVENT, alert, canary_task, drift_task, embed_task, load_teacher,
                           serve_simulated, teacher_answers)
from flows.outcome import summary_of
from flows.redistill import run_redistillation


def window_key(texts: pd.Series, ids: pd.Series, number: int) -> str:
    """A stable name for a window's traffic: its number and a hash of its texts (or request ids)."""
    content = texts.astype(str) if texts.notna().any() else ids.astype(str)
    return f"window-{number:04d}-{hashlib.sha256(chr(0).join(content).encode()).hexdigest()[:10]}"


def keep_for_redistillation(project_dir: str, cfg: PipelineConfig, windows: list[tuple[str, pd.DataFrame]]) -> list[str]:
    """Save drifted windows' texts under data/incoming, less a hold-out share kept under the log's
    holdout/ to score the re-distilled student on the shifted slice; return the keys that were new."""
    incoming = LAYOUT.under(project_dir).incoming
    holdout_dir = log_root(cfg.monitor.log_path, project_dir) / "holdout"
    new = []
    for key, window in windows:
        path = incoming / f"{key}.parquet"
        if path.exists() or not window["text"].notna().any():
            continue
        held = window["request_id"].map(lambda r: int(hashlib.sha256(str(r).encode()).hexdigest()[:8], 16)
                                        / 0xFFFFFFFF < cfg.monitor.holdout_share)
        holdout_dir.mkdir(parents=True, exist_ok=True)
        window.loc[held, ["request_id", "text"]].to_parquet(holdout_dir / f"{key}.parquet", index=False)
        incoming.mkdir(parents=True, exist_ok=True)
        window.loc[~held, ["text"]].to_parquet(path, index=False)
        new.append(key)
    return new


def reference_frame(model, project_dir: str) -> pd.DataFrame:
    """The distillation inputs (gold_train + transfer, less the edited copies of training texts, which no
    user sent) and held-out texts with the champion's predictions: the ``reference`` split where the data
    has one (texts from the traffic's own pool that nothing trained on), else the held-out gold texts
    (gold_val + gold_test), where the traffic is drawn like the gold set.

    Only the held-out rows carry ``confidence``: the champion is more confident on texts it was trained on
    than on any traffic it never saw, so a reference of its training texts flags the confidence of every
    in-domain window (measured on two real data sets: p < 0.001 in every window). Nor does a held-out set
    with another label mix than the traffic do (the default data's balanced gold set: p < 0.01 in every
    in-domain window), hence the ``reference`` split. The drift test leaves out a column's missing values."""
    prepared = LAYOUT.under(project_dir).prepared
    transfer = read_split(prepared, "transfer")
    if "augmented" in transfer.columns:
        transfer = transfer[~transfer["augmented"].fillna(False).astype(bool)]
    trained = pd.concat([read_split(prepared, "gold_train")[["text"]], transfer[["text"]]], ignore_index=True)
    held_out = read_split(prepared, "reference") if (prepared / "reference.parquet").is_file() else pd.DataFrame()
    if held_out.empty:
        held_out = pd.concat([read_split(prepared, split)[["text", "label"]] for split in ("gold_val", "gold_test")],
                             ignore_index=True).rename(columns={"label": "true_label"})
    held_out = held_out[["text", "true_label"]] if "true_label" in held_out.columns else held_out[["text"]]
    # held_out rows count for the model's outputs only (prediction, confidence, accuracy): the text columns'
    # reference stays the distillation inputs
    reference = pd.concat([trained.assign(held_out=False), held_out.assign(held_out=True)], ignore_index=True)
    out = model.predict(reference[["text"]])
    confidence = out["score"].to_numpy(dtype="float64").copy()
    confidence[:len(trained)] = float("nan")
    return reference.assign(prediction=out["label"].to_numpy(), confidence=confidence)


def check_windows(cfg: PipelineConfig, project_dir: str, model, reference: pd.DataFrame,
                  champion_accuracy: float | None, version: str | None = None, teacher=None,
                  teacher_key: str = "") -> list[dict]:
    """Drift (and quality, and disagreement with ``teacher`` when given) of every recent window of the log;
    one HTML + JSON report per window."""
    log = read_log(log_root(cfg.monitor.log_path, project_dir))
    if log.empty:
        return []
    log = assign_windows(log, cfg.monitor.window)
    starts = sorted(log["window_start"].unique())
    number_of = {start: i for i, start in enumerate(starts)}
    reports, cache = Path(project_dir, REPORTS), str(Path(project_dir, REPORTS, "cache"))
    texts = reference.loc[~reference["held_out"], "text"] if "held_out" in reference.columns else reference["text"]
    ref_vectors = embed_task(texts.tolist(), cache) if cfg.monitor.embedding_drift else None
    rows = []
    for start in starts[-cfg.monitor.max_windows:]:
        window = log[log["window_start"] == start]
        number = number_of[start]
        if len(window) < cfg.monitor.min_window_size:
            continue
        has_text = bool(window["text"].notna().any())
        if teacher is not None and has_text and cfg.monitor.teacher_sample:
            window = window.assign(teacher_label=teacher_answers(
                teacher, window, cfg.monitor.teacher_sample, str(Path(cache, f"teacher-{teacher_key}.parquet"))))
        vectors = embed_task(window["text"].astype(str).tolist(), cache) if ref_vectors is not None and has_text else None
        key = window_key(window["text"], window["request_id"], number)
        # in the Evidently UI: dated by the window, named by its traffic and the champion that served it,
        # added once however many monitor passes read it
        snapshot = {"timestamp": pd.Timestamp(start).to_pydatetime(),
                    "tags": [f"window-{number:04d}", f"champion-v{version}"],
                    "metadata": {"key": f"{key}:v{version}", "window": str(number), "window_start": str(start),
                                 "requests": str(len(window)), "champion_version": str(version)}}
        result = drift_task(reference, window, str(reports / f"window-{number:04d}.html"), cfg,
                            f"Window {number} ({pd.Timestamp(start):%Y-%m-%d %H:%M} UTC) vs distillation inputs",
                            ref_vectors if vectors is not None else None, vectors,
                            str(Path(project_dir, cfg.monitor.workspace)) if cfg.monitor.workspace else None,
                            snapshot)
        quality = result.quality
        quality_alert = bool(quality and champion_accuracy is not None
                             and champion_accuracy - quality["accuracy"] > cfg.monitor.max_accuracy_drop)
        row = {"window": number, "start": str(pd.Timestamp(start)), "requests": len(window),
               "key": key, "drift": result.drift_detected,
               "quality_alert": quality_alert, **{k: v for k, v in result.to_dict().items() if k != "drift_detected"},
               "report": str(result.report_html), "_frame": window}
        write_json(reports / f"window-{number:04d}.json", {k: v for k, v in row.items() if k != "_frame"})
        rows.append(row)
    return rows


def teacher_check(cfg: PipelineConfig, project_dir: str, model, version: str) -> tuple[TeacherShift, dict, object]:
    """Version/fingerprint comparison, then the canary when the teacher is registered; returns the teacher
    model too (None without one), which the windows are compared with."""
    lineage = registry.teacher_lineage(cfg, project_dir, version)
    canary, size, teacher = None, 0, None
    if lineage["teacher_version"] is not None:
        teacher = load_teacher(cfg, project_dir, lineage["teacher_version"])
        canary, size = canary_task(cfg, project_dir, model, teacher)
    shift = check_teacher_shift(lineage["teacher_version"], lineage["teacher_fingerprint"], version,
                                lineage["student_tags"], canary, lineage["baseline_disagreement"], size,
                                cfg.monitor.max_canary_disagreement)
    return shift, lineage, teacher


@flow(name="drift_monitor", log_prints=True)
def drift_monitor(project_dir: str = ".", redistill: bool = True) -> dict:
    """Serve the production stream with the champion, compare every recent window with the distillation
    inputs, check the teacher, alert and start one re-distillation per new incident."""
    logger = get_run_logger()
    cfg = run_config(project_dir)
    version, labels = champion_labels(cfg, project_dir)
    if version is None:
        logger.warning("no champion student in the registry yet; nothing to monitor")
        return {"skipped": "no champion"}
    why = other_task(version, labels, project_dir)
    if why:  # its traffic would be this data's, its reference this data's: nothing it says would be true
        logger.warning("%s: nothing to monitor until a student of this data is promoted", why)
        return {"skipped": why}
    model = registry.load_champion(cfg, project_dir)
    served = serve_simulated(cfg, project_dir, model, version) if cfg.monitor.simulate else 0
    shift, lineage, teacher = teacher_check(cfg, project_dir, model, version)
    champion_accuracy = _float(lineage["student_tags"].get("eval.accuracy"))  # gold test, at distillation
    teacher_key = f"v{lineage['teacher_version']}-{(lineage['teacher_fingerprint'] or 'none')[:12]}"
    rows = check_windows(cfg, project_dir, model, reference_frame(model, project_dir), champion_accuracy, version,
                         teacher, teacher_key)
    if rows:
        table = pd.DataFrame([{**{k: r[k] for k in ("window", "requests", "drift", "drifted_share", "quality_alert")},
                               "teacher_disagreement": (r["teacher"] or {}).get("disagreement")} for r in rows])
        logger.info("drift by window:\n%s", table.to_string(index=False))
    flagged = [r for r in rows if r["drift"] or r["quality_alert"]]
    new_windows = keep_for_redistillation(project_dir, cfg, [(r["key"], r["_frame"]) for r in flagged])
    summary = {"champion_version": version, "served": served, "windows": [_public(r) for r in rows],
               "drifted_windows": [r["window"] for r in flagged], "new_incidents": new_windows,
               "teacher": shift.to_dict()}
    incident = open_incident(cfg, project_dir, version, shift, [r for r in flagged if r["key"] in new_windows], summary)
    write_json(Path(project_dir, REPORTS, "summary.json"), summary)
    if incident and redistill and not in_deployment():
        logger.info("starting re-distillation for incident %s", incident["incident"])
        # its own flow run ends Failed when a gate blocks the new student; this pass did its job either way
        summary["redistillation"] = summary_of(run_redistillation(
            project_dir=project_dir, reason=incident["reason"], incident=incident["incident"], figures=incident,
            return_state=True))
        write_json(Path(project_dir, REPORTS, "summary.json"), summary)
    return summary


def in_deployment() -> bool:
    """True inside a deployment's run: there the redistill deployment's event trigger re-distils."""
    from prefect.runtime import deployment

    return deployment.id is not None


def _public(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def open_incident(cfg: PipelineConfig, project_dir: str, version: str, shift: TeacherShift,
                  new_rows: list[dict], summary: dict) -> dict | None:
    """At most one incident (and one event) per run: a teacher shift first, else new drifted windows.
    While an earlier incident is still being re-distilled, new windows wait for it."""
    logger = get_run_logger()
    state = incidents_dir(project_dir)
    if not shift.changed and not new_rows:
        if summary["drifted_windows"]:
            logger.info("drifted windows %s were already kept for re-distillation; no new incident",
                        summary["drifted_windows"])
        return None
    pending = alerts.pending_incident(state)
    if pending:
        logger.info("incident %s is still being re-distilled; new findings wait for it", pending)
        summary["pending_incident"] = pending
        return None
    reports = [Path(r["report"]).resolve().as_uri() for r in new_rows]
    figures = {"champion_version": version, "windows": [r["window"] for r in new_rows],
               "drifted_share": {str(r["window"]): r["drifted_share"] for r in new_rows},
               "drifted_columns": {str(r["window"]): r["drifted_columns"] for r in new_rows},
               "quality": {str(r["window"]): r["quality"] for r in new_rows if r["quality"]},
               "reports": reports, "summary": Path(project_dir, REPORTS, "summary.json").resolve().as_uri()}
    if shift.changed:
        payload = {"reason": "teacher", "incident": shift.incident, **figures, **shift.to_dict(),
                   "findings": shift.reasons}
        event = TEACHER_EVENT
    else:
        key = "drift-" + hashlib.sha256("+".join(r["key"] for r in new_rows).encode()).hexdigest()[:12]
        payload = {"reason": "drift", "incident": key, **figures,
                   "findings": [f"window {r['window']}: drifted columns {r['drifted_columns']}"
                                + (f", accuracy {r['quality']['accuracy']:.3f}" if r["quality"] else "")
                                for r in new_rows]}
        event = DRIFT_EVENT
    if not alerts.open_incident(state, payload["incident"], payload):
        logger.info("incident %s was already handled", payload["incident"])
        return None
    summary["incident"] = payload
    summary["alert"] = alert(event, cfg, payload)
    return payload


def _float(value) -> float | None:
    return None if value in (None, "") else float(value)
