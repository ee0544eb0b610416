"""MLflow tracking and the model registry, as Prefect tasks.

Aliases, not the deprecated stages: ``challenger`` on registration,
``champion`` on promotion (the former champion keeps ``previous``).
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

import mlflow
import pandas as pd
from mlflow import MlflowClient
from prefect import task

from distill.config import PipelineConfig, TrackingConfig
from distill.io import read_json
from tasks.aliases import PromotionError, alias_version, move_champion, roll_back, set_tags
from tasks.retry import retry_on_transient

PYFUNC_CODE = Path(__file__).with_name("pyfunc_classifier.py")
PYFUNC_LM_CODE = Path(__file__).with_name("pyfunc_lm.py")
# shipped with the model beside its pyfunc: it cuts, encodes and serves as the evaluation did, with or without distill
CUT_CODE = Path(__file__).resolve().parents[1] / "distill" / "cut.py"
SERVED_CODE = Path(__file__).resolve().parents[1] / "distill" / "served.py"
# The lineage a student version carries as tags (with its ``fingerprint`` and the promotion's stamps): what a
# reviewer scans in the registry's version rows and what the monitor and a re-distillation read. The rest of
# the lineage (data and output hashes, commit, params hash, loss terms, shape search) is on the training run
# and in the model card.
VERSION_TAGS = ("method", "reason", "eval.accuracy", "eval.teacher_share", "eval.latency_p50_ms", "teacher_gate",
                "audit", "promotion_gate", "compression", "precision", "teacher_version", "teacher_fingerprint",
                "overrides")
Precision = Literal["fp32", "int8"]  # which of a folder's ONNX files a version serves (distill.served.SERVED_FILES)
Kind = Literal["student", "lm"]  # the classifier student (promote.student_model) or the LM student
REQUIREMENTS = ["torch==2.13.0", "transformers==5.24.0", "safetensors==0.8.0", "pandas==2.3.3",
                "onnxruntime==1.32.0"]
# A registry call retries transient errors; one that has not answered in 30 minutes (a model upload
# included) is hung, and the flow run fails instead of holding its worker.
NETWORK = {"retries": 2, "retry_delay_seconds": [2, 10], "retry_condition_fn": retry_on_transient,
           "timeout_seconds": 1800}


def tracking_uri(cfg: TrackingConfig, project_dir: str = ".") -> str:
    """MLFLOW_TRACKING_URI, else the config's; relative SQLite paths are under the project.

    Credentials in MLFLOW_TRACKING_URI (http://user:password@host) move to MLflow's own
    MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, so that the URI MLflow prints ("View run
    at ...") and records carries none. The config's URI is refused with credentials (distill.config).
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri
    parts = urlsplit(uri)
    if parts.username or parts.password:
        os.environ.setdefault("MLFLOW_TRACKING_USERNAME", unquote(parts.username or ""))
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", unquote(parts.password or ""))
        uri = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        os.environ["MLFLOW_TRACKING_URI"] = uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        uri = prefix + str((Path(project_dir) / uri[len(prefix):]).resolve())
    return uri


EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development",
                   "mlflow.note.content": "distill: one run per pipeline run (teacher, student, baseline, evaluation, "
                                          "audit); the students are registered as distill-student."}


def configure(cfg: TrackingConfig, project_dir: str = ".") -> str:
    """Point MLflow at the tracking store and make sure the experiment exists; return its id."""
    mlflow.set_tracking_uri(tracking_uri(cfg, project_dir))
    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    if experiment is not None:
        if "mlflow.experimentKind" not in experiment.tags:  # made before distill set it, or by hand
            MlflowClient().set_experiment_tag(experiment.experiment_id, "mlflow.experimentKind",
                                              EXPERIMENT_TAGS["mlflow.experimentKind"])
        return experiment.experiment_id
    # A local store keeps artifacts beside the project; a tracking server chooses (and serves) its own.
    remote = mlflow.get_tracking_uri().startswith(("http://", "https://", "databricks"))
    artifacts = None if remote else (Path(project_dir) / "mlartifacts").resolve().as_uri()
    try:
        # The MLflow UI opens an experiment of this kind on its training runs, not on the GenAI overview
        return mlflow.create_experiment(cfg.experiment, artifact_location=artifacts, tags=EXPERIMENT_TAGS)
    except mlflow.exceptions.MlflowException:  # created concurrently by another run
        return mlflow.get_experiment_by_name(cfg.experiment).experiment_id


def model_name(cfg: PipelineConfig, kind: Kind = "student") -> str:
    """The registered model a kind of student goes to."""
    return cfg.lm.promote.model_name if kind == "lm" else cfg.promote.student_model


def git_commit(project_dir: str = ".") -> str:
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project_dir, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else "unknown"


def find_version(model_name: str, fingerprint: str, precision: Precision = "fp32"):
    """The registered version whose tag ``fingerprint`` matches and that serves at ``precision``, or None.

    One folder's weights may be registered twice: as fp32 and as its INT8 model (a version without a
    ``precision`` tag, registered before INT8 versions existed, is fp32)."""
    client = MlflowClient()
    versions = [v for v in client.search_model_versions(f"name = '{model_name}' and tags.fingerprint = '{fingerprint}'")
                if v.tags.get("precision", "fp32") == precision]
    return max(versions, key=lambda v: int(v.version)) if versions else None


def signature(labels: list[str]):
    """Input: a ``text`` column. Output: ``label``, ``score`` and ``p_<label>`` for every label."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    outputs = [ColSpec("string", "label"), ColSpec("float", "score")]
    outputs += [ColSpec("float", f"p_{label}") for label in labels]
    return ModelSignature(inputs=Schema([ColSpec("string", "text")]), outputs=Schema(outputs))


def logged_name(model_name: str, tags: dict[str, str]) -> str:
    """The logged model's name in MLflow's Models tab: the registered name, the weights' fingerprint and, when it
    is not fp32, the precision it serves at."""
    fingerprint = str(tags.get("fingerprint", ""))[:12]
    precision = tags.get("precision", "fp32")
    return (f"{model_name}-{fingerprint}" if fingerprint else model_name) + (
        f"-{precision}" if precision != "fp32" else "")


def classifier_pyfunc(model_dir: Path, threads: int = 1, example_text: str = "turn on the kitchen light",
                      precision: Precision = "fp32") -> dict:
    """The arguments of ``mlflow.pyfunc.log_model`` / ``save_model`` for a classifier folder: distill's
    models-from-code pyfunc serving the folder's ONNX export (``precision`` int8: its INT8 model) with
    ``threads`` threads (``evaluate.threads``: as it was timed), with the code it ships and its signature."""
    from distill.models import read_card
    from distill.served import SERVED_FILES

    served = Path(model_dir) / SERVED_FILES[precision]
    if precision != "fp32" and not served.is_file():
        raise FileNotFoundError(f"{model_dir} has no {served.name}: it cannot be registered as {precision}")
    return {"python_model": str(PYFUNC_CODE), "artifacts": {"model": str(model_dir)},
            "code_paths": [str(CUT_CODE), str(SERVED_CODE)],
            "model_config": {"threads": threads, "onnx_file": served.name},
            "signature": signature(list(read_card(model_dir)["labels"])),
            "input_example": pd.DataFrame({"text": [example_text]}), "pip_requirements": REQUIREMENTS}


def log_classifier(model_dir: Path, model_name: str, tags: dict[str, str], description: str,
                   example_text: str = "turn on the kitchen light", threads: int = 1) -> str:
    """Log a model folder as a pyfunc in the active run and register it; return the version. Its tag
    ``precision`` (default fp32) says which of the folder's ONNX files it serves."""
    info = mlflow.pyfunc.log_model(name=logged_name(model_name, tags), registered_model_name=model_name,
                                   **classifier_pyfunc(model_dir, threads, example_text,
                                                       tags.get("precision", "fp32")))
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
        return str(existing.version)
    with mlflow.start_run(experiment_id=experiment_id, run_name="teacher-registration"):
        mlflow.set_tags({"role": "teacher", "fingerprint": card["fingerprint"]})
        version = log_classifier(Path(teacher_dir), name, {"fingerprint": card["fingerprint"],
                                                           "source": card.get("source", "")},
                                 f"Teacher from {card.get('source')}; fingerprint {card['fingerprint']}.",
                                 threads=cfg.evaluate.threads)
    MlflowClient().set_registered_model_alias(name, "champion", version)
    return version


@task(name="register student", **NETWORK)
def register_student(cfg: PipelineConfig, run_id: str, student_dir: str, card: dict, tags: dict[str, str],
                     description: str, project_dir: str = ".", kind: Kind = "student") -> tuple[str, bool]:
    """Register the student (once per weights fingerprint and ``precision`` tag) under alias ``challenger``;
    returns (version, newly_registered)."""
    configure(cfg.tracking, project_dir)
    name = model_name(cfg, kind)
    existing = find_version(name, card["fingerprint"], tags.get("precision", "fp32"))
    if existing is not None:
        return str(existing.version), False
    with mlflow.start_run(run_id=run_id):
        if kind == "lm":
            version = log_causal_lm(Path(student_dir), name, {**tags, "fingerprint": card["fingerprint"]}, description)
        else:
            version = log_classifier(Path(student_dir), name, {**tags, "fingerprint": card["fingerprint"]},
                                     description, threads=cfg.evaluate.threads)
    MlflowClient().set_registered_model_alias(name, "challenger", version)
    return version, True


@task(name="promote", **NETWORK)
def promote(cfg: PipelineConfig, version: str, project_dir: str = ".", promoted_by: str = "flow",
            reason: str = "", kind: Kind = "student") -> dict:
    """Make ``version`` the champion (see ``tasks.aliases.move_champion``)."""
    configure(cfg.tracking, project_dir)
    return move_champion(MlflowClient(), model_name(cfg, kind), version, promoted_by, reason)


def withdraw_champion(cfg: PipelineConfig, reason: str, project_dir: str = ".") -> str | None:
    """Roll the student's champion back to ``previous``; with no previous, take the alias away (no
    champion beats one that cannot serve). Returns the restored version, or None."""
    configure(cfg.tracking, project_dir)
    client, name = MlflowClient(), cfg.promote.student_model
    try:
        return roll_back(client, name, reason=reason)["version"]
    except PromotionError:
        client.delete_registered_model_alias(name, "champion")
        return None


@task(name="tag version", **NETWORK)
def tag_version(cfg: PipelineConfig, version: str, tags: dict[str, Any], description: str | None = None,
                project_dir: str = ".", kind: Kind = "student") -> None:
    """Write tags (and the model card, when given) on a student version."""
    configure(cfg.tracking, project_dir)
    client, name = MlflowClient(), model_name(cfg, kind)
    set_tags(client, name, version, tags)
    if description is not None:
        client.update_model_version(name, version, description=description)


def champion_version(cfg: PipelineConfig, project_dir: str = ".", kind: Kind = "student") -> str | None:
    """The version the ``champion`` alias points to, or None."""
    configure(cfg.tracking, project_dir)
    return alias_version(MlflowClient(), model_name(cfg, kind), "champion")


def version_labels(cfg: PipelineConfig, version: str, project_dir: str = ".", kind: Kind = "student") -> list[str]:
    """The labels a registered classifier version answers with: its signature's ``p_<label>`` outputs."""
    configure(cfg.tracking, project_dir)
    info = mlflow.models.get_model_info(f"models:/{model_name(cfg, kind)}/{version}")
    outputs = info.signature.outputs.input_names() if info.signature is not None else []
    return [str(name)[2:] for name in outputs if str(name).startswith("p_")]


def version_precision(cfg: PipelineConfig, version: str, project_dir: str = ".") -> Precision:
    """Which of its folder's models a student version serves (its ``precision`` tag; fp32 when untagged)."""
    configure(cfg.tracking, project_dir)
    return MlflowClient().get_model_version(cfg.promote.student_model, version).tags.get("precision", "fp32")


def version_overrides(cfg: PipelineConfig, version: str, project_dir: str = ".") -> list[str]:
    """The overrides a student version was distilled with (its ``overrides`` tag; none when untagged)."""
    configure(cfg.tracking, project_dir)
    raw = MlflowClient().get_model_version(cfg.promote.student_model, version).tags.get("overrides")
    return json.loads(raw) if raw else []


def version_rows(client: MlflowClient, name: str) -> list[dict]:
    """Every version of ``name``, newest first, with its aliases and the verdicts in its tags."""
    aliases: dict[str, list[str]] = {}
    try:
        for alias, version in client.get_registered_model(name).aliases.items():
            aliases.setdefault(str(version), []).append(alias)
    except mlflow.exceptions.MlflowException:
        return []
    rows = []
    for v in sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: -int(v.version)):
        rows.append({"version": str(v.version), "aliases": sorted(aliases.get(str(v.version), [])),
                     "created": datetime.fromtimestamp(v.creation_timestamp / 1000, timezone.utc),
                     "precision": v.tags.get("precision", "fp32"), "reason": v.tags.get("reason"),
                     "compression": v.tags.get("compression"),
                     "accuracy": v.tags.get("eval.accuracy"), "teacher_share": v.tags.get("eval.teacher_share"),
                     "gates": v.tags.get("promotion_gate"), "review": v.tags.get("review"),
                     "promoted_by": v.tags.get("promoted_by"), "rolled_back": v.tags.get("rolled_back")})
    return rows


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


@task(name="fetch model", task_run_name="fetch {uri}", **NETWORK)
def fetch_model(cfg: PipelineConfig, uri: str, dest: str, project_dir: str = ".") -> bool:
    """Materialise an MLflow-registered model (a teacher, a student to warm-start from) as a folder a stage
    can read; True when it is another model than the one fetched there before (an alias moved, which DVC
    cannot see in the params)."""
    source = Path(dest, "source.json")
    before = read_json(source).get("model_uuid") if source.is_file() else None
    fetch_model_folder(uri, Path(dest), project_dir, cfg.tracking)
    return read_json(source)["model_uuid"] != before


class UntrustedModel(PromotionError):
    """A registered model whose code distill did not write; loading it would run that code."""


def check_model_code(uri: str, trust: bool = False) -> None:
    """Refuse ``uri`` unless it is a models-from-code pyfunc whose code is byte-identical to distill's own
    (``pyfunc_classifier.py`` or ``pyfunc_lm.py``). Reads the MLmodel file and the code file only: nothing of
    the model runs. ``trust`` (``promote.trust_model_code``) lets any model through."""
    import tempfile

    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

    if trust:
        return
    pyfunc = (mlflow.models.get_model_info(uri).flavors or {}).get("python_function") or {}
    code = Path(pyfunc.get("model_code_path") or "").name
    ours = {PYFUNC_CODE.name: PYFUNC_CODE, PYFUNC_LM_CODE.name: PYFUNC_LM_CODE}.get(code)
    why = None
    if pyfunc.get("loader_module") != "mlflow.pyfunc.loaders.code_model" or ours is None:
        why = "it is not a distill pyfunc (" + (f"its code is {code}" if code else "a pickled Python model") + ")"
    else:
        with tempfile.TemporaryDirectory() as tmp:
            found = Path(ModelsArtifactRepository(uri).download_artifacts(code, dst_path=tmp))
            if found.read_bytes() != ours.read_bytes():
                why = f"its {code} differs from this distill's (registered outside distill, or by another version)"
    if why:
        raise UntrustedModel(f"{uri}: {why}; loading it would run its code. Register models with `distill run`, "
                             "or, once you have reviewed its code, set promote.trust_model_code: true")


@task(name="load champion", **NETWORK)
def load_champion(cfg: PipelineConfig, project_dir: str = "."):
    """The champion student as a pyfunc model, through its registry URI (``check_model_code`` first)."""
    configure(cfg.tracking, project_dir)
    uri = f"models:/{cfg.promote.student_model}@champion"
    check_model_code(uri, cfg.promote.trust_model_code)
    return mlflow.pyfunc.load_model(uri)


def load_version(cfg: PipelineConfig, version: str, project_dir: str = ".", name: str | None = None):
    """A registered version (of the student, or of the model ``name``) as a pyfunc model
    (``check_model_code`` first)."""
    configure(cfg.tracking, project_dir)
    uri = f"models:/{name or cfg.promote.student_model}/{version}"
    check_model_code(uri, cfg.promote.trust_model_code)
    return mlflow.pyfunc.load_model(uri)


@task(name="read teacher lineage", **NETWORK)
def teacher_lineage(cfg: PipelineConfig, project_dir: str, student_version: str) -> dict:
    """The teacher alias's version and fingerprint, the champion's lineage tags and its distillation-time
    disagreement with its teacher (from its MLflow run)."""
    configure(cfg.tracking, project_dir)
    client = MlflowClient()
    student = client.get_model_version(cfg.promote.student_model, student_version)
    try:
        teacher = client.get_model_version_by_alias(cfg.promote.teacher_model, "champion")
    except mlflow.exceptions.MlflowException:  # no teacher alias: nothing to compare
        teacher = None
    baseline = None
    if student.run_id:
        agreement = client.get_run(student.run_id).data.metrics.get("eval.student.agreement_with_teacher")
        baseline = None if agreement is None else 1.0 - float(agreement)
    return {"teacher_version": str(teacher.version) if teacher else None,
            "teacher_fingerprint": teacher.tags.get("fingerprint") if teacher else None,
            "student_tags": dict(student.tags), "baseline_disagreement": baseline}


# ---- LM students (flows/lm.py): the same registry, aliases and promotion lock, another model name ----



def lm_signature():
    """Input: a ``prompt`` column (and an optional ``system``); output: ``completion``; param max_new_tokens."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("string", "prompt"), ColSpec("string", "system", required=False)]),
                          outputs=Schema([ColSpec("string", "completion")]),
                          params=ParamSchema([ParamSpec("max_new_tokens", "long", 32)]))


def log_causal_lm(model_dir: Path, model_name: str, tags: dict[str, str], description: str) -> str:
    """Log a causal-LM folder (safetensors only) as a pyfunc in the active run and register it; return the version."""
    if not any(Path(model_dir).glob("*.safetensors")) or any(Path(model_dir).glob("*.bin")):
        raise PromotionError(f"{model_dir}: an LM is registered from safetensors weights only")
    info = mlflow.pyfunc.log_model(
        name=logged_name(model_name, tags), python_model=str(PYFUNC_LM_CODE), artifacts={"model": str(model_dir)},
        signature=lm_signature(), pip_requirements=REQUIREMENTS, registered_model_name=model_name)
    version = str(info.registered_model_version)
    client = MlflowClient()
    set_tags(client, model_name, version, tags)
    client.update_model_version(model_name, version, description=description)
    return version
