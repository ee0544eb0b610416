"""MLflow tracking and the model registry, as Prefect tasks.

Aliases, not the deprecated stages: ``challenger`` on registration,
``champion`` on promotion (the former champion keeps ``previous``).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from prefect import task

from distill.config import PipelineConfig, TrackingConfig
from tasks.retry import retry_on_transient

PYFUNC_CODE = Path(__file__).with_name("pyfunc_classifier.py")
REQUIREMENTS = ["torch==2.13.0", "transformers==5.24.0", "safetensors==0.8.0", "pandas==2.3.3"]
NETWORK = {"retries": 2, "retry_delay_seconds": [2, 10], "retry_condition_fn": retry_on_transient}


def tracking_uri(cfg: TrackingConfig, project_dir: str = ".") -> str:
    """MLFLOW_TRACKING_URI, else the config's; relative SQLite paths are under the project."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        uri = prefix + str((Path(project_dir) / uri[len(prefix):]).resolve())
    return uri


def configure(cfg: TrackingConfig, project_dir: str = ".") -> str:
    """Point MLflow at the tracking store and make sure the experiment exists; return its id."""
    mlflow.set_tracking_uri(tracking_uri(cfg, project_dir))
    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    if experiment is not None:
        return experiment.experiment_id
    artifacts = (Path(project_dir) / "mlartifacts").resolve().as_uri()
    try:
        return mlflow.create_experiment(cfg.experiment, artifact_location=artifacts)
    except mlflow.exceptions.MlflowException:  # created concurrently by another run
        return mlflow.get_experiment_by_name(cfg.experiment).experiment_id


def git_commit(project_dir: str = ".") -> str:
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project_dir, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else "unknown"


def find_version(model_name: str, fingerprint: str):
    """The registered version whose tag ``fingerprint`` matches, or None."""
    client = MlflowClient()
    versions = client.search_model_versions(f"name = '{model_name}' and tags.fingerprint = '{fingerprint}'")
    return max(versions, key=lambda v: int(v.version)) if versions else None


def log_classifier(model_dir: Path, model_name: str, tags: dict[str, str], description: str) -> str:
    """Log a model folder as a pyfunc in the active run and register it; return the version."""
    example = pd.DataFrame({"text": ["turn on the kitchen light"]})
    info = mlflow.pyfunc.log_model(
        name="model", python_model=str(PYFUNC_CODE), artifacts={"model": str(model_dir)},
        input_example=example, pip_requirements=REQUIREMENTS, registered_model_name=model_name)
    version = str(info.registered_model_version)
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, str(value))
    client.update_model_version(model_name, version, description=description)
    return version


@task(name="register teacher", **NETWORK)
def register_teacher(cfg: PipelineConfig, teacher_dir: str, card: dict, project_dir: str = ".") -> str:
    """Register the teacher once per fingerprint; a bootstrapped teacher becomes champion."""
    experiment_id = configure(cfg.tracking, project_dir)
    name = cfg.promote.teacher_model
    existing = find_version(name, card["fingerprint"])
    if existing is not None:
        return existing.version
    with mlflow.start_run(experiment_id=experiment_id, run_name="teacher-registration"):
        mlflow.set_tags({"role": "teacher", "fingerprint": card["fingerprint"]})
        version = log_classifier(Path(teacher_dir), name, {"fingerprint": card["fingerprint"],
                                                           "source": card.get("source", "")},
                                 f"Teacher from {card.get('source')}; fingerprint {card['fingerprint']}.")
    MlflowClient().set_registered_model_alias(name, "champion", version)
    return version


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    """{'train': {'alpha': 0.7}} -> {'train.alpha': 0.7}."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), inner))
        return out
    return {prefix: value}


@task(name="log pipeline run", **NETWORK)
def log_run(cfg: PipelineConfig, metrics: dict, tags: dict[str, str], artifacts: list[str],
            project_dir: str = ".") -> str:
    """One MLflow run per pipeline run: config, metrics, reports, lineage tags; returns the run id."""
    experiment_id = configure(cfg.tracking, project_dir)
    with mlflow.start_run(experiment_id=experiment_id, run_name="distill-pipeline") as run:
        mlflow.log_params({k: str(v)[:500] for k, v in flatten("", cfg.model_dump()).items()})
        mlflow.log_metrics({k: float(v) for k, v in flatten("", metrics).items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool)})
        mlflow.set_tags({**tags, "git_commit": git_commit(project_dir)})
        for path in artifacts:
            if Path(path).is_dir():
                mlflow.log_artifacts(path, artifact_path=Path(path).name)
            elif Path(path).is_file():
                mlflow.log_artifact(path)
        return run.info.run_id


@task(name="register student", **NETWORK)
def register_student(cfg: PipelineConfig, run_id: str, student_dir: str, card: dict, tags: dict[str, str],
                     description: str, project_dir: str = ".") -> tuple[str, bool]:
    """Register the student under alias ``challenger``; returns (version, newly_registered)."""
    configure(cfg.tracking, project_dir)
    name = cfg.promote.student_model
    existing = find_version(name, card["fingerprint"])
    if existing is not None:
        return existing.version, False
    with mlflow.start_run(run_id=run_id):
        version = log_classifier(Path(student_dir), name, {**tags, "fingerprint": card["fingerprint"]},
                                 description)
    MlflowClient().set_registered_model_alias(name, "challenger", version)
    return version, True


@task(name="promote", **NETWORK)
def promote(cfg: PipelineConfig, version: str, project_dir: str = ".") -> str | None:
    """Move ``champion`` to ``version``; the former champion keeps ``previous``. Returns the former."""
    configure(cfg.tracking, project_dir)
    client, name = MlflowClient(), cfg.promote.student_model
    try:
        former = client.get_model_version_by_alias(name, "champion").version
    except mlflow.exceptions.MlflowException:
        former = None
    if former == version:
        return former
    if former is not None:
        client.set_registered_model_alias(name, "previous", former)
    client.set_registered_model_alias(name, "champion", version)
    return former


def champion_version(cfg: PipelineConfig, project_dir: str = ".") -> str | None:
    """The version the ``champion`` alias points to, or None."""
    configure(cfg.tracking, project_dir)
    try:
        return MlflowClient().get_model_version_by_alias(cfg.promote.student_model, "champion").version
    except mlflow.exceptions.MlflowException:
        return None


def fetch_model_folder(uri: str, dest: Path, project_dir: str = ".", tracking: TrackingConfig | None = None) -> Path:
    """Download a registered classifier (``models:/name@alias`` or ``models:/name/version``) as a
    Hugging Face folder into ``dest``, with a ``source.json`` naming the URI and version."""
    import shutil
    import tempfile

    from distill.io import atomic_dir, write_json

    if tracking is not None:
        mlflow.set_tracking_uri(tracking_uri(tracking, project_dir))
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        # A distill pyfunc keeps the weights folder under artifacts/<folder name>/; a transformers
        # model under model/. Either way: the folder with config.json beside safetensors weights.
        folder = next((c.parent for c in sorted(local.rglob("config.json"))
                       if any(c.parent.glob("*.safetensors"))), None)
        if folder is None:
            raise FileNotFoundError(f"{uri}: the model holds no Hugging Face folder (config.json); "
                                    "register a distill classifier or give teacher.path a folder")
        info = mlflow.models.get_model_info(uri)
        with atomic_dir(Path(dest)) as out:
            shutil.copytree(folder, out, dirs_exist_ok=True)
            write_json(out / "source.json", {"uri": uri, "model_uuid": info.model_uuid,
                                              "run_id": info.run_id})
    return Path(dest)


@task(name="fetch teacher", **NETWORK)
def fetch_teacher(cfg: PipelineConfig, dest: str, project_dir: str = ".") -> str:
    """Materialise an MLflow-registered teacher as a folder the teacher stage can read."""
    return str(fetch_model_folder(cfg.teacher.path, Path(dest), project_dir, cfg.tracking))


@task(name="load champion", **NETWORK)
def load_champion(cfg: PipelineConfig, project_dir: str = "."):
    """The champion student as a pyfunc model, through its registry URI."""
    configure(cfg.tracking, project_dir)
    return mlflow.pyfunc.load_model(f"models:/{cfg.promote.student_model}@champion")
