"""The evaluate stage: one harness for teacher, INT8 teacher, student and baseline."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, f1_score

from distill import data as data_stage
from distill.config import PipelineConfig
from distill.io import atomic_dir, write_json
from distill.models import Classifier, encode, load_classifier, predict_logits, read_card
from distill import plots
from distill.quantize import quantize_dynamic_int8


@dataclass
class Candidate:
    name: str
    clf: Classifier
    size_bytes: int
    parameters: int  # quantization packs weights but does not remove any: counted before packing


@dataclass
class EvaluateResult:
    out_dir: Path
    metrics: dict[str, dict[str, float]]


def folder_size(folder: Path) -> int:
    """Bytes of the weight files in a model folder."""
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))


def state_size(model: torch.nn.Module) -> int:
    """Bytes of a serialized state dict (used for quantized models)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


@torch.inference_mode()
def batch1_latency_ms(clf: Classifier, texts: list[str], max_length: int, warmup: int, threads: int) -> np.ndarray:
    """Per-request latency (tokenize + forward) in ms at batch size 1, on CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    model = clf.model.to("cpu").eval()
    try:
        for text in texts[:warmup]:
            model(**encode(clf.tokenizer, [text], max_length))
        timings = []
        for text in texts:
            start = time.perf_counter()
            model(**encode(clf.tokenizer, [text], max_length))
            timings.append((time.perf_counter() - start) * 1000)
    finally:
        torch.set_num_threads(previous)
    return np.array(timings)


def load_candidates(teacher_dir: Path, student_dir: Path, baseline_dir: Path) -> list[Candidate]:
    """Every model the harness compares; the teacher comes first (the others are scored against it)."""
    teacher = load_classifier(teacher_dir)
    student, baseline = load_classifier(student_dir), load_classifier(baseline_dir)
    teacher_int8 = Classifier(quantize_dynamic_int8(load_classifier(teacher_dir).model), teacher.tokenizer,
                              teacher.labels)
    student_int8 = Classifier(quantize_dynamic_int8(load_classifier(student_dir).model), student.tokenizer,
                              student.labels)
    return [
        Candidate("teacher", teacher, folder_size(teacher_dir), teacher.num_parameters),
        Candidate("teacher_int8", teacher_int8, state_size(teacher_int8.model), teacher.num_parameters),
        Candidate("student", student, folder_size(student_dir), student.num_parameters),
        Candidate("student_int8", student_int8, state_size(student_int8.model), student.num_parameters),
        Candidate("baseline", baseline, folder_size(baseline_dir), baseline.num_parameters),
    ]


def expected_calibration_error(probs: np.ndarray, gold: np.ndarray, bins: int = 15) -> float:
    """ECE: the confidence-weighted gap between confidence and accuracy over equal-width bins."""
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == gold
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    gaps = [abs(correct[which == b].mean() - confidence[which == b].mean()) * (which == b).mean()
            for b in range(bins) if (which == b).any()]
    return float(sum(gaps))


def bootstrap_ci(gold: np.ndarray, pred: np.ndarray, n_classes: int, samples: int, seed: int) -> dict[str, float]:
    """95 % percentile-bootstrap intervals of accuracy and macro-F1."""
    rng = np.random.default_rng(seed)
    acc, f1 = [], []
    for _ in range(samples):
        idx = rng.integers(0, len(gold), len(gold))
        acc.append(accuracy_score(gold[idx], pred[idx]))
        f1.append(f1_score(gold[idx], pred[idx], average="macro", labels=range(n_classes), zero_division=0))
    return {"accuracy_ci_low": float(np.percentile(acc, 2.5)), "accuracy_ci_high": float(np.percentile(acc, 97.5)),
            "macro_f1_ci_low": float(np.percentile(f1, 2.5)), "macro_f1_ci_high": float(np.percentile(f1, 97.5))}


def mcnemar_p(gold: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray) -> float:
    """Exact McNemar test: p-value that A and B err equally often, from their discordant pairs."""
    from scipy.stats import binomtest

    a_only = int(((pred_a == gold) & (pred_b != gold)).sum())
    b_only = int(((pred_a != gold) & (pred_b == gold)).sum())
    return 1.0 if a_only + b_only == 0 else float(binomtest(a_only, a_only + b_only, 0.5).pvalue)


@torch.inference_mode()
def throughput(clf: Classifier, texts: list[str], batch_size: int, max_length: int, threads: int) -> float:
    """Sequences per second at ``batch_size`` on CPU, tokenization included."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        predict_logits(clf, texts[:batch_size], batch_size, max_length)  # warm-up
        start = time.perf_counter()
        predict_logits(clf, texts, batch_size, max_length)
        return len(texts) / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)


def score(candidate: Candidate, gold: np.ndarray, teacher_probs: np.ndarray, probs: np.ndarray,
          latency: np.ndarray) -> dict[str, float]:
    """Task, calibration, agreement and cost figures of one candidate."""
    pred, n_classes = probs.argmax(axis=1), probs.shape[1]
    with np.errstate(divide="ignore"):
        kl = (teacher_probs * (np.log(teacher_probs + 1e-12) - np.log(probs + 1e-12))).sum(axis=1).mean()
    return {
        "accuracy": float(accuracy_score(gold, pred)),
        "macro_f1": float(f1_score(gold, pred, average="macro", labels=range(n_classes), zero_division=0)),
        "weighted_f1": float(f1_score(gold, pred, average="weighted", labels=range(n_classes), zero_division=0)),
        "ece": expected_calibration_error(probs, gold),
        "agreement_with_teacher": float((pred == teacher_probs.argmax(axis=1)).mean()),
        "kl_to_teacher": float(kl),
        "latency_p50_ms": float(np.percentile(latency, 50)),
        "latency_p95_ms": float(np.percentile(latency, 95)),
        "latency_p99_ms": float(np.percentile(latency, 99)),
        "parameters": int(candidate.parameters),
        "size_mb": candidate.size_bytes / 2**20,
    }


def run(cfg: PipelineConfig, prepared: Path, teacher_dir: Path, student_dir: Path, baseline_dir: Path,
        out_dir: Path) -> EvaluateResult:
    """Score every candidate on the gold test set; write metrics, predictions, plots and a report."""
    ev = cfg.evaluate
    test = data_stage.read_split(prepared, "gold_test")
    texts = test["text"].tolist()
    rng = np.random.default_rng(cfg.seed)
    timed = [texts[i] for i in rng.choice(len(texts), size=ev.latency_samples, replace=True)]
    metrics, probs_by_name = {}, {}
    predictions = pd.DataFrame({"text": texts, "label": test["label"]})
    teacher_probs, gold = None, None
    for candidate in load_candidates(teacher_dir, student_dir, baseline_dir):
        if gold is None:
            gold = test["label"].map({label: i for i, label in enumerate(candidate.clf.labels)}).to_numpy()
        probs = softmax(predict_logits(candidate.clf, texts, ev.batch_size, cfg.train.max_length,
                                       progress=f"evaluating {candidate.name}"))
        teacher_probs = probs if teacher_probs is None else teacher_probs
        latency = batch1_latency_ms(candidate.clf, timed, cfg.train.max_length, ev.warmup, ev.threads)
        figures = score(candidate, gold, teacher_probs, probs, latency)
        figures |= bootstrap_ci(gold, probs.argmax(axis=1), probs.shape[1], ev.bootstrap_samples, cfg.seed)
        figures["throughput_per_s"] = throughput(candidate.clf, texts, ev.throughput_batch_size,
                                                 cfg.train.max_length, ev.threads)
        metrics[candidate.name] = figures
        probs_by_name[candidate.name] = probs
        predictions[candidate.name] = [candidate.clf.labels[i] for i in probs.argmax(axis=1)]
        predictions[f"{candidate.name}_confidence"] = probs.max(axis=1)
    student_pred = probs_by_name["student"].argmax(axis=1)
    for other in ("baseline", "teacher"):
        metrics["student"][f"mcnemar_p_vs_{other}"] = mcnemar_p(gold, student_pred, probs_by_name[other].argmax(axis=1))
    teacher_card = read_card(teacher_dir)
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / "metrics.json", metrics)
        predictions.to_parquet(tmp / "predictions.parquet", index=False)
        plots.pareto_chart(metrics, tmp / "pareto.png")
        plots.reliability_diagrams(probs_by_name, gold, tmp / "reliability.png")
        write_report(tmp / "report.html", metrics, teacher_card, [tmp / "pareto.png", tmp / "reliability.png"])
    return EvaluateResult(out_dir, metrics)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def write_report(path: Path, metrics: dict, teacher_card: dict, images: list[Path]) -> None:
    """A self-contained HTML page: every figure as a table, the plots inlined."""
    import base64

    table = pd.DataFrame(metrics).T
    table["speedup_vs_teacher"] = metrics["teacher"]["latency_p50_ms"] / table["latency_p50_ms"]
    pictures = "".join(
        f"<img alt='{p.stem}' src='data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}'/>"
        for p in images)
    html = (f"<html><head><meta charset='utf-8'><title>distill evaluation</title></head><body>"
            f"<h1>Evaluation on the gold test set</h1><p>Teacher {teacher_card['fingerprint'][:12]} "
            f"({teacher_card.get('source')})</p>{table.to_html(float_format=lambda v: f'{v:.4g}')}"
            f"{pictures}</body></html>")
    path.write_text(html)
