"""The train stages: the optional teacher assistant, the distilled student and its undistilled baseline.

All students share the architecture source (the teacher's config and tokenizer)
and the step budget (epochs over the distillation set). The baseline sees only
the gold training labels, so the comparison shows what the teacher's outputs on
the transfer set are worth. With an assistant, the teacher distils into the
assistant, whose outputs on the distillation set (versioned in its folder, like
the teacher's) then teach the student.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from distill import label as label_stage
from distill.checkpoint import checkpoint_dir_for
from distill.checkpoint import clear as clear_checkpoints
from distill.config import PipelineConfig, StudentConfig
from distill.cut import cut_of, set_cut
from distill.io import atomic_dir, read_json, write_json
from distill.lengths import with_teacher_lengths
from distill.models import (MODEL_CARD, Classifier, ModelError, load_classifier, pick_device, predict_logits,
                            read_card, resolve_fetched, save_classifier)
from distill.objective import ModelShape, Objective, capacity_warning
from distill.student_init import build_student, warm_start_student
from distill.teacher import gold_data, label_ids
from distill.trainer import TrainData, TrainResult, TrainSettings, steps_for, train

log = logging.getLogger("distill")
ASSISTANT_OUTPUTS = "outputs.parquet"


def as_student(cfg: StudentConfig, shape: dict[str, int]) -> StudentConfig:
    """The student section with ``shape`` as its layer shape."""
    return cfg.model_copy(update=dict(shape))


def read_shape(path: Path | None, cfg: PipelineConfig) -> PipelineConfig:
    """``cfg`` with the student shape chosen by the size_student stage (unchanged without its file)."""
    if path is None or not Path(path).is_file():
        return cfg
    shape = json.loads(Path(path).read_text())["shape"]
    return cfg.model_copy(update={"student": as_student(cfg.student, shape)})


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
    warning: str | None = None


def settings_for(cfg: PipelineConfig, n_examples: int, distilled: bool, epochs: int | None = None,
                 out_dir: Path | None = None) -> TrainSettings:
    """Training settings from the train section; ``out_dir`` turns on checkpoints beside that output."""
    t = cfg.train
    return TrainSettings(
        max_steps=steps_for(n_examples, t.batch_size, epochs or t.epochs), batch_size=t.batch_size,
        learning_rate=t.learning_rate, weight_decay=t.weight_decay, max_length=t.max_length,
        kd_temperature=t.kd_temperature, alpha=t.alpha if distilled else 0.0, patience=t.patience,
        eval_every=t.eval_every, device=t.device, seed=cfg.seed,
        checkpoint_dir=checkpoint_dir_for(out_dir, t.checkpoint_dir) if out_dir is not None else None,
        checkpoint_every=t.checkpoint_every if out_dir is not None else 0)


def check_teacher_logits(logits: np.ndarray, labels: list[str], source: Path) -> None:
    """Refuse cached teacher outputs that are non-finite or cover another label set, before training."""
    if logits.ndim != 2 or logits.shape[1] != len(labels):
        raise label_stage.TeacherOutputError(
            f"{source}: the teacher outputs have {logits.shape[-1]} logits per row but the student predicts "
            f"{len(labels)} labels; relabel with the right teacher (dvc repro label)")
    bad = np.flatnonzero(~np.isfinite(logits).all(axis=1))
    if bad.size:
        raise label_stage.TeacherOutputError(
            f"{source}: {bad.size} rows of teacher outputs are not finite (first: row {bad[0]}); the teacher "
            "produced NaN or infinity. Fix or replace the teacher and relabel (dvc repro label)")


def distillation_set(outputs: Path, fingerprint: str, labels: list[str]) -> tuple[TrainData, dict]:
    """Texts, gold ids and the teacher's logits from a teacher-output file of ``fingerprint``."""
    frame, logits, meta = label_stage.read_outputs(outputs, fingerprint)
    check_teacher_logits(logits, labels, outputs)
    return TrainData(frame["text"].tolist(), label_ids(labels, frame["label"]), logits), meta


def fit(cfg: PipelineConfig, shape: StudentConfig, arch_source: Classifier, signal: Classifier | None,
        data: TrainData, val: TrainData, settings: TrainSettings, kind: str,
        on_log: Callable[[int, dict], None] | None,
        vocab_texts: list[str] | None = None,
        warm_start: Path | None = None) -> tuple[Classifier, TrainResult, str | None]:
    """Build a student from ``arch_source``'s config, check the objective, train it.

    ``signal`` is the model whose outputs teach (the teacher or the assistant); it
    runs in the training step only when a feature or relation term needs it.
    A reduced vocabulary is trained on ``vocab_texts`` (default: the training texts).
    ``warm_start`` is an earlier student's folder to continue from. Its starting weights are scored
    on the validation set too, so training keeps them unless it improves on them; and it trains its
    whole budget, because the first checks after a warm start dip below the start while the fresh
    optimiser and the learning-rate warm-up shake the converged weights (early stopping would end
    in that dip).
    """
    if warm_start is not None:
        student = warm_start_student(warm_start, arch_source, shape)
        set_cut(student.tokenizer, cut_of(arch_source.tokenizer))  # it reads long texts as today's teacher does
        settings = replace(settings, validate_start=True, patience=settings.max_steps + 1)
    else:
        student = build_student(arch_source, shape, cfg.seed, texts=vocab_texts or data.texts)
    distilled = settings.alpha > 0
    objective = Objective(
        cfg.train.losses if distilled else [], settings.kd_temperature, settings.alpha,
        ModelShape.of(student.model), ModelShape.of(signal.model) if signal is not None else None,
        same_tokenizer=signal is not None and student.tokenizer is signal.tokenizer)
    warning = None
    if distilled and signal is not None:
        warning = capacity_warning(student.num_parameters, signal.num_parameters, cfg.train.losses, settings.alpha)
        if warning:
            log.warning("capacity gap: %s", warning)
            print(f"warning: {warning}", flush=True)
    if objective.needs_teacher_model:
        data.teacher = signal
    result = train(student, data, val, settings, on_log=on_log, progress=f"training {kind}", objective=objective)
    return student, result, warning


def _card(cfg: PipelineConfig, shape: StudentConfig, kind: str, result: TrainResult, extra: dict) -> dict:
    return {"role": kind, **extra, "student": shape.model_dump(), "train": cfg.train.model_dump(),
            "steps": result.steps, "best_val_accuracy": result.best_val_accuracy}


def method_name(cfg: PipelineConfig) -> str:
    """A short name of the configured distillation method, e.g. ``kl+hidden_cosine``."""
    names = "+".join(t.name for t in cfg.train.losses)
    return f"assistant:{names}" if cfg.assistant.enabled else names


def run_assistant(cfg: PipelineConfig, prepared: Path, teacher_dir: Path, outputs: Path, out_dir: Path,
                  on_log: Callable[[int, dict], None] | None = None) -> StudentResult | None:
    """Distil the teacher into the assistant and label the distillation set with it.

    Disabled, the folder holds only a card saying so, and the student learns from
    the teacher directly. Enabled, it holds the assistant and its outputs
    (``outputs.parquet``, fingerprinted like the teacher's).
    """
    if not cfg.assistant.enabled:
        with atomic_dir(out_dir) as tmp:
            write_json(tmp / MODEL_CARD, {"role": "assistant", "enabled": False})
        return None
    cfg = with_teacher_lengths(cfg, teacher_dir)
    teacher_card = read_card(teacher_dir)
    labels = teacher_card["labels"]
    teacher = load_classifier(teacher_dir, labels)
    data, meta = distillation_set(outputs, teacher_card["fingerprint"], labels)
    settings = settings_for(cfg, len(data), distilled=True, out_dir=out_dir)
    assistant, result, warning = fit(cfg, cfg.assistant, teacher, teacher, data, gold_data(prepared, "gold_val", labels),
                                     settings, "assistant", on_log)
    del teacher
    texts = label_stage.distillation_inputs(prepared)
    logits = predict_logits(assistant, texts["text"].tolist(), cfg.label.batch_size, cfg.train.max_length,
                            pick_device(cfg.train.device), progress="assistant labelling")
    with atomic_dir(out_dir) as tmp:
        fingerprint = save_classifier(assistant, tmp, _card(cfg, cfg.assistant, "assistant", result, {
            "enabled": True, "teacher_fingerprint": teacher_card["fingerprint"], "input_hash": meta["input_hash"],
            "method": method_name(cfg), "capacity_warning": warning}), result.history)
        label_stage.write_outputs(tmp / ASSISTANT_OUTPUTS, texts, logits, {
            "teacher_fingerprint": fingerprint, "teacher_source": "assistant", "input_hash": meta["input_hash"],
            "labels": labels, "splits": list(label_stage.INPUT_SPLITS)})
    clear_checkpoints(settings.checkpoint_dir)
    return StudentResult(out_dir, "assistant", fingerprint, assistant.num_parameters, result.steps,
                         result.best_val_accuracy, result.seconds, result.stopped_early, warning)


def run_student(cfg: PipelineConfig, prepared: Path, teacher_dir: Path, outputs: Path, out_dir: Path,
                on_log: Callable[[int, dict], None] | None = None, assistant_dir: Path | None = None,
                imported_dir: Path | None = None, shape_file: Path | None = None) -> StudentResult:
    """Distil with the configured loss terms: from the teacher, or from the assistant when one is enabled.

    With ``student.warm_start`` the student continues from that earlier student (an MLflow URI is
    read from ``imported_dir``, where the flow fetched it) and its card records where it started.
    ``shape_file`` is the size_student stage's choice of shape (``distill.sizing``).
    """
    cfg = read_shape(shape_file, with_teacher_lengths(cfg, teacher_dir))
    warm_start = resolve_fetched(cfg.student.warm_start, imported_dir, "student.warm_start")
    if warm_start is not None and not warm_start.is_dir():
        raise ModelError(f"student.warm_start {warm_start}: folder not found")
    teacher_card = read_card(teacher_dir)
    labels = teacher_card["labels"]
    teacher = load_classifier(teacher_dir, labels)
    chain = [teacher_card["fingerprint"]]
    signal, signal_fp, signal_outputs = teacher, teacher_card["fingerprint"], Path(outputs)
    if assistant_dir is not None and read_card(assistant_dir).get("enabled"):
        assistant_card = read_card(assistant_dir)
        if assistant_card.get("teacher_fingerprint") != teacher_card["fingerprint"]:
            raise label_stage.TeacherOutputError(
                f"{assistant_dir}: the assistant was distilled from teacher "
                f"{str(assistant_card.get('teacher_fingerprint'))[:12]}, not {teacher_card['fingerprint'][:12]}; "
                "rerun the assistant stage (dvc repro assistant)")
        signal = load_classifier(assistant_dir, labels)
        signal_fp, signal_outputs = assistant_card["fingerprint"], Path(assistant_dir) / ASSISTANT_OUTPUTS
        chain.append(signal_fp)
    data, meta = distillation_set(signal_outputs, signal_fp, labels)
    settings = settings_for(cfg, len(data), distilled=True, out_dir=out_dir)
    student, result, warning = fit(cfg, cfg.student, teacher, signal, data, gold_data(prepared, "gold_val", labels),
                                   settings, "student", on_log, warm_start=warm_start)
    card = {"teacher_fingerprint": teacher_card["fingerprint"], "input_hash": meta["input_hash"],
            "method": method_name(cfg), "losses": [t.model_dump() for t in cfg.train.losses],
            "kd_temperature": cfg.train.kd_temperature, "alpha": cfg.train.alpha,
            "teacher_chain": chain, "capacity_warning": warning}
    if warm_start is not None:
        source = warm_start / "source.json"
        card["warm_start"] = {"from": cfg.student.warm_start, "fingerprint": read_card(warm_start).get("fingerprint"),
                              **(read_json(source) if source.is_file() else {}),
                              "compressed": bool(read_card(warm_start).get("compression")),
                              "start_val_accuracy": result.history[0]["val_accuracy"] if result.history else None}
    with atomic_dir(out_dir) as tmp:
        fingerprint = save_classifier(student, tmp, _card(cfg, cfg.student, "student", result, card), result.history,
                                      export=cfg.evaluate.runtime == "onnxruntime")
    clear_checkpoints(settings.checkpoint_dir)
    return StudentResult(out_dir, "student", fingerprint, student.num_parameters, result.steps,
                         result.best_val_accuracy, result.seconds, result.stopped_early, warning)


def run_baseline(cfg: PipelineConfig, prepared: Path, teacher_dir: Path, out_dir: Path,
                 on_log: Callable[[int, dict], None] | None = None, shape_file: Path | None = None) -> StudentResult:
    """The same student on gold labels only, with the distilled student's step budget (and shape)."""
    cfg = read_shape(shape_file, with_teacher_lengths(cfg, teacher_dir))
    labels = read_card(teacher_dir)["labels"]
    teacher = load_classifier(teacher_dir, labels)
    inputs = label_stage.distillation_inputs(prepared)["text"].tolist()
    settings = settings_for(cfg, len(inputs), distilled=False, out_dir=out_dir)
    data = gold_data(prepared, "gold_train", labels)
    student, result, _ = fit(cfg, cfg.student, teacher, None, data, gold_data(prepared, "gold_val", labels),
                             settings, "baseline", on_log, vocab_texts=inputs)
    with atomic_dir(out_dir) as tmp:
        fingerprint = save_classifier(student, tmp, _card(cfg, cfg.student, "baseline", result,
                                                          {"method": "cross_entropy"}), result.history,
                                      export=cfg.evaluate.runtime == "onnxruntime")
    clear_checkpoints(settings.checkpoint_dir)
    return StudentResult(out_dir, "baseline", fingerprint, student.num_parameters, result.steps,
                         result.best_val_accuracy, result.seconds, result.stopped_early)
