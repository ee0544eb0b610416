"""The teacher stage: bootstrap one from the packaged MiniLM, or import a given folder.

The stage writes a self-describing model folder whose card holds the teacher's
fingerprint (a content hash of weights, config and tokenizer). Everything
downstream is keyed on that fingerprint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distill import data as data_stage
from distill import lengths
from distill.config import PipelineConfig
from distill.cut import set_cut
from distill.gates import GateReport, check_teacher
from distill.io import atomic_dir, read_json, write_json
from distill.lengths import LengthProfile, with_lengths, with_teacher_lengths
from distill.models import (Classifier, ModelError, init_from_encoder, load_classifier, packaged_encoder_path,
                            predict_logits, read_card, resolve_fetched, save_classifier)
from distill.trainer import TrainData, TrainResult, TrainSettings, steps_for, train


@dataclass
class TeacherResult:
    out_dir: Path
    fingerprint: str
    source: str
    bootstrapped: bool
    parameters: int
    val_accuracy: float | None


def label_ids(labels: list[str], values) -> np.ndarray:
    """Map label names to ids; unknown or missing labels become -100 (ignored)."""
    index = {label: i for i, label in enumerate(labels)}
    return np.array([index.get(v, -100) if isinstance(v, str) else -100 for v in values], dtype=np.int64)


def gold_data(prepared: Path, split: str, labels: list[str]) -> TrainData:
    """A gold split as TrainData."""
    frame = data_stage.read_split(prepared, split)
    return TrainData(frame["text"].tolist(), label_ids(labels, frame["label"]))


UNKNOWN_WARNED, UNKNOWN_REFUSED = 0.05, 0.5  # shares of [UNK] tokens in the texts


def bootstrap(cfg: PipelineConfig, clf: Classifier, prepared: Path, length: LengthProfile) -> TrainResult:
    """Fine-tune ``clf`` (the packaged all-MiniLM-L6-v2 with a new head) on the gold training set, within the
    budget that ``length`` (the measured texts) sets."""
    train_set, val_set = gold_data(prepared, "gold_train", clf.labels), gold_data(prepared, "gold_val", clf.labels)
    t = cfg.teacher
    max_steps = budget_steps(cfg, len(train_set), length.padded_batch)
    # Validation about five times over the budget (once per epoch on a small gold set); the best weights are kept.
    eval_every = max(1, min(steps_for(len(train_set), t.batch_size, 1), -(-max_steps // 5)))
    settings = TrainSettings(
        max_steps=max_steps, batch_size=t.batch_size, learning_rate=t.learning_rate, max_length=t.max_length,
        patience=10**6, eval_every=eval_every, device=cfg.train.device, seed=cfg.seed)
    return train(clf, train_set, val_set, settings, progress="teacher fine-tuning")


def budget_steps(cfg: PipelineConfig, n_texts: int, padded: float) -> int:
    """Optimizer steps of the bootstrap: ``teacher.epochs`` passes over ``n_texts``, within ``teacher.max_tokens``
    (tokens read, at ``padded`` tokens per text: ``LengthProfile.padded_batch``) and ``teacher.max_steps``; the
    terminal says which bound holds."""
    t = cfg.teacher
    steps = steps_for(n_texts, t.batch_size, t.epochs)
    bound = f"{t.epochs} epochs of {n_texts} texts"
    if t.max_tokens is not None:
        padded = max(padded, 1.0)
        affordable = max(1, int(t.max_tokens // (t.batch_size * padded)))
        if affordable < steps:
            steps, bound = affordable, (f"teacher.max_tokens={t.max_tokens:,} at ~{padded:.0f} padded tokens per "
                                        f"text ({affordable * t.batch_size / n_texts:.1f} passes)")
    if t.max_steps is not None and t.max_steps < steps:
        steps, bound = t.max_steps, f"teacher.max_steps={t.max_steps}"
    print(f"teacher fine-tuning: {steps} steps ({bound})", flush=True)
    return steps


def measure_lengths(cfg: PipelineConfig, clf: Classifier, prepared: Path) -> LengthProfile:
    """The input length for this teacher and data (``distill.lengths``), said on the terminal."""
    # The gold training and validation texts: the teacher stage depends on them alone, so new traffic
    # in the transfer set (a re-distillation) does not retrain the teacher.
    texts = [t for split in ("gold_train", "gold_val") for t in data_stage.read_split(prepared, split)["text"]]
    limit = getattr(clf.model.config, "max_position_embeddings", None)
    padding_idx = getattr(getattr(clf.model.base_model, "embeddings", None), "padding_idx", None)
    if limit and padding_idx is not None:
        limit -= padding_idx + 1  # RoBERTa-style positions start after the padding index
    limit = min(limit or 10**6, getattr(clf.tokenizer, "model_max_length", 10**6) or 10**6)
    found = lengths.profile(clf.tokenizer, texts, cfg, limit)
    how = (f"the {found.quantile:.0%} quantile, capped at {cfg.teacher.max_length_cap}" if found.chosen
           else "teacher.max_length")
    cut = "their head and tail are kept" if cfg.teacher.cut == "head_tail" else "their head is kept"
    print(f"input length: {found.max_length} tokens ({how}); token lengths p50 {found.p50}, p90 {found.p90}, "
          f"p99 {found.p99}; {found.truncated_share:.1%} of the texts are cut ({cut}: teacher.cut)", flush=True)
    if found.unknown_share > UNKNOWN_REFUSED:
        raise ModelError(f"{found.unknown_share:.0%} of the text tokens are unknown to the teacher's tokenizer "
                         "([UNK]): the texts are in a language or script it does not cover. Give a teacher for "
                         "that language (teacher.path), or check data.text_column")
    if found.unknown_share > UNKNOWN_WARNED:
        print(f"warning: {found.unknown_share:.0%} of the text tokens are unknown to the teacher's tokenizer "
              "([UNK]); a teacher for the texts' language (teacher.path) would read them better", flush=True)
    return found


def resolve_teacher_path(cfg: PipelineConfig, imported_dir: Path | None) -> Path | None:
    """The folder to read the configured teacher from; MLflow URIs come pre-fetched in ``imported_dir``."""
    return resolve_fetched(cfg.teacher.path, imported_dir, "teacher.path")


def run(cfg: PipelineConfig, prepared: Path, out_dir: Path, teacher_path: Path | None = None,
        imported_dir: Path | None = None) -> TeacherResult:
    """Write the teacher folder: the configured one (checked), or a bootstrapped one.

    ``teacher_path`` overrides ``cfg.teacher.path``. A ``models:/`` URI in
    ``teacher.path`` is read from ``imported_dir``, where the flow (or
    ``distill fetch-teacher``) downloaded it.
    """
    labels = data_stage.read_labels(prepared)
    given = teacher_path or resolve_teacher_path(cfg, imported_dir)
    with atomic_dir(out_dir) as tmp:
        if given is None:
            torch.manual_seed(cfg.seed)  # the new classification head's initial weights
            clf = init_from_encoder(packaged_encoder_path(), labels)
            set_cut(clf.tokenizer, {"how": cfg.teacher.cut, "head_share": cfg.teacher.head_share})
            length = measure_lengths(cfg, clf, prepared)
            trained = bootstrap(with_lengths(cfg, {"length": length.to_dict()}), clf, prepared, length)
            source, boot, val_accuracy = f"bootstrap:{packaged_encoder_path().name} (all-MiniLM-L6-v2)", True, \
                trained.best_val_accuracy
            extra = {"train_size": len(data_stage.read_split(prepared, "gold_train")), "steps": trained.steps}
            history = trained.history
        else:
            if not Path(given).is_dir():
                raise ModelError(f"teacher.path {given}: folder not found")
            source = cfg.teacher.path if teacher_path is None and cfg.teacher.path else str(given)
            clf, val_accuracy, boot, extra, history = load_classifier(Path(given), labels), None, False, {}, None
            set_cut(clf.tokenizer, {"how": cfg.teacher.cut, "head_share": cfg.teacher.head_share})
            length = measure_lengths(cfg, clf, prepared)
        fingerprint = save_classifier(clf, tmp, {"role": "teacher", "source": source, "length": length.to_dict(),
                                                 **extra}, history, export=cfg.evaluate.runtime == "onnxruntime")
    return TeacherResult(out_dir, fingerprint, source, boot, clf.num_parameters, val_accuracy)


def fingerprint_of(folder: Path) -> str:
    """The fingerprint recorded in a model folder's card."""
    return read_card(folder)["fingerprint"]


def validate(cfg: PipelineConfig, prepared: Path, teacher_dir: Path, out_dir: Path) -> GateReport:
    """Score the teacher on the gold test set and apply the teacher gate; write both."""
    from sklearn.metrics import accuracy_score

    cfg = with_teacher_lengths(cfg, teacher_dir)
    clf = load_classifier(teacher_dir)
    test = gold_data(prepared, "gold_test", clf.labels)
    pred = predict_logits(clf, test.texts, cfg.evaluate.batch_size, cfg.teacher.max_length,
                          progress="validating teacher").argmax(axis=1)
    card = read_card(teacher_dir)
    metrics = {"accuracy": float(accuracy_score(test.labels, pred)),
               **judged_macro_f1(test.labels, pred, clf.labels, cfg.teacher.min_label_support),
               "test_size": len(test), "train_size": card.get("train_size"),
               "bootstrapped": str(card.get("source", "")).startswith("bootstrap:")}
    gate = check_teacher(metrics, cfg.teacher)
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / "metrics.json", {k: v for k, v in metrics.items() if not isinstance(v, list)})  # DVC metrics
        write_json(tmp / "gate.json", {**gate.to_dict(), "fingerprint": fingerprint_of(teacher_dir)})
    return gate


def judged_macro_f1(gold: np.ndarray, pred: np.ndarray, labels: list[str], min_support: int) -> dict:
    """Macro-F1 over the labels with at least ``min_support`` gold examples (every label when none has).

    Returns ``macro_f1`` (the judged one), ``macro_f1_all_labels``, ``labels_judged`` and the labels
    left out with ``too_few_rows_share``, their share of the rows.
    """
    from sklearn.metrics import precision_recall_fscore_support

    ids = np.arange(len(labels))
    _, _, f1, support = precision_recall_fscore_support(gold, pred, labels=ids, zero_division=0)
    present = support > 0
    judged = support >= min_support
    if not judged.any():
        judged = present
    small = present & ~judged
    return {"macro_f1": float(f1[judged].mean()) if judged.any() else 0.0,
            "macro_f1_all_labels": float(f1[present].mean()) if present.any() else 0.0,
            "labels_judged": int(judged.sum()), "min_label_support": min_support,
            "labels_too_few": [labels[i] for i in ids[small]],
            "too_few_rows_share": float(support[small].sum() / max(support.sum(), 1))}


def require_passed_gate(gate_file: Path, identity: str, what: str = "teacher", stage: str = "validate_teacher",
                        refused: str = "Labelling with it is refused; improve the teacher (or the gate's thresholds, "
                                       "teacher.min_accuracy / teacher.min_macro_f1) and run again") -> None:
    """Refuse to go on with a teacher whose gate (``stage``'s ``gate.json``) failed, or that is not the teacher
    the gate judged (``identity``: its fingerprint)."""
    gate_file = Path(gate_file)
    if not gate_file.is_file():
        raise ModelError(f"{gate_file}: the {what} gate has not run; run `dvc repro {stage}` first")
    gate = read_json(gate_file)
    if not gate.get("passed"):
        raise ModelError(f"the {what} failed its gate ({gate_file}): " + "; ".join(gate.get("reasons", []))
                         + f". {refused}")
    if gate.get("fingerprint") and gate["fingerprint"] != identity:
        raise ModelError(f"{gate_file} judged another {what} ({gate['fingerprint'][:16]}) than this one "
                         f"({identity[:16]}); run `dvc repro {stage}`")
