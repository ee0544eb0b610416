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
from distill.quantize import quantize_dynamic_int8


@dataclass
class Candidate:
    name: str
    clf: Classifier
    size_bytes: int


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
    """Every model the harness compares."""
    teacher = load_classifier(teacher_dir)
    teacher_int8 = Classifier(quantize_dynamic_int8(load_classifier(teacher_dir).model), teacher.tokenizer,
                              teacher.labels)
    return [
        Candidate("teacher", teacher, folder_size(teacher_dir)),
        Candidate("teacher_int8", teacher_int8, state_size(teacher_int8.model)),
        Candidate("student", load_classifier(student_dir), folder_size(student_dir)),
        Candidate("baseline", load_classifier(baseline_dir), folder_size(baseline_dir)),
    ]


def score(candidate: Candidate, test: pd.DataFrame, teacher_pred: np.ndarray | None, logits: np.ndarray,
          latency: np.ndarray) -> dict[str, float]:
    """Task and cost figures of one candidate."""
    labels = candidate.clf.labels
    gold = test["label"].map({label: i for i, label in enumerate(labels)}).to_numpy()
    pred = logits.argmax(axis=1)
    return {
        "accuracy": float(accuracy_score(gold, pred)),
        "macro_f1": float(f1_score(gold, pred, average="macro", labels=range(len(labels)), zero_division=0)),
        "agreement_with_teacher": float((pred == teacher_pred).mean()) if teacher_pred is not None else 1.0,
        "latency_p50_ms": float(np.percentile(latency, 50)),
        "latency_p95_ms": float(np.percentile(latency, 95)),
        "parameters": int(candidate.clf.num_parameters),
        "size_mb": candidate.size_bytes / 2**20,
    }


def run(cfg: PipelineConfig, prepared: Path, teacher_dir: Path, student_dir: Path, baseline_dir: Path,
        out_dir: Path) -> EvaluateResult:
    """Score every candidate on the gold test set; write metrics, predictions and a report."""
    test = data_stage.read_split(prepared, "gold_test")
    texts = test["text"].tolist()
    rng = np.random.default_rng(cfg.seed)
    timed = [texts[i] for i in rng.choice(len(texts), size=cfg.evaluate.latency_samples, replace=True)]
    metrics, predictions, teacher_pred = {}, pd.DataFrame({"text": texts, "label": test["label"]}), None
    for candidate in load_candidates(teacher_dir, student_dir, baseline_dir):
        logits = predict_logits(candidate.clf, texts, cfg.evaluate.batch_size, cfg.train.max_length,
                                progress=f"evaluating {candidate.name}")
        latency = batch1_latency_ms(candidate.clf, timed, cfg.train.max_length, cfg.evaluate.warmup,
                                    cfg.evaluate.threads)
        if teacher_pred is None:
            teacher_pred = logits.argmax(axis=1)
        metrics[candidate.name] = score(candidate, test, teacher_pred, logits, latency)
        predictions[candidate.name] = [candidate.clf.labels[i] for i in logits.argmax(axis=1)]
        predictions[f"{candidate.name}_confidence"] = softmax(logits).max(axis=1)
    teacher_card = read_card(teacher_dir)
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / "metrics.json", metrics)
        predictions.to_parquet(tmp / "predictions.parquet", index=False)
        write_report(tmp / "report.html", metrics, teacher_card)
    return EvaluateResult(out_dir, metrics)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def write_report(path: Path, metrics: dict, teacher_card: dict) -> None:
    """A small self-contained HTML table of every figure."""
    table = pd.DataFrame(metrics).T
    table["speedup_vs_teacher"] = metrics["teacher"]["latency_p50_ms"] / table["latency_p50_ms"]
    html = (f"<html><head><meta charset='utf-8'><title>distill evaluation</title></head><body>"
            f"<h1>Evaluation on the gold test set</h1><p>Teacher {teacher_card['fingerprint'][:12]} "
            f"({teacher_card.get('source')})</p>{table.to_html(float_format=lambda v: f'{v:.4g}')}</body></html>")
    path.write_text(html)
