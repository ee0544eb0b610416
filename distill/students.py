"""The train stages: the distilled student and its undistilled baseline.

Both share the architecture and the step budget (epochs over the distillation
set); the baseline sees only the gold training labels, so the comparison shows
what the teacher's outputs on the transfer set are worth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from distill import label as label_stage
from distill.config import PipelineConfig
from distill.io import atomic_dir
from distill.models import build_student, load_classifier, read_card, save_classifier
from distill.teacher import gold_data, label_ids
from distill.trainer import TrainData, TrainResult, TrainSettings, steps_for, train


@dataclass
class StudentResult:
    out_dir: Path
    kind: str
    fingerprint: str
    parameters: int
    steps: int
    best_val_accuracy: float
    seconds: float
    stopped_early: bool


def settings_for(cfg: PipelineConfig, n_examples: int, distilled: bool) -> TrainSettings:
    t = cfg.train
    return TrainSettings(
        max_steps=steps_for(n_examples, t.batch_size, t.epochs), batch_size=t.batch_size,
        learning_rate=t.learning_rate, weight_decay=t.weight_decay, max_length=t.max_length,
        kd_temperature=t.kd_temperature, alpha=t.alpha if distilled else 0.0, patience=t.patience,
        eval_every=t.eval_every, device=t.device, seed=cfg.seed)


def fit(cfg: PipelineConfig, teacher_dir: Path, data: TrainData, val: TrainData, settings: TrainSettings,
        out_dir: Path, kind: str, card: dict, on_log: Callable[[int, dict], None] | None) -> StudentResult:
    """Build a student from the teacher's config, train it, save it atomically."""
    teacher = load_classifier(teacher_dir)
    student = build_student(teacher, cfg.student, cfg.seed)
    del teacher
    result: TrainResult = train(student, data, val, settings, on_log=on_log, progress=f"training {kind}")
    with atomic_dir(out_dir) as tmp:
        fingerprint = save_classifier(student, tmp, {
            "role": kind, **card, "student": cfg.student.model_dump(), "train": cfg.train.model_dump(),
            "steps": result.steps, "best_val_accuracy": result.best_val_accuracy})
    return StudentResult(out_dir, kind, fingerprint, student.num_parameters, result.steps,
                         result.best_val_accuracy, result.seconds, result.stopped_early)


def run_student(cfg: PipelineConfig, prepared: Path, teacher_dir: Path, outputs: Path, out_dir: Path,
                on_log: Callable[[int, dict], None] | None = None) -> StudentResult:
    """Distil: Hinton KD on the teacher's cached logits plus gold cross-entropy."""
    teacher_card = read_card(teacher_dir)
    frame, logits, meta = label_stage.read_outputs(outputs, teacher_card["fingerprint"])
    labels = teacher_card["labels"]
    data = TrainData(frame["text"].tolist(), label_ids(labels, frame["label"]), logits)
    settings = settings_for(cfg, len(data), distilled=True)
    card = {"teacher_fingerprint": teacher_card["fingerprint"], "input_hash": meta["input_hash"],
            "method": "hinton_kd"}
    return fit(cfg, teacher_dir, data, gold_data(prepared, "gold_val", labels), settings, out_dir,
               "student", card, on_log)


def run_baseline(cfg: PipelineConfig, prepared: Path, teacher_dir: Path, out_dir: Path,
                 on_log: Callable[[int, dict], None] | None = None) -> StudentResult:
    """The same student on gold labels only, with the distilled student's step budget."""
    labels = read_card(teacher_dir)["labels"]
    n_distill = len(label_stage.distillation_inputs(prepared))
    settings = settings_for(cfg, n_distill, distilled=False)
    return fit(cfg, teacher_dir, gold_data(prepared, "gold_train", labels), gold_data(prepared, "gold_val", labels),
               settings, out_dir, "baseline", {"method": "cross_entropy"}, on_log)
