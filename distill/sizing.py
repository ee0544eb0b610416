"""The size_student stage: the student's shape from the deployment budget.

The guide's order: size the student for the latency and memory it must meet, then check what
the capacity gap costs. Every candidate shape (``size.candidates``: layers x width, four
heads per 256 of width and a feed-forward four times as wide) is built from the teacher's
config and timed at batch 1 beside the fp32 and the INT8 teacher, served as the evaluation
serves them (``evaluate.runtime``, ``evaluate.threads``). Those within the budget
(``size.min_speedup`` over the fp32 teacher, ``size.min_speedup_int8`` over the INT8
teacher, ``size.max_size_mb``) are each distilled for ``size.steps`` steps on the
cached teacher outputs and scored on the validation set; the best one is chosen (the faster of
two within ``size.tolerance``). When none fits, the fastest is chosen and the result
says the budget cannot be met.

The vocabulary is the third dimension, for the memory budget: with 30 k tokens the word embeddings
are most of a narrow student's weights. A candidate that is fast enough but over
``size.max_size_mb`` is tried again with the largest of ``size.vocab_sizes`` that brings it under
the budget (a WordPiece vocabulary trained on the distillation texts, its rows started from the
teacher's embeddings of the same tokens), timed and scored like the others.

The choice is written as JSON (``models/student_shape.json`` in dvc.yaml); the student and
baseline stages read it, so both train the chosen shape and DVC reruns them when it changes.
With ``size.search`` off, a ``student.path`` folder or a warm start, the configured (or the
warm start's) shape is written unchanged.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from distill.config import TOKEN_FEATURE_LOSSES, PipelineConfig, SizeConfig
from distill.io import atomic_file
from distill.lengths import with_teacher_lengths
from distill.models import Classifier, load_classifier, read_card, resolve_fetched
from distill.student_init import build_student, shape_of
from distill.students import as_student, distillation_set, fit, settings_for

SHAPE_KEYS = ("num_layers", "hidden_size", "num_heads", "intermediate_size", "vocab_size")


@dataclass
class ShapeScore:
    """One candidate shape: its cost, whether it fits the budget, and its validation score."""

    num_layers: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    vocab_size: int | None  # None: the teacher's tokenizer
    parameters: int
    size_mb: float
    latency_p50_ms: float
    speedup: float
    speedup_int8: float | None
    fits: bool
    slow: bool  # misses a speed-up target (as opposed to only the memory budget)
    misses: list[str] = field(default_factory=list)
    val_accuracy: float | None = None

    @property
    def shape(self) -> dict[str, int | None]:
        return {key: getattr(self, key) for key in SHAPE_KEYS}

    @property
    def name(self) -> str:
        vocabulary = f" (vocabulary {self.vocab_size:,})" if self.vocab_size else ""
        return f"{self.num_layers} x {self.hidden_size}{vocabulary}"


@dataclass
class SizingResult:
    shape: dict[str, int]
    searched: bool
    reason: str
    budget_met: bool | None = None
    teacher_ms: float | None = None
    teacher_int8_ms: float | None = None
    candidates: list[ShapeScore] = field(default_factory=list)


def candidate_shape(layers: int, width: int, vocab_size: int | None = None) -> dict[str, int | None]:
    """A shape of ``layers`` x ``width``: heads of width 64 (at least 2), a feed-forward four times as wide,
    and ``vocab_size`` tokens (None: the teacher's tokenizer)."""
    return {"num_layers": layers, "hidden_size": width, "num_heads": max(2, width // 64),
            "intermediate_size": 4 * width, "vocab_size": vocab_size}


def time_candidates(cfg: PipelineConfig, teacher_dir: Path, teacher: Classifier, shapes: list[dict[str, int]],
                    texts: list[str], vocab_texts: list[str] | None = None,
                    ) -> tuple[dict[str, dict[str, float]], list[int]]:
    """Batch-1 p50 latency of the teacher, the INT8 teacher and a fresh student of every shape, and the
    students' parameter counts. A smaller vocabulary is trained on ``vocab_texts``."""
    from distill.evaluate import Candidate, load_candidates, measure_latency, with_runtime_candidate

    ev, length = cfg.evaluate, cfg.train.max_length
    models = load_candidates({"teacher": teacher_dir}, ["teacher", "teacher_int8"], ev.runtime, texts, length,
                             ev.threads)
    parameters = []
    for i, shape in enumerate(shapes):
        clf = build_student(teacher, as_student(cfg.student, shape), cfg.seed, texts=vocab_texts)
        parameters.append(clf.num_parameters)
        models.append(with_runtime_candidate(Candidate(f"shape{i}", clf, 4 * clf.num_parameters,
                                                       clf.num_parameters), ev.runtime, texts, length, ev.threads))
    return measure_latency(models, texts, length, ev.warmup, ev.threads, ev.latency_rounds), parameters


def score_shape(cfg: PipelineConfig, shape: dict[str, int], teacher: Classifier, data, val) -> float:
    """Validation accuracy after ``size.steps`` distillation steps of a fresh student of ``shape``."""
    steps = cfg.size.steps
    settings = replace(settings_for(cfg, len(data), distilled=True), max_steps=steps, patience=10**6,
                       eval_every=steps)
    _, result, _ = fit(cfg, as_student(cfg.student, shape), teacher, teacher, data, val, settings, "shape search",
                       None)
    return result.best_val_accuracy


def judge(cfg: SizeConfig, shapes: list[dict[str, int]], latency: dict, parameters: list[int]) -> list[ShapeScore]:
    """Each shape's cost against the budget."""
    teacher, teacher_int8 = latency["teacher"]["latency_p50_ms"], latency["teacher_int8"]["latency_p50_ms"]
    out = []
    for i, (shape, params) in enumerate(zip(shapes, parameters)):
        ms = latency[f"shape{i}"]["latency_p50_ms"]
        size_mb, speedup, speedup_int8 = 4 * params / 1e6, teacher / ms, teacher_int8 / ms
        misses = []
        if speedup < cfg.min_speedup:
            misses.append(f"{speedup:.1f}x the fp32 teacher < {cfg.min_speedup:g}x")
        if speedup_int8 < cfg.min_speedup_int8:
            misses.append(f"{speedup_int8:.1f}x the INT8 teacher < {cfg.min_speedup_int8:g}x")
        slow = bool(misses)
        if cfg.max_size_mb is not None and size_mb > cfg.max_size_mb:
            misses.append(f"{size_mb:.1f} MB > {cfg.max_size_mb:g} MB")
        out.append(ShapeScore(**{"vocab_size": None, **shape}, parameters=params, size_mb=size_mb, latency_p50_ms=ms,
                              speedup=speedup, speedup_int8=speedup_int8, fits=not misses, slow=slow, misses=misses))
    return out


def smaller_vocabularies(cfg: SizeConfig, scores: list[ShapeScore], vocab_size: int) -> list[dict[str, int | None]]:
    """Each candidate fast enough but over ``max_size_mb``, with the largest of ``vocab_sizes`` that would
    bring its fp32 weights under the budget (only the word-embedding rows change: ``vocab_size`` of them
    now, of ``hidden_size`` each)."""
    if cfg.max_size_mb is None:
        return []
    out = []
    for score in scores:
        if score.fits or score.slow:
            continue
        rows = score.vocab_size or vocab_size
        fitting = [v for v in cfg.vocab_sizes
                   if v < rows and 4 * (score.parameters - (rows - v) * score.hidden_size) / 1e6 <= cfg.max_size_mb]
        if fitting:
            out.append(score.shape | {"vocab_size": max(fitting)})
    return out


def choose(scores: list[ShapeScore], tolerance: float) -> ShapeScore:
    """The most accurate fitting shape; of two within ``tolerance``, the faster. No fit: the fastest."""
    fitting = [s for s in scores if s.fits and s.val_accuracy is not None]
    if not fitting:
        return min(scores, key=lambda s: s.latency_p50_ms)
    best = max(s.val_accuracy for s in fitting)
    return min((s for s in fitting if s.val_accuracy >= best - tolerance), key=lambda s: s.latency_p50_ms)


def fixed(cfg: PipelineConfig, teacher: Classifier, imported_dir: Path | None) -> SizingResult | None:
    """The shape when there is nothing to search: search off, a student folder, or a warm start."""
    s = cfg.student
    if s.path:
        return SizingResult({}, False, "student.path gives the student")
    warm = resolve_fetched(s.warm_start, imported_dir, "student.warm_start")
    if warm is not None and (Path(warm) / "config.json").is_file():
        from transformers import AutoConfig

        return SizingResult(shape_of(AutoConfig.from_pretrained(warm)), False,
                            f"continues from the warm start {s.warm_start}")
    if not cfg.size.search:
        shape = shape_of(teacher.model.config) | {k: getattr(s, k) for k in SHAPE_KEYS if getattr(s, k)}
        return SizingResult(shape, False, "size.search is off: the configured student shape")
    return None


def run(cfg: PipelineConfig, prepared: Path, teacher_dir: Path, outputs: Path, out_path: Path,
        imported_dir: Path | None = None) -> SizingResult:
    """Choose the student's shape (see the module docstring) and write it to ``out_path``."""
    cfg = with_teacher_lengths(cfg, teacher_dir)
    card = read_card(teacher_dir)
    teacher = load_classifier(teacher_dir, card["labels"])
    result = fixed(cfg, teacher, imported_dir)
    if result is None:
        result = search(cfg, teacher_dir, teacher, card["fingerprint"], prepared, outputs)
    with atomic_file(out_path) as handle:
        json.dump(asdict(result), handle, indent=2)
    return result


def search(cfg: PipelineConfig, teacher_dir: Path, teacher: Classifier, fingerprint: str, prepared: Path,
           outputs: Path) -> SizingResult:
    """Time every candidate, score those within the budget, choose."""
    from distill.teacher import gold_data

    base_vocab = cfg.student.vocab_size
    shapes = [candidate_shape(layers, width, base_vocab) for layers, width in cfg.size.candidates]
    val = gold_data(prepared, "gold_val", teacher.labels)
    timed = val.texts[:cfg.evaluate.latency_samples]
    data, _ = distillation_set(outputs, fingerprint, teacher.labels)  # read and verified once
    latency, parameters = time_candidates(cfg, teacher_dir, teacher, shapes, timed, data.texts)
    scores = judge(cfg.size, shapes, latency, parameters)
    if not any(term.name in TOKEN_FEATURE_LOSSES for term in cfg.train.losses):  # those need the teacher's tokens
        smaller = smaller_vocabularies(cfg.size, scores, base_vocab or teacher.model.config.vocab_size)
        if smaller:  # timed beside the teachers again, so each speed-up compares one round's timings
            more, more_parameters = time_candidates(cfg, teacher_dir, teacher, smaller, timed, data.texts)
            scores += judge(cfg.size, smaller, more, more_parameters)
    for score in scores:
        if score.fits:
            score.val_accuracy = score_shape(cfg, score.shape, teacher, data, val)
    chosen = choose(scores, cfg.size.tolerance)
    met = chosen.fits
    reason = (f"{chosen.name}: the best validation accuracy ({chosen.val_accuracy:.3f}) within the budget" if met
              else f"no candidate meets the budget ({'; '.join(chosen.misses)} for the fastest, {chosen.name}); "
                   "chose the fastest")
    print(f"student shape: {reason}", flush=True)
    for score in scores:
        accuracy = f"val {score.val_accuracy:.3f}" if score.val_accuracy is not None else "not scored"
        print(f"  {score.name}: {score.latency_p50_ms:.2f} ms, {score.speedup:.1f}x "
              f"fp32 / {score.speedup_int8:.1f}x INT8 teacher, {score.size_mb:.1f} MB, "
              f"{'fits' if score.fits else 'misses: ' + '; '.join(score.misses)}, {accuracy}", flush=True)
    return SizingResult(chosen.shape, True, reason, met, latency["teacher"]["latency_p50_ms"],
                        latency["teacher_int8"]["latency_p50_ms"], scores)
