"""MLflow runs: what a pipeline run logs (the config, every figure, the training curves, the reports,
the lineage tags), the sweep's runs, and the champion comparison of a re-distillation.

The registry side (logged models, versions, aliases, trust) is ``tasks/registry.py``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric
from prefect import task

from distill.config import PipelineConfig
from distill.sweep import PointResult
from tasks.registry import NETWORK, Kind, configure, git_commit


def tidy(value: float) -> float:
    """Six significant digits: what a figure means, not float noise (the MLflow UI shows every digit)."""
    return float(f"{value:.6g}")


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    """{'train': {'alpha': 0.7}} -> {'train.alpha': 0.7}."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), inner))
        return out
    return {prefix: value}


# The figures a pipeline run logs as MLflow metrics, per model: what a reviewer compares across runs. Every
# other figure (28 per model) is in the run's evaluate/metrics.json artifact and in the model card; as
# metrics they made 140 columns and charts in the MLflow UI.
HEADLINE = ("accuracy", "accuracy_ci_low", "accuracy_ci_high", "macro_f1", "agreement_with_teacher",
            "latency_p50_ms", "size_mb")


def headline(metrics: dict[str, dict]) -> dict[str, dict]:
    """``metrics`` (model -> figure -> value) cut to the ``HEADLINE`` figures."""
    return {model: {key: figures[key] for key in HEADLINE if key in figures} for model, figures in metrics.items()}


LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store


def ui_links(cfg: PipelineConfig, project_dir: str, run_id: str, version: str | None = None) -> dict[str, str]:
    """Links into the MLflow UI for a run and its student version. MLflow 3's UI opens in its GenAI mode
    unless the link asks for the training one (``workflowType=machine_learning``). A local store's
    links point at ``mlflow ui`` on its default port."""
    from urllib.parse import quote

    from tasks.registry import tracking_uri

    uri = tracking_uri(cfg.tracking, project_dir)
    served = uri.startswith(("http://", "https://"))
    base, when = (uri.rstrip("/"), "") if served else (LOCAL_UI, " (with `mlflow ui` running)")
    experiment = configure(cfg.tracking, project_dir)
    links = {f"MLflow run{when}": f"{base}/#/experiments/{experiment}/runs/{run_id}?workflowType=machine_learning"}
    if version is not None:
        links[f"MLflow model version{when}"] = f"{base}/#/models/{quote(cfg.promote.student_model)}/versions/{version}"
    return links


def curve_metrics(curves: dict[str, list[dict]], timestamp_ms: int) -> list[Metric]:
    """Training curves as MLflow metrics with steps: ``<model>/<field>`` (``student/val_accuracy``,
    ``teacher/loss``, ``baseline/learning_rate``), which the MLflow UI charts per model."""
    return [Metric(f"{model}/{key}", tidy(value), timestamp_ms, int(row["step"]))
            for model, rows in curves.items() for row in rows for key, value in row.items()
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value)]


def record_run(cfg: PipelineConfig, run_name: str, params: dict[str, Any], metrics: dict, tags: dict[str, str],
               artifacts: list[str], project_dir: str = ".", curves: dict[str, list[dict]] | None = None) -> str:
    """One MLflow run: params, the numeric leaves of ``metrics``, the training ``curves`` (per model, one
    row per validation check), tags (plus the git commit), report files."""
    experiment_id = configure(cfg.tracking, project_dir)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.log_metrics({k: tidy(v) for k, v in flatten("", metrics).items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool)})
        steps = curve_metrics(curves or {}, int(time.time() * 1000))
        for start in range(0, len(steps), 1000):  # MLflow takes at most 1000 metrics per batch
            MlflowClient().log_batch(run.info.run_id, metrics=steps[start:start + 1000])
        mlflow.set_tags({**tags, "git_commit": git_commit(project_dir)})
        for path in artifacts:
            if Path(path).is_dir():
                mlflow.log_artifacts(path, artifact_path=Path(path).name)
            elif Path(path).is_file():
                mlflow.log_artifact(path)
        return run.info.run_id


@task(name="log pipeline run", **NETWORK)
def log_run(cfg: PipelineConfig, metrics: dict, tags: dict[str, str], artifacts: list[str],
            project_dir: str = ".", kind: Kind = "student", curves: dict[str, list[dict]] | None = None,
            run_name: str | None = None) -> str:
    """One MLflow run per pipeline run: config (the ``lm`` section for an LM run), metrics, training curves,
    reports, lineage tags; returns the run id. ``run_name`` says what the run made (the runs table's
    first column)."""
    if kind == "lm":
        params = flatten("lm", cfg.lm.model_dump(mode="json")) | {"seed": cfg.seed}
        return record_run(cfg, run_name or "distill-lm-pipeline", params, metrics, {**tags, "task": "lm"}, artifacts,
                          project_dir)
    return record_run(cfg, run_name or "distill-pipeline", flatten("", cfg.model_dump()), metrics, tags, artifacts,
                      project_dir, curves)


def log_sweep(cfg: PipelineConfig, results: list[PointResult], chosen: PointResult, project_dir: str) -> str:
    """One MLflow run for the sweep with a nested run per grid point; returns the parent run id."""
    experiment_id = configure(cfg.tracking, project_dir)
    with mlflow.start_run(experiment_id=experiment_id, run_name="sweep") as parent:
        mlflow.set_tags({"distill.kind": "sweep", "git_commit": git_commit(project_dir),
                         "method": "+".join(t.name for t in cfg.train.losses)})
        mlflow.log_params({"chosen_kd_temperature": chosen.kd_temperature, "chosen_alpha": chosen.alpha,
                           "temperatures": cfg.sweep.temperatures, "alphas": cfg.sweep.alphas,
                           "epochs": cfg.sweep.epochs or cfg.train.epochs})
        mlflow.log_metric("chosen_val_accuracy", chosen.val_accuracy)
        mlflow.log_table({key: [r.to_dict()[key] for r in results] for key in results[0].to_dict()},
                         artifact_file="sweep_grid.json")
        for r in results:
            with mlflow.start_run(experiment_id=experiment_id, nested=True,
                                  run_name=f"T={r.kd_temperature} alpha={r.alpha}"):
                mlflow.log_params({"kd_temperature": r.kd_temperature, "alpha": r.alpha})
                mlflow.log_metrics({"val_accuracy": r.val_accuracy, "steps": r.steps, "seconds": r.seconds})
        return parent.info.run_id


@task(name="log comparison", **NETWORK)
def log_comparison(cfg: PipelineConfig, project_dir: str, run_id: str, version: str, comparison: dict) -> None:
    """The champion-vs-challenger figures as metrics of the pipeline run, and one readable tag of the new version
    (``comparison``: each hold-out's champion -> challenger accuracy)."""
    configure(cfg.tracking, project_dir)
    client = MlflowClient()
    for key, value in comparison.items():
        if isinstance(value, float):
            client.log_metric(run_id, f"monitor.{key}", value)
    sets = sorted({key.split(".")[0] for key in comparison if key.endswith(".challenger_accuracy")})
    summary = "; ".join(f"{name} {comparison[f'{name}.champion_accuracy']:.3f} -> "
                        f"{comparison[f'{name}.challenger_accuracy']:.3f}" for name in sets
                        if isinstance(comparison.get(f"{name}.champion_accuracy"), float))
    if summary:
        client.set_model_version_tag(cfg.promote.student_model, version, "comparison", summary)
