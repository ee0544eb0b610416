"""redistill: re-distil after an incident, then compare the former champion and the new student.

The monitor (flows/monitor.py) opens the incident; inside a deployment the redistill
deployment's event trigger starts this flow, outside one the monitor calls it. It runs the
distillation chain (flows/distillation.py): the traffic kept in data/incoming joins the transfer
set and is labelled by the current teacher, the student is trained and gated as always. Then the
former champion, the new student and the teacher are scored on gold_test and on the shifted
hold-out, and the figures go to the run and the new version's tags.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger
from prefect.states import State

from distill.config import PipelineConfig, load_config, merge_overrides, read_run_overrides, run_config
from distill.data import read_labels, read_split
from distill.io import write_json
from distill.layout import LAYOUT
from flows.distillation import distil
from flows.outcome import end
from flows.settings import RunSettings, run_overrides
from monitoring import alerts
from monitoring.alerts import REPORTS, incidents_dir
from monitoring.production import labelled_holdout, log_root
from tasks import registry, scoring, tracking

def shifted_holdout(cfg: PipelineConfig, project_dir: str) -> pd.DataFrame:
    """The held-out part of every drifted window, with the ground truth that has arrived."""
    return labelled_holdout(log_root(cfg.monitor.log_path, project_dir))


@flow(name="redistill", log_prints=True)
def run_redistillation(project_dir: str = ".", reason: str = "drift", incident: str = "",
                       figures: dict | None = None, settings: RunSettings = RunSettings(),
                       overrides: list[str] | None = None) -> dict | State:
    """Re-distil after an incident: the pipeline (traffic kept in data/incoming joins the transfer set and is
    labelled by the current teacher; with ``monitor.warm_start`` the student continues from the champion;
    the normal gates decide promotion), then the former champion and the new student on gold_test and on
    the shifted hold-out, logged to the pipeline's MLflow run.

    Args:
        reason: drift, teacher or schedule (from the event's payload).
        incident: the incident this run resolves.
        figures: the event's payload, kept with the outcome.
        settings: changes for this re-distillation on top of the champion's settings (a field left empty
            keeps them).
        overrides: advanced: any other key as ``section.key=value`` items; they win over ``settings``.

    Returns the summary; inside a Failed state when a gate stopped the new student (flows/outcome.py).
    """
    logger = get_run_logger()
    cfg = run_config(project_dir)
    before = registry.champion_version(cfg, project_dir)
    # The champion is re-distilled with the settings it was built with (its run's overrides, say a
    # data.path given with `distill run --set`), never with state written into params.yaml.
    built_with = (registry.version_overrides(cfg, before, project_dir) if before is not None
                  else read_run_overrides(project_dir))
    # what the user asked of this run comes last: it wins over the champion's settings
    overrides = merge_overrides(built_with, run_overrides(settings, overrides))
    cfg = load_config(Path(project_dir, "params.yaml"), overrides)
    if reason == "teacher" and not cfg.teacher.path:
        # The registry's champion teacher moved away from the bootstrapped one: distil from it from now on.
        overrides = merge_overrides(overrides, [f"teacher.path=models:/{cfg.promote.teacher_model}@champion"])
    if cfg.monitor.warm_start and before is not None and not cfg.student.warm_start:
        # Continue from the champion: it learns the new traffic without forgetting the domain it serves.
        overrides = merge_overrides(overrides, [f"student.warm_start=models:/{cfg.promote.student_model}@champion"])
    logger.info("re-distilling with overrides %s", overrides or "none")
    summary = distil(project_dir, overrides, reason)
    if summary.get("completed") and before is not None:
        prepared = LAYOUT.under(project_dir).prepared
        shifted = shifted_holdout(cfg, project_dir)
        # Rows of intents outside the label set are wrong for every model; the known-label part of the
        # slice is where re-distillation can help, so it is scored on its own as well.
        slices = {"gold_test": read_split(prepared, "gold_test")[["text", "label"]], "shifted": shifted,
                  "shifted_known": shifted[shifted["label"].isin(read_labels(prepared))]}
        versions = {"champion": before, "challenger": summary["student_version"]}
        comparison = scoring.score_versions(cfg, project_dir, versions, slices)
        comparison.update(scoring.score_teacher(cfg, LAYOUT.under(project_dir).teacher, slices))
        tracking.log_comparison(cfg, project_dir, summary["run_id"], summary["student_version"], comparison)
        summary["comparison"] = comparison
        logger.info("former champion v%s vs re-distilled v%s: %s", before, summary["student_version"], comparison)
    if incident:
        alerts.resolve_incident(incidents_dir(project_dir), incident,
                                {"student_version": summary.get("student_version"),
                                 "promoted": summary.get("promoted"), "comparison": summary.get("comparison")})
    summary.update(reason=reason, incident=incident, figures=figures or {})
    write_json(Path(project_dir, REPORTS, f"redistill-{incident or reason}.json"),
               {k: v for k, v in summary.items() if k != "metrics"})
    return end(summary)
