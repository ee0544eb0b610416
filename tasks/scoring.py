"""Models scored on labelled slices for the promotion gates and the re-distillation's comparison.

Every figure comes from ``distill.slices.slice_accuracy``; this module only fetches the models
(a folder, the registry's champion, a registered version) and names the slices.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
from prefect import task

from distill.config import PipelineConfig
from distill.data import read_split
from distill.gates import label_accuracy
from distill.lengths import model_length
from distill.models import read_card
from distill.runtime import load_served
from distill.slices import Predict, classifier_predict, slice_accuracy
from tasks.registry import NETWORK, Precision, champion_version, fetch_model_folder, load_version, version_precision


def holdout_slices(predict: Predict, holdouts: dict[str, pd.DataFrame]) -> dict[str, dict[str, float]]:
    """Accuracy on each labelled hold-out, as gate slices ``holdout=<name>``: the re-distillation's
    shifted traffic is gated like a label slice."""
    return slice_accuracy(predict, {f"holdout={name}": frame for name, frame in holdouts.items()})


def folder_predict(cfg: PipelineConfig, folder: Path, precision: Precision = "fp32") -> Predict:
    """A classifier folder as a predictor at ``precision`` (int8: its INT8 model), at the input length recorded
    in its card."""
    return classifier_predict(load_served(folder, precision, cfg.evaluate.threads), cfg.evaluate.batch_size,
                              model_length(read_card(folder)))


@task(name="score student on hold-outs")
def score_student_holdouts(cfg: PipelineConfig, student_dir: str, holdouts: dict[str, pd.DataFrame],
                           precision: Precision = "fp32") -> dict:
    """The new student's ``holdout_slices``, as the model that would be registered answers (``precision``)."""
    return holdout_slices(folder_predict(cfg, Path(student_dir), precision), holdouts) if holdouts else {}


@task(name="score champion", **NETWORK)
def score_champion(cfg: PipelineConfig, prepared: str, project_dir: str = ".",
                   holdouts: dict[str, pd.DataFrame] | None = None) -> dict | None:
    """The current champion scored now on this run's gold test set: ``{"version", "accuracy", "slices"}``;
    None when there is no champion yet. ``holdouts`` (name -> labelled frame) add ``holdout=<name>`` slices.
    An INT8 champion is scored as its INT8 model (its ``precision`` tag)."""
    version = champion_version(cfg, project_dir)
    if version is None:
        return None
    test = read_split(Path(prepared), "gold_test")
    with tempfile.TemporaryDirectory() as tmp:
        predict = folder_predict(cfg, fetch_model_folder(f"models:/{cfg.promote.student_model}/{version}",
                                                         Path(tmp) / "champion"),
                                 version_precision(cfg, version, project_dir))
        predicted = [str(p) for p in predict(test["text"].astype(str).tolist())]
        extra = holdout_slices(predict, holdouts or {})
    gold = test["label"].astype(str).tolist()
    return {"version": version, "accuracy": sum(g == p for g, p in zip(gold, predicted)) / max(len(gold), 1),
            "slices": label_accuracy(gold, predicted) | extra}


@task(name="score on slices", **NETWORK)
def score_versions(cfg: PipelineConfig, project_dir: str, versions: dict[str, str],
                   slices: dict[str, pd.DataFrame]) -> dict:
    """Accuracy of each named registry version on each labelled slice: ``{"<slice>.<name>_accuracy"}``,
    the versions and the slice sizes."""
    out: dict = {}
    for name, version in versions.items():
        model = load_version(cfg, version, project_dir)
        scores = slice_accuracy(lambda texts: model.predict(pd.DataFrame({"text": texts}))["label"].astype(str),
                                slices)
        out |= {f"{slice_name}.{name}_accuracy": s["accuracy"] for slice_name, s in scores.items()}
        out[f"{name}_version"] = version
    return out | {f"{s}.size": len(f) for s, f in slices.items()}


@task(name="score the teacher on slices")
def score_teacher(cfg: PipelineConfig, teacher_dir: Path, slices: dict[str, pd.DataFrame]) -> dict:
    """The teacher's accuracy on each labelled slice: the ceiling a re-distilled student aims at."""
    scores = slice_accuracy(folder_predict(cfg, Path(teacher_dir)), slices)
    return {f"{slice_name}.teacher_accuracy": s["accuracy"] for slice_name, s in scores.items()}
