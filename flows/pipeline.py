"""distill_pipeline: validate the teacher, distil, evaluate, audit, register, promote, then monitor."""

from __future__ import annotations

from prefect import flow
from prefect.states import State

from distill.config import run_config
from flows.distillation import distil
from flows.lock import project_lock
from flows.monitor import drift_monitor
from flows.outcome import end
from flows.settings import RunSettings, run_overrides


@flow(name="distill_pipeline", log_prints=True)
def distill_pipeline(project_dir: str = ".", settings: RunSettings = RunSettings(), overrides: list[str] | None = None,
                     monitor: bool = True, reason: str = "manual") -> dict | State:
    """The whole lifecycle on params.yaml plus ``overrides`` (this run's only: params.yaml is not written).

    One run at a time per project folder: a second run waits for the first (flows/lock.py), so
    params.yaml, models/, reports/, dvc.lock and the promotion decision are never mixed.

    Args:
        project_dir: the DVC project holding params.yaml and dvc.yaml.
        settings: the settings users change most (data, teacher, budget, T, alpha, promotion); a field
            left empty keeps params.yaml's value.
        overrides: advanced: any other key as ``section.key=value`` items, e.g. ``train.epochs=5``;
            they win over ``settings``.
        monitor: end with a drift-monitoring pass over the production stream (which re-distils on
            drift when ``monitor.redistill`` is set).
        reason: why this run started (manual, drift, schedule); recorded as a tag.

    Returns the run's summary; inside a Failed state when a gate stopped the run (flows/outcome.py).
    """
    with project_lock(project_dir):
        summary = distil(project_dir, run_overrides(settings, overrides), reason)
        if monitor and summary["completed"]:
            cfg = run_config(project_dir)
            summary["monitor"] = drift_monitor(project_dir=project_dir, redistill=cfg.monitor.redistill)
        return end(summary)
