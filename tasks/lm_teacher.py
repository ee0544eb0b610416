"""An MLflow LM teacher (``lm.teacher_path: models:/...`` or ``runs:/...``), pinned and downloaded.

A registry URI is pinned to its version first, so a moving alias cannot change the model
mid-download; the lm_teacher stage then copies the folder into ``models/lm_teacher``.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from prefect import task

from distill.config import PipelineConfig, TrackingConfig
from distill.io import read_json, write_json
from distill.lm.teacher import check_causal_lm
from distill.models import SOURCE_FILE, ModelError
from tasks import registry
from tasks.retry import is_transient


def resolve_registry_uri(client, uri: str) -> dict:
    """Pin ``models:/name@alias`` or ``models:/name/version`` to a registry version: name, version, alias.

    Other URIs (``runs:/...``, ``models:/<logged model id>``) are not registry versions: ``{}``.
    """
    ref = uri.removeprefix("models:/")
    if ref == uri or ("@" not in ref and "/" not in ref):
        return {}
    if "@" in ref:
        (name, alias), version = ref.split("@", 1), None
    else:
        (name, version), alias = ref.split("/", 1), None
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        names = sorted(m.name for m in client.search_registered_models(max_results=50))
        raise ModelError(f"lm.teacher_path {uri}: no registered model named {name!r}; registered models: "
                         f"{', '.join(names) or 'none'}") from exc
    if alias is not None:
        if alias not in model.aliases:
            known = ", ".join(f"@{a} -> version {v}" for a, v in sorted(model.aliases.items())) or "none"
            raise ModelError(f"lm.teacher_path {uri}: {name} has no alias {alias!r}; its aliases: {known}")
        return {"name": name, "version": str(model.aliases[alias]), "alias": alias}
    if not version.isdigit():
        raise ModelError(f"lm.teacher_path {uri}: name a version or an alias (models:/{name}/<version> or "
                         f"models:/{name}@<alias>); registry stages are deprecated")
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    if int(version) not in versions:
        raise ModelError(f"lm.teacher_path {uri}: {name} has no version {version}; its versions: "
                         f"{', '.join(map(str, versions)) or 'none'}")
    return {"name": name, "version": version, "alias": None}


def fetch_lm_teacher_folder(uri: str, dest: Path, project_dir: str = ".",
                            tracking: TrackingConfig | None = None) -> dict:
    """Download the causal LM at an MLflow URI into ``dest``; its provenance (also ``dest/source.json``).

    A registry URI is pinned to a version first, so a moving alias cannot change the model mid-download.
    Unknown names, aliases and versions and models without a causal-LM folder raise ModelError (not
    retried); a tracking server that does not answer raises ConnectionError (retried by the task).
    """
    if tracking is not None:
        mlflow.set_tracking_uri(registry.tracking_uri(tracking, project_dir))
    try:
        pinned = resolve_registry_uri(MlflowClient(), uri)
        target = f"models:/{pinned['name']}/{pinned['version']}" if pinned else uri
        registry.fetch_model_folder(target, Path(dest), project_dir, tracking)
    except MlflowException as exc:
        if is_transient(exc):
            raise ConnectionError(f"lm.teacher_path {uri}: the MLflow tracking server {mlflow.get_tracking_uri()} "
                                  f"did not answer ({str(exc).splitlines()[0][:300]})") from exc
        if "MLmodel" in str(exc):
            raise ModelError(f"lm.teacher_path {uri}: not an MLflow model (no MLmodel file); log the causal-LM "
                             f"folder as a model (mlflow.pyfunc / mlflow.transformers log_model, or register an "
                             f"LM student), or download it and set lm.teacher_path to the folder") from exc
        raise
    except FileNotFoundError as exc:  # an OSError, but nothing a retry would find
        raise ModelError(f"lm.teacher_path {uri}: the model's artifacts hold no causal-LM folder "
                         f"(config.json beside *.safetensors weights)") from exc
    check_causal_lm(Path(dest), f"lm.teacher_path {uri}")
    source = {**read_json(Path(dest, SOURCE_FILE)), "uri": uri, "resolved_uri": target,
              **(pinned or {"name": None, "version": None, "alias": None})}
    write_json(Path(dest, SOURCE_FILE), source)
    return source


@task(name="fetch LM teacher", **registry.NETWORK)
def fetch_lm_teacher(cfg: PipelineConfig, dest: str, project_dir: str = ".") -> dict:
    """Download the MLflow LM teacher (``lm.teacher_path``) for the lm_teacher stage; its provenance."""
    return fetch_lm_teacher_folder(cfg.lm.teacher_path, Path(dest), project_dir, cfg.tracking)
