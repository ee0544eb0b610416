"""The evaluate stage: one harness for teacher, student and compressed student (each fp32 and INT8) and baseline.

One long module on purpose: the harness is the point, every candidate goes through the same code.

Every candidate goes through the same code path: predictions on the gold test set, task metrics
(per class too), calibration, agreement with the teacher, cost (latency, throughput, memory, size)
and the failure cases. Outputs, all under the stage's folder:

- ``headline.json``: a handful of figures per candidate, the ones DVC compares (DVC metrics);
- ``metrics.json``: every scalar figure per candidate, ratios to the teacher included (git-tracked);
- ``per_class.json``: precision / recall / F1 / support per class and candidate (a report);
- ``details.json``: confusion matrices, most confused pairs, student/teacher disagreements,
  wrong-and-confident teacher answers and the worst slices;
- ``pareto.csv`` and ``confusion_student.csv``: DVC plots (``dvc plots diff``);
- ``report.html``: every table and plot in one self-contained page.
"""

from __future__ import annotations

import gc
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from distill import data as data_stage
from distill import plots
from distill.config import PipelineConfig
from distill.io import atomic_dir, write_json
from distill.lengths import with_teacher_lengths
from distill.models import Classifier, ModelError, encode, load_classifier, predict_logits, read_card
from distill.runtime import OnnxClassifier, Runtime, eager_model, quantized_classifier, with_runtime

log = logging.getLogger("distill")

# candidate -> (the model folder it comes from, quantized to INT8)
SOURCES = {"teacher": ("teacher", False), "teacher_int8": ("teacher", True), "student": ("student", False),
           "student_int8": ("student", True), "compressed": ("compressed", False),
           "compressed_int8": ("compressed", True), "baseline": ("baseline", False)}
OPTIONAL = ("compressed",)  # a role whose stage may be switched off: its candidates are then left out
# The few figures per candidate that DVC compares (`dvc metrics diff`, `dvc exp show`): headline.json.
# Every figure stays in metrics.json (git-tracked, a report) and report.html.
HEADLINE = {"teacher": ("accuracy", "latency_p50_ms"), "teacher_int8": ("accuracy", "latency_p50_ms"),
            "student": ("accuracy", "teacher_share", "macro_f1", "latency_p50_ms", "speedup_vs_teacher", "size_mb"),
            "student_int8": ("accuracy", "teacher_share", "latency_p50_ms", "speedup_vs_teacher"),
            "compressed": ("accuracy", "latency_p50_ms"),
            "compressed_int8": ("accuracy", "latency_p50_ms"),
            "baseline": ("accuracy", "teacher_share")}
RATIOS = {"latency_p50_ms": "latency_ratio_to_teacher", "size_mb": "size_ratio_to_teacher",
          "parameters": "parameters_ratio_to_teacher", "peak_memory_mb": "memory_ratio_to_teacher",
          "throughput_per_s": "throughput_ratio_to_teacher"}


@dataclass
class Candidate:
    name: str
    clf: Classifier
    size_bytes: int
    parameters: int  # quantization packs weights but does not remove any: counted before packing
    quantized: bool = False
    folder: Path | None = None  # where its weights (and their ONNX export) live


@dataclass
class EvaluateResult:
    out_dir: Path
    metrics: dict[str, dict[str, float]]


def folder_size(folder: Path) -> int:
    """Bytes of the weight files in a model folder."""
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))


def state_size(model: torch.nn.Module) -> int:
    """Bytes of a serialized state dict (an eager model's weights in memory)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def load_candidates(folders: dict[str, Path | None], names: list[str], runtime: Runtime = "eager",
                    texts: list[str] | None = None, max_length: int = 64, threads: int = 1) -> list[Candidate]:
    """The models ``names`` asks for, in that order, from the teacher / student / baseline folders, each
    in ``runtime`` (ONNX Runtime runs the folder's checked export, or one made now); INT8 candidates are
    ONNX Runtime's dynamic quantization of the export."""
    out = []
    for name in names:
        role, quantized = SOURCES[name]
        folder = folders.get(role)
        if role in OPTIONAL and (folder is None or not read_card(folder).get("enabled", True)):
            log.info("%s is not evaluated: its stage is switched off (or no folder was given)", name)
            continue
        if folder is None:
            raise ModelError(f"evaluate.candidates asks for {name!r} but no {role} model folder was given")
        clf = load_classifier(folder)
        if quantized:
            served, size = quantized_classifier(clf, folder, threads, texts or [], max_length)
            out.append(Candidate(name, served, size, clf.num_parameters, quantized=True, folder=folder))
        else:
            out.append(with_runtime_candidate(Candidate(name, clf, folder_size(folder), clf.num_parameters,
                                                        folder=folder), runtime, texts or [], max_length, threads))
    return out


def with_runtime_candidate(candidate: Candidate, runtime: Runtime, texts: list[str], max_length: int,
                           threads: int = 1) -> Candidate:
    """The candidate served in ``runtime``; sizes and parameter counts stay those of its weights."""
    if runtime == "eager":
        return candidate
    clf = with_runtime(candidate.clf, runtime, texts, max_length, candidate.folder, threads)
    return Candidate(candidate.name, clf, candidate.size_bytes, candidate.parameters, candidate.quantized,
                     candidate.folder)


def expected_calibration_error(probs: np.ndarray, gold: np.ndarray, bins: int = 15) -> float:
    """ECE: the confidence-weighted gap between confidence and accuracy over equal-width bins."""
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == gold
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    gaps = [abs(correct[which == b].mean() - confidence[which == b].mean()) * (which == b).mean()
            for b in range(bins) if (which == b).any()]
    return float(sum(gaps))


def bootstrap_ci(gold: np.ndarray, pred: np.ndarray, n_classes: int, samples: int, seed: int) -> dict[str, float]:
    """95 % percentile-bootstrap intervals of accuracy and macro-F1.

    Each resample's figures are what ``accuracy_score`` and ``f1_score(average="macro", labels=range(n_classes),
    zero_division=0)`` give on it (tested), computed for blocks of resamples at once from per-class counts:
    the scikit-learn calls cost ~4 ms per resample, most of an evaluation's time at 1,000 resamples.
    """
    rng = np.random.default_rng(seed)
    gold, pred = np.asarray(gold, np.int64), np.asarray(pred, np.int64)
    n = len(gold)
    acc, f1 = np.empty(samples), np.empty(samples)
    block = max(1, 4_000_000 // max(n, 1))  # resamples per block: at most ~4M drawn indices in memory
    for start in range(0, samples, block):
        count = min(block, samples - start)
        idx = rng.integers(0, n, (count, n))  # row by row the same draws as one call per resample
        g, p = gold[idx], pred[idx]
        hit = g == p
        row = np.arange(count)[:, None] * n_classes
        tp = np.bincount((row + g)[hit], minlength=count * n_classes).reshape(count, n_classes)
        support = np.bincount((row + g).ravel(), minlength=count * n_classes).reshape(count, n_classes)
        predicted = np.bincount((row + p).ravel(), minlength=count * n_classes).reshape(count, n_classes)
        denominator = support + predicted  # 2 tp + fp + fn
        per_class = np.divide(2 * tp, denominator, out=np.zeros((count, n_classes)), where=denominator > 0)
        acc[start:start + count] = hit.mean(1)
        f1[start:start + count] = per_class.mean(1)
    return {"accuracy_ci_low": float(np.percentile(acc, 2.5)), "accuracy_ci_high": float(np.percentile(acc, 97.5)),
            "macro_f1_ci_low": float(np.percentile(f1, 2.5)), "macro_f1_ci_high": float(np.percentile(f1, 97.5))}


def mcnemar_p(gold: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray) -> float:
    """Exact McNemar test: p-value that A and B err equally often, from their discordant pairs."""
    from scipy.stats import binomtest

    a_only = int(((pred_a == gold) & (pred_b != gold)).sum())
    b_only = int(((pred_a != gold) & (pred_b == gold)).sum())
    return 1.0 if a_only + b_only == 0 else float(binomtest(a_only, a_only + b_only, 0.5).pvalue)


def per_class(gold: np.ndarray, pred: np.ndarray, labels: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support of every class (scikit-learn)."""
    p, r, f, s = precision_recall_fscore_support(gold, pred, labels=range(len(labels)), zero_division=0)
    return {label: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, label in enumerate(labels)}


@torch.inference_mode()
def request_block_ms(clf: Classifier, texts: list[str], max_length: int) -> np.ndarray:
    """Latency of each batch-1 request (tokenize + forward) in ms, on the model's current device."""
    device = next(clf.model.parameters(), torch.empty(0)).device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    timings = []
    for text in texts:
        sync()
        start = time.perf_counter()
        clf.model(**{k: v.to(device) for k, v in encode(clf.tokenizer, [text], max_length).items()})
        sync()  # CUDA kernels run asynchronously: stop the clock when they are done
        timings.append((time.perf_counter() - start) * 1000)
    return np.array(timings)


def measure_latency(candidates: list[Candidate], texts: list[str], max_length: int, warmup: int, threads: int,
                    rounds: int) -> dict[str, dict[str, float]]:
    """Batch-1 latency percentiles on CPU, stable across runs.

    One fixed thread count; a warm-up per model; then ``rounds`` rounds in which every model times
    the same requests in turn (the order rotates). Each percentile is the median over rounds, so a
    burst of load from another process spoils one round of every model, not all of one model's.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside a timed request is noise, not the model's cost
    per_round: dict[str, list[np.ndarray]] = {c.name: [] for c in candidates}
    try:
        for c in candidates:
            c.clf.model.to("cpu").eval()
            request_block_ms(c.clf, texts[:warmup], max_length)
        for r in range(rounds):
            for c in candidates[r % len(candidates):] + candidates[:r % len(candidates)]:
                per_round[c.name].append(np.percentile(request_block_ms(c.clf, texts, max_length), [50, 95, 99]))
    finally:
        torch.set_num_threads(previous)
        if gc_was_enabled:
            gc.enable()
    out = {}
    for name, blocks in per_round.items():
        blocks = np.array(blocks)  # (rounds, 3)
        p50, p95, p99 = np.median(blocks, axis=0)
        out[name] = {"latency_p50_ms": float(p50), "latency_p95_ms": float(p95), "latency_p99_ms": float(p99),
                     "latency_p50_spread": float((blocks[:, 0].max() - blocks[:, 0].min()) / max(p50, 1e-9))}
    return out


@torch.inference_mode()
def gpu_latency(candidate: Candidate, texts: list[str], max_length: int, warmup: int) -> dict[str, float]:
    """Batch-1 latency and peak memory on CUDA (synchronized); {} without CUDA or for CPU-only INT8 models."""
    if not torch.cuda.is_available() or candidate.quantized:
        return {}
    model = eager_model(candidate.clf.model).to("cuda")  # ONNX Runtime serves on CPU here: time the eager model
    clf = Classifier(model, candidate.clf.tokenizer, candidate.clf.labels)
    try:
        request_block_ms(clf, texts[:max(warmup, 1)], max_length)
        torch.cuda.reset_peak_memory_stats()
        timings = request_block_ms(clf, texts, max_length)
        peak = torch.cuda.max_memory_allocated() / 2**20
    finally:
        model.to("cpu")
        torch.cuda.empty_cache()
    return {"gpu_latency_p50_ms": float(np.percentile(timings, 50)),
            "gpu_latency_p95_ms": float(np.percentile(timings, 95)), "gpu_peak_memory_mb": float(peak)}


@torch.inference_mode()
def peak_memory(clf: Classifier, texts: list[str], max_length: int) -> dict[str, float]:
    """Peak inference memory on CPU for one batch of ``texts``: the weights plus the activation peak.

    The activation peak comes from torch.profiler's memory events (allocations and frees of every op,
    replayed in time order), which counts tensors only: the allocator's cached pages and the Python
    process are left out, so the figure does not depend on what ran before.
    """
    from torch.profiler import ProfilerActivity, profile

    served = clf.model
    weights = served.size_bytes if isinstance(served, OnnxClassifier) else state_size(served)
    batch = encode(clf.tokenizer, texts, max_length)
    model = eager_model(served).to("cpu").eval()  # activations as torch allocates them (ONNX Runtime's are its own)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model(**batch)
    events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage)
    activations = max(0.0, float(np.cumsum([b for _, b in events]).max())) if events else 0.0
    return {"weights_memory_mb": weights / 2**20, "activation_memory_mb": activations / 2**20,
            "peak_memory_mb": (weights + activations) / 2**20}


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


def score(candidate: Candidate, gold: np.ndarray, teacher_probs: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Task, calibration and agreement figures of one candidate, with its parameters and size."""
    pred, n_classes = probs.argmax(axis=1), probs.shape[1]
    kl = (teacher_probs * (np.log(teacher_probs + 1e-12) - np.log(probs + 1e-12))).sum(axis=1).mean()
    return {
        "accuracy": float(accuracy_score(gold, pred)),
        "macro_f1": float(f1_score(gold, pred, average="macro", labels=range(n_classes), zero_division=0)),
        "weighted_f1": float(f1_score(gold, pred, average="weighted", labels=range(n_classes), zero_division=0)),
        "ece": expected_calibration_error(probs, gold),
        "agreement_with_teacher": float((pred == teacher_probs.argmax(axis=1)).mean()),
        "kl_to_teacher": float(kl),
        "parameters": int(candidate.parameters),
        "size_mb": candidate.size_bytes / 2**20,
    }


def add_ratios(metrics: dict[str, dict[str, float]]) -> None:
    """Each candidate's accuracy (``teacher_share``), latency, size, parameters, memory and throughput as a
    ratio to the teacher's."""
    teacher = metrics["teacher"]
    for figures in metrics.values():
        figures["teacher_share"] = float(figures["accuracy"] / teacher["accuracy"]) if teacher["accuracy"] else 0.0
        for key, ratio in RATIOS.items():
            figures[ratio] = float(figures[key] / teacher[key]) if teacher.get(key) else float("nan")
        figures["speedup_vs_teacher"] = float(teacher["latency_p50_ms"] / figures["latency_p50_ms"])


def confused_pairs(matrix: np.ndarray, labels: list[str], top: int) -> list[dict]:
    """The largest off-diagonal cells: (true, predicted, count, share of the true class)."""
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    cells = [(int(off[i, j]), i, j) for i, j in zip(*np.nonzero(off))]
    return [{"true": labels[i], "predicted": labels[j], "count": n, "share_of_true": n / max(int(matrix[i].sum()), 1)}
            for n, i, j in sorted(cells, reverse=True)[:top]]


def failure_modes(predictions: pd.DataFrame, probs: dict[str, np.ndarray], gold: np.ndarray, labels: list[str],
                  cfg: PipelineConfig) -> dict:
    """Disagreements with the teacher, the teacher's confident mistakes, the worst slices."""
    from distill.audit import slice_table

    ev, out = cfg.evaluate, {}
    teacher_pred, teacher_conf = probs["teacher"].argmax(axis=1), probs["teacher"].max(axis=1)
    columns = ["text", "label"] + [c for c in ("teacher", "student", "baseline") if c in predictions]
    if "student" in probs:
        student_pred = probs["student"].argmax(axis=1)
        differ = np.flatnonzero(student_pred != teacher_pred)
        differ = differ[np.argsort(-probs["student"].max(axis=1)[differ], kind="stable")][:ev.failure_examples]
        out["student_teacher_disagreements"] = predictions.iloc[differ][columns].assign(
            student_confidence=probs["student"].max(axis=1)[differ]).to_dict("records")
        table = slice_table(predictions, cfg.audit, cfg.data.slice_columns)
        sized = table[table["n"] >= cfg.audit.min_slice_size].sort_values("student_accuracy")
        out["worst_slices"] = sized.head(ev.failure_examples).to_dict("records")
    wrong = np.flatnonzero((teacher_pred != gold) & (teacher_conf >= ev.confident))
    wrong = wrong[np.argsort(-teacher_conf[wrong], kind="stable")][:ev.failure_examples]
    rows = predictions.iloc[wrong][columns].assign(teacher_confidence=teacher_conf[wrong])
    if "student" in probs:
        rows["student_copied"] = probs["student"].argmax(axis=1)[wrong] == teacher_pred[wrong]
    out["teacher_wrong_confident"] = rows.to_dict("records")
    out["teacher_wrong_confident_count"] = int(((teacher_pred != gold) & (teacher_conf >= ev.confident)).sum())
    return out


def run(cfg: PipelineConfig, prepared: Path, teacher_dir: Path, student_dir: Path | None, baseline_dir: Path | None,
        out_dir: Path, compressed_dir: Path | None = None) -> EvaluateResult:
    """Score every candidate on the gold test set; write metrics, predictions, plots and a report."""
    test = data_stage.read_split(prepared, "gold_test")
    folders = {"teacher": teacher_dir, "student": student_dir, "baseline": baseline_dir, "compressed": compressed_dir}
    result = evaluate_frame(cfg, test, folders)
    with atomic_dir(out_dir) as tmp:
        write_outputs(tmp, result, read_card(teacher_dir))
    return EvaluateResult(out_dir, result["metrics"])


def evaluate_frame(cfg: PipelineConfig, test: pd.DataFrame, folders: dict[str, Path | None]) -> dict:
    """Every figure of the configured candidates on a labelled frame (``text``, ``label``, slice columns)."""
    cfg = with_teacher_lengths(cfg, folders.get("teacher"))
    texts = test["text"].astype(str).tolist()
    return score_candidates(cfg, test, load_candidates(folders, cfg.evaluate.candidates, cfg.evaluate.runtime,
                                                       texts, cfg.train.max_length, cfg.evaluate.threads))


def score_candidates(cfg: PipelineConfig, test: pd.DataFrame, candidates: list[Candidate]) -> dict:
    """Every figure of ``candidates`` (the teacher first) on a labelled frame."""
    ev = cfg.evaluate
    texts = test["text"].astype(str).tolist()
    rng = np.random.default_rng(cfg.seed)
    timed = [texts[i] for i in rng.choice(len(texts), size=ev.latency_samples, replace=True)]
    labels = candidates[0].clf.labels
    if candidates[0].name != "teacher":
        raise ValueError("the teacher must be the first candidate: the others are scored against it")
    for c in candidates:
        if list(c.clf.labels) != list(labels):
            raise ModelError(f"{c.name}: its labels differ from the teacher's (same label set, same order needed)")
    gold = test["label"].astype(str).map({label: i for i, label in enumerate(labels)})
    if gold.isna().any():
        raise ModelError(f"labels {sorted(set(test['label'][gold.isna()].astype(str)))[:5]} of the test set are "
                         "unknown to the teacher")
    gold = gold.to_numpy(dtype=int)
    keep = [c for c in (*cfg.data.slice_columns, "language") if c in test.columns]
    predictions = pd.DataFrame({"text": texts, "label": test["label"].astype(str).to_numpy()})
    for column in keep:
        predictions[column] = test[column].to_numpy()
    metrics, probs, matrices, classes = {}, {}, {}, {}
    for c in candidates:
        probs[c.name] = softmax(predict_logits(c.clf, texts, ev.batch_size, cfg.train.max_length,
                                               progress=f"evaluating {c.name}"))
        pred = probs[c.name].argmax(axis=1)
        metrics[c.name] = score(c, gold, probs["teacher"], probs[c.name])
        metrics[c.name] |= bootstrap_ci(gold, pred, len(labels), ev.bootstrap_samples, cfg.seed)
        metrics[c.name]["throughput_per_s"] = throughput(c.clf, texts, ev.throughput_batch_size, cfg.train.max_length,
                                                         ev.threads)
        metrics[c.name] |= peak_memory(c.clf, texts[:ev.throughput_batch_size], cfg.train.max_length)
        metrics[c.name] |= gpu_latency(c, timed, cfg.train.max_length, ev.warmup)
        classes[c.name] = per_class(gold, pred, labels)
        matrices[c.name] = confusion_matrix(gold, pred, labels=range(len(labels)))
        predictions[c.name] = [labels[i] for i in pred]
        predictions[f"{c.name}_confidence"] = probs[c.name].max(axis=1)
    latency = measure_latency(candidates, timed, cfg.train.max_length, ev.warmup, ev.threads, ev.latency_rounds)
    for name in metrics:
        metrics[name] |= latency[name]
    add_ratios(metrics)
    if "student" in probs:
        for other in ("baseline", "teacher"):
            if other in probs:
                metrics["student"][f"mcnemar_p_vs_{other}"] = mcnemar_p(gold, probs["student"].argmax(axis=1),
                                                                        probs[other].argmax(axis=1))
    runtimes = {c.name: ("onnxruntime" if isinstance(c.clf.model, OnnxClassifier) else "eager")
                for c in candidates}
    details = {"labels": labels, "confusion": {n: m.tolist() for n, m in matrices.items()},
               "serving": {"runtime": runtimes, "threads": ev.threads},
               "confused_pairs": {n: confused_pairs(m, labels, ev.failure_examples) for n, m in matrices.items()}}
    details |= failure_modes(predictions, probs, gold, labels, cfg)
    return {"metrics": metrics, "per_class": classes, "details": details, "predictions": predictions,
            "probs": probs, "gold": gold, "matrices": matrices, "labels": labels}


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def write_outputs(folder: Path, result: dict, teacher_card: dict) -> None:
    """metrics / per-class / details JSON, predictions, DVC plot data, PNG plots and the HTML report."""
    metrics, predictions = result["metrics"], result["predictions"]
    write_json(folder / "metrics.json", metrics)
    write_json(folder / "headline.json", {name: {key: metrics[name][key] for key in HEADLINE.get(name, ())}
                                          for name in metrics if name in HEADLINE})
    write_json(folder / "per_class.json", result["per_class"])
    write_json(folder / "details.json", result["details"])
    predictions.to_parquet(folder / "predictions.parquet", index=False)
    pd.DataFrame([{"candidate": n, "latency_p50_ms": m["latency_p50_ms"], "accuracy": m["accuracy"],
                   "macro_f1": m["macro_f1"], "size_mb": m["size_mb"]} for n, m in metrics.items()]
                 ).to_csv(folder / "pareto.csv", index=False)
    if "student" in predictions:
        predictions[["label", "student"]].rename(columns={"label": "actual", "student": "predicted"}).to_csv(
            folder / "confusion_student.csv", index=False)
    images = [plots.pareto_chart(metrics, folder / "pareto.png"),
              plots.reliability_diagrams(result["probs"], result["gold"], folder / "reliability.png"),
              plots.confusion_matrices(result["matrices"], result["labels"], folder / "confusion.png")]
    write_report(folder / "report.html", metrics, result["per_class"], result["details"], teacher_card, images)


def write_report(path: Path, metrics: dict, classes: dict, details: dict, teacher_card: dict,
                 images: list[Path]) -> None:
    """A self-contained HTML page: every figure as a table, the plots inlined as base64 PNG."""
    import base64

    def table(frame: pd.DataFrame, index: bool = True) -> str:
        return frame.to_html(index=index, float_format=lambda v: f"{v:.4g}") if len(frame) else "<p>none</p>"

    main = ["accuracy", "accuracy_ci_low", "accuracy_ci_high", "macro_f1", "weighted_f1", "ece",
            "agreement_with_teacher", "kl_to_teacher"]
    cost = ["latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "latency_p50_spread", "throughput_per_s",
            "peak_memory_mb", "activation_memory_mb", "parameters", "size_mb", "speedup_vs_teacher",
            *RATIOS.values()]
    frame = pd.DataFrame(metrics).T
    pictures = "".join(f"<h2>{p.stem}</h2><img alt='{p.stem}' src='data:image/png;base64,"
                       f"{base64.b64encode(p.read_bytes()).decode()}'/>" for p in images)
    focus = "student" if "student" in classes else "teacher"
    per_class = pd.concat({name: pd.DataFrame(c).T[["precision", "recall", "f1"]] for name, c in classes.items()},
                          axis=1)
    pairs = pd.concat({name: pd.DataFrame(p) for name, p in details["confused_pairs"].items() if p},
                      names=["candidate", None]) if any(details["confused_pairs"].values()) else pd.DataFrame()
    sections = [("Task metrics", table(frame[[c for c in main if c in frame]])),
                ("Cost (CPU, batch-1 latency; ratios to the teacher)",
                 "<p>Runtime while timed: " + ", ".join(f"{n}: {r}" for n, r in
                                                       details.get("serving", {}).get("runtime", {}).items())
                 + "</p>" + table(frame[[c for c in cost if c in frame]])),
                ("All figures", table(frame)), ("Per-class precision / recall / F1", table(per_class)),
                ("Most confused class pairs", table(pairs)),
                (f"Worst slices ({focus})", table(pd.DataFrame(details.get("worst_slices", [])), index=False)),
                ("Student disagrees with the teacher",
                 table(pd.DataFrame(details.get("student_teacher_disagreements", [])), index=False)),
                (f"Teacher wrong and confident ({details['teacher_wrong_confident_count']} in all)",
                 table(pd.DataFrame(details["teacher_wrong_confident"]), index=False))]
    body = "".join(f"<h2>{title}</h2>{content}" for title, content in sections)
    path.write_text(
        "<html><head><meta charset='utf-8'><title>distill evaluation</title><style>"
        "img{max-width:100%;height:auto}table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}</style></head>"
        f"<body><h1>Evaluation on the gold test set</h1><p>Teacher {teacher_card['fingerprint'][:12]} "
        f"({teacher_card.get('source')}); {len(metrics)} candidates.</p>{pictures}{body}</body></html>")
