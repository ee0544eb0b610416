"""MLflow tracking and the model registry, as Prefect tasks.

Aliases, not the deprecated stages: ``challenger`` on registration,
``champion`` on promotion (the former champion keeps ``previous``).
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from prefect import task

from distill.config import PipelineConfig, TrackingConfig
from distill.io import read_json
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
    # A local store keeps artifacts beside the project; a tracking server chooses (and serves) its own.
    remote = mlflow.get_tracking_uri().startswith(("http://", "https://", "databricks"))
    artifacts = None if remote else (Path(project_dir) / "mlartifacts").resolve().as_uri()
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


def signature(labels: list[str]):
    """Input: a ``text`` column. Output: ``label``, ``score`` and ``p_<label>`` for every label."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    outputs = [ColSpec("string", "label"), ColSpec("float", "score")]
    outputs += [ColSpec("float", f"p_{label}") for label in labels]
    return ModelSignature(inputs=Schema([ColSpec("string", "text")]), outputs=Schema(outputs))


def log_classifier(model_dir: Path, model_name: str, tags: dict[str, str], description: str,
                   example_text: str = "turn on the kitchen light") -> str:
    """Log a model folder as a pyfunc in the active run and register it; return the version."""
    from distill.models import read_card

    example = pd.DataFrame({"text": [example_text]})
    info = mlflow.pyfunc.log_model(
        name="model", python_model=str(PYFUNC_CODE), artifacts={"model": str(model_dir)},
        signature=signature(list(read_card(model_dir)["labels"])), input_example=example,
        pip_requirements=REQUIREMENTS, registered_model_name=model_name)
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


def record_run(cfg: PipelineConfig, run_name: str, params: dict[str, Any], metrics: dict, tags: dict[str, str],
               artifacts: list[str], project_dir: str = ".") -> str:
    """One MLflow run: params, the numeric leaves of ``metrics``, tags (plus the git commit), report files."""
    experiment_id = configure(cfg.tracking, project_dir)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.log_metrics({k: float(v) for k, v in flatten("", metrics).items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool)})
        mlflow.set_tags({**tags, "git_commit": git_commit(project_dir)})
        for path in artifacts:
            if Path(path).is_dir():
                mlflow.log_artifacts(path, artifact_path=Path(path).name)
            elif Path(path).is_file():
                mlflow.log_artifact(path)
        return run.info.run_id


@task(name="log pipeline run", **NETWORK)
def log_run(cfg: PipelineConfig, metrics: dict, tags: dict[str, str], artifacts: list[str],
            project_dir: str = ".") -> str:
    """One MLflow run per pipeline run: config, metrics, reports, lineage tags; returns the run id."""
    return record_run(cfg, "distill-pipeline", flatten("", cfg.model_dump()), metrics, tags, artifacts, project_dir)


@task(name="register student", **NETWORK)
def register_student(cfg: PipelineConfig, run_id: str, student_dir: str, card: dict, tags: dict[str, str],
                     description: str, project_dir: str = ".") -> tuple[str, bool]:
    """Register the student under alias ``challenger``; returns (version, newly_registered)."""
    configure(cfg.tracking, project_dir)
    name = cfg.promote.student_model
    existing = find_version(name, card["fingerprint"])
    if existing is not None:
        return str(existing.version), False
    with mlflow.start_run(run_id=run_id):
        version = log_classifier(Path(student_dir), name, {**tags, "fingerprint": card["fingerprint"]},
                                 description)
    MlflowClient().set_registered_model_alias(name, "challenger", version)
    return version, True


TRANSIENT = ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED")  # e.g. SQLite busy
LOCK_STALE_S = 600  # a promotion takes seconds; a lock this old was left by a crashed process


class PromotionError(RuntimeError):
    """A promotion or rollback could not be carried out; the message says what to do."""


def _alias(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version an alias points to, or None."""
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


@contextmanager
def promotion_lock(client: MlflowClient, name: str, timeout_s: float = 120) -> Iterator[None]:
    """Hold ``<name>-promotion-lock`` while aliases move.

    MLflow aliases are unique per model, but "read champion, set previous, set champion" is
    three calls; two promotions interleaving them would lose track of who displaced whom.
    Creating a registered model is atomic in every MLflow store (names are unique), so the
    registry itself is the mutex, shared by flows, the CLI and other machines.
    """
    lock, holder = f"{name}-promotion-lock", f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.create_registered_model(lock, tags={"holder": holder, "since": str(time.time())},
                                           description=f"Held while {name}'s aliases move; deleted after.")
            break
        except mlflow.exceptions.MlflowException as exc:
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", *TRANSIENT):
                raise
            if _lock_holder(client, lock) == holder:  # our create went through; a retried request said "exists"
                break
        _break_stale_lock(client, lock)
        if time.monotonic() > deadline:
            raise PromotionError(f"registered model {lock!r} is held by another promotion for over {timeout_s:.0f} s; "
                                 f"if none is running, delete that registered model and retry")
        time.sleep(0.2 + random.random() * 0.3)
    try:
        yield
    finally:
        try:
            if _lock_holder(client, lock) == holder:
                client.delete_registered_model(lock)
        except mlflow.exceptions.MlflowException:
            pass  # broken as stale by someone else


def _lock_holder(client: MlflowClient, lock: str) -> str | None:
    try:
        return client.get_registered_model(lock).tags.get("holder")
    except mlflow.exceptions.MlflowException:
        return None


def _break_stale_lock(client: MlflowClient, lock: str) -> None:
    try:
        since = float(client.get_registered_model(lock).tags.get("since", "0"))
    except mlflow.exceptions.MlflowException:
        return  # released meanwhile
    if time.time() - since > LOCK_STALE_S:
        try:
            client.delete_registered_model(lock)
        except mlflow.exceptions.MlflowException:
            pass


def move_champion(client: MlflowClient, name: str, version: str, promoted_by: str, reason: str = "") -> dict:
    """Point ``champion`` at ``version`` under the promotion lock; the former champion becomes ``previous``.

    The aliases are re-read after they are set: what this call reports displacing is what the
    registry says, and the new champion carries it in its ``displaced`` tag (rollback follows
    that chain). Returns ``{"version", "displaced", "changed"}``.
    """
    client.get_model_version(name, version)  # fails with the registry's message when it does not exist
    with promotion_lock(client, name):
        former = _alias(client, name, "champion")
        if former == version:
            return {"version": version, "displaced": None, "changed": False}
        if former is not None:
            client.set_registered_model_alias(name, "previous", former)
        client.set_registered_model_alias(name, "champion", version)
        now, previous = _alias(client, name, "champion"), _alias(client, name, "previous")
        if now != version or previous != former:
            raise PromotionError(f"{name}: after promoting v{version} the registry says champion=v{now}, "
                                 f"previous=v{previous}; an alias was moved outside distill (the MLflow UI?). "
                                 f"Check `distill registry` and set the aliases by hand")
        stamp = {"promoted_by": promoted_by, "promoted_at": _utc_now(), "displaced": former or "none"}
        if reason:
            stamp["promotion_reason"] = reason[:5000]
        set_tags(client, name, version, stamp)
        if former is not None:
            set_tags(client, name, former, {"displaced_by": version})
    return {"version": version, "displaced": former, "changed": True}


def roll_back(client: MlflowClient, name: str, reason: str = "") -> dict:
    """``champion`` back to ``previous``; the displaced champion is tagged ``rolled_back``.

    ``previous`` then points at what the restored version had itself displaced, so repeated
    rollbacks walk back the promotion history. Returns ``{"version", "rolled_back", "previous"}``.
    """
    with promotion_lock(client, name):
        current, target = _alias(client, name, "champion"), _alias(client, name, "previous")
        if target is None or current is None:
            raise PromotionError(f"{name}: nothing to roll back to (champion v{current}, no 'previous' alias); "
                                 f"promote a version with `distill promote VERSION` instead")
        client.set_registered_model_alias(name, "champion", target)
        set_tags(client, name, current, {"rolled_back": "true", "rolled_back_at": _utc_now(),
                                         **({"rollback_reason": reason[:5000]} if reason else {})})
        set_tags(client, name, target, {"promoted_by": "rollback", "promoted_at": _utc_now()})
        earlier = client.get_model_version(name, target).tags.get("displaced", "none")
        if earlier not in ("none", current, target) and _exists(client, name, earlier):
            client.set_registered_model_alias(name, "previous", earlier)
        else:
            client.delete_registered_model_alias(name, "previous")
            earlier = None
    return {"version": target, "rolled_back": current, "previous": earlier}


def _exists(client: MlflowClient, name: str, version: str) -> bool:
    try:
        client.get_model_version(name, version)
        return True
    except mlflow.exceptions.MlflowException:
        return False


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_tags(client: MlflowClient, name: str, version: str, tags: dict[str, Any]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))


@task(name="promote", **NETWORK)
def promote(cfg: PipelineConfig, version: str, project_dir: str = ".", promoted_by: str = "flow",
            reason: str = "") -> dict:
    """Make ``version`` the champion (see ``move_champion``)."""
    configure(cfg.tracking, project_dir)
    return move_champion(MlflowClient(), cfg.promote.student_model, version, promoted_by, reason)


@task(name="tag version", **NETWORK)
def tag_version(cfg: PipelineConfig, version: str, tags: dict[str, Any], description: str | None = None,
                project_dir: str = ".") -> None:
    """Write tags (and the model card, when given) on a student version."""
    configure(cfg.tracking, project_dir)
    client, name = MlflowClient(), cfg.promote.student_model
    set_tags(client, name, version, tags)
    if description is not None:
        client.update_model_version(name, version, description=description)


def champion_version(cfg: PipelineConfig, project_dir: str = ".") -> str | None:
    """The version the ``champion`` alias points to, or None."""
    configure(cfg.tracking, project_dir)
    return _alias(MlflowClient(), cfg.promote.student_model, "champion")


def version_overrides(cfg: PipelineConfig, version: str, project_dir: str = ".") -> list[str]:
    """The overrides a student version was distilled with (its ``overrides`` tag; none when untagged)."""
    configure(cfg.tracking, project_dir)
    raw = MlflowClient().get_model_version(cfg.promote.student_model, version).tags.get("overrides")
    return json.loads(raw) if raw else []


def holdout_slices(clf, holdouts: dict[str, pd.DataFrame], cfg: PipelineConfig,
                   max_length: int) -> dict[str, dict[str, float]]:
    """Accuracy of a classifier on each labelled hold-out (``text``, ``label``), as gate slices
    ``holdout=<name>``: the re-distillation's shifted traffic is gated like a label slice."""
    import numpy as np

    from distill.models import predict_logits

    out = {}
    for name, frame in holdouts.items():
        if len(frame):
            logits = predict_logits(clf, frame["text"].astype(str).tolist(), cfg.evaluate.batch_size, max_length)
            predicted = np.asarray(clf.labels)[logits.argmax(axis=1)]
            out[f"holdout={name}"] = {"accuracy": float((predicted == frame["label"].astype(str).to_numpy()).mean()),
                                      "n": len(frame)}
    return out


@task(name="score student on hold-outs")
def score_student_holdouts(cfg: PipelineConfig, student_dir: str, holdouts: dict[str, pd.DataFrame]) -> dict:
    """The new student's ``holdout_slices``."""
    from distill.lengths import model_length
    from distill.models import load_classifier, read_card

    if not holdouts:
        return {}
    return holdout_slices(load_classifier(Path(student_dir)), holdouts, cfg, model_length(read_card(Path(student_dir))))


@task(name="score champion", **NETWORK)
def score_champion(cfg: PipelineConfig, prepared: str, project_dir: str = ".",
                   holdouts: dict[str, pd.DataFrame] | None = None) -> dict | None:
    """The current champion scored now on this run's gold test set: ``{"version", "accuracy", "slices",
    "predicted"}``; None when there is no champion yet. ``holdouts`` (name → labelled frame) add
    ``holdout=<name>`` slices."""
    import tempfile

    from distill.data import read_split
    from distill.gates import label_accuracy
    from distill.lengths import model_length
    from distill.models import load_classifier, predict_logits, read_card

    version = champion_version(cfg, project_dir)
    if version is None:
        return None
    test = read_split(Path(prepared), "gold_test")
    with tempfile.TemporaryDirectory() as tmp:
        folder = fetch_model_folder(f"models:/{cfg.promote.student_model}/{version}", Path(tmp) / "champion")
        clf, length = load_classifier(folder), model_length(read_card(folder))
        logits = predict_logits(clf, test["text"].tolist(), cfg.evaluate.batch_size, length)
        extra = holdout_slices(clf, holdouts or {}, cfg, length)
    predicted = [clf.labels[i] for i in logits.argmax(axis=1)]
    gold = test["label"].astype(str).tolist()
    return {"version": version, "accuracy": sum(g == p for g, p in zip(gold, predicted)) / max(len(gold), 1),
            "slices": label_accuracy(gold, predicted) | extra}


SMOKE = """
import json, sys, time
import mlflow, pandas as pd
start = time.perf_counter()
model = mlflow.pyfunc.load_model(sys.argv[1])
out = model.predict(pd.DataFrame({"text": [sys.argv[2]]}))
print(json.dumps({"label": str(out["label"].iloc[0]), "score": float(out["score"].iloc[0]),
                  "seconds": round(time.perf_counter() - start, 2)}))
"""


@task(name="serving check", **NETWORK)
def serving_check(cfg: PipelineConfig, text: str, project_dir: str = ".", alias: str = "champion") -> dict:
    """Load ``models:/<student>@<alias>`` in a fresh interpreter, as a server would, and classify ``text``."""
    import json
    import sys

    configure(cfg.tracking, project_dir)
    uri = f"models:/{cfg.promote.student_model}@{alias}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(cfg.tracking, project_dir)}
    proc = subprocess.run([sys.executable, "-c", SMOKE, uri, text], env=env, capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        raise PromotionError(f"{uri} did not load or answer in a fresh process:\n{proc.stderr.strip()[-2000:]}")
    return {"uri": uri, "version": _alias(MlflowClient(), cfg.promote.student_model, alias),
            **json.loads(proc.stdout.strip().splitlines()[-1])}


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


@task(name="load champion", **NETWORK)
def load_champion(cfg: PipelineConfig, project_dir: str = "."):
    """The champion student as a pyfunc model, through its registry URI."""
    configure(cfg.tracking, project_dir)
    return mlflow.pyfunc.load_model(f"models:/{cfg.promote.student_model}@champion")


# ---- LM students (flows/lm.py): the same registry, aliases and promotion lock, another model name ----

PYFUNC_LM_CODE = Path(__file__).with_name("pyfunc_lm.py")


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
        name="model", python_model=str(PYFUNC_LM_CODE), artifacts={"model": str(model_dir)},
        signature=lm_signature(), pip_requirements=REQUIREMENTS, registered_model_name=model_name)
    version = str(info.registered_model_version)
    client = MlflowClient()
    set_tags(client, model_name, version, tags)
    client.update_model_version(model_name, version, description=description)
    return version


@task(name="log LM pipeline run", **NETWORK)
def log_lm_run(cfg: PipelineConfig, metrics: dict, tags: dict[str, str], artifacts: list[str],
               project_dir: str = ".") -> str:
    """One MLflow run per LM pipeline run: the lm config, the evaluation figures, reports, lineage; its id."""
    params = flatten("lm", cfg.lm.model_dump(mode="json")) | {"seed": cfg.seed}
    return record_run(cfg, "distill-lm-pipeline", params, metrics, {**tags, "task": "lm"}, artifacts, project_dir)


@task(name="register LM student", **NETWORK)
def register_lm_student(cfg: PipelineConfig, run_id: str, student_dir: str, card: dict, tags: dict[str, str],
                        description: str, project_dir: str = ".") -> tuple[str, bool]:
    """Register the LM student (once per weights fingerprint) under alias ``challenger``; (version, new)."""
    configure(cfg.tracking, project_dir)
    name = cfg.lm.promote.model_name
    existing = find_version(name, card["fingerprint"])
    if existing is not None:
        return str(existing.version), False
    with mlflow.start_run(run_id=run_id):
        version = log_causal_lm(Path(student_dir), name, {**tags, "fingerprint": card["fingerprint"]}, description)
    MlflowClient().set_registered_model_alias(name, "challenger", version)
    return version, True


@task(name="tag LM version", **NETWORK)
def tag_lm_version(cfg: PipelineConfig, version: str, tags: dict[str, Any], description: str | None = None,
                   project_dir: str = ".") -> None:
    """Write tags (and the model card, when given) on an LM student version."""
    configure(cfg.tracking, project_dir)
    client = MlflowClient()
    set_tags(client, cfg.lm.promote.model_name, version, tags)
    if description is not None:
        client.update_model_version(cfg.lm.promote.model_name, version, description=description)


@task(name="promote LM student", **NETWORK)
def promote_lm(cfg: PipelineConfig, version: str, project_dir: str = ".", promoted_by: str = "flow",
               reason: str = "") -> dict:
    """Make LM student ``version`` the champion (see ``move_champion``)."""
    configure(cfg.tracking, project_dir)
    return move_champion(MlflowClient(), cfg.lm.promote.model_name, version, promoted_by, reason)


def lm_champion_version(cfg: PipelineConfig, project_dir: str = ".") -> str | None:
    """The LM student version the ``champion`` alias points to, or None."""
    configure(cfg.tracking, project_dir)
    return _alias(MlflowClient(), cfg.lm.promote.model_name, "champion")
