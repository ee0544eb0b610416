"""The audit stage: inherited bias and robustness of the student, slice by slice.

Three kinds of finding, each gated by a limit and a significance test:

- **drop**: a slice where the student is worse than the teacher by more than ``max_slice_drop``;
- **poor**: a slice where teacher and student are both below ``poor_slice_accuracy`` (the teacher's
  bias passed on; the baseline student, trained without the teacher, tells whether it was inherited);
- **flip**: a counterfactual swap (he -> she, one name for another) or a robustness edit (typo,
  casing, punctuation) that changes the student's prediction more often than the teacher's, by more
  than ``max_flip_increase``.

Models enter as predict functions (texts -> probabilities), so tests can audit a three-line fake.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from distill import perturb
from distill.config import AuditConfig, PipelineConfig
from distill.io import atomic_dir, write_json

Predictor = Callable[[list[str]], np.ndarray]  # texts -> class probabilities (N, K)
MODELS = ("teacher", "student", "baseline")
MAX_LISTED = 12  # non-gating findings listed in the reasons; audit.json keeps them all


@dataclass
class AuditReport:
    passed: bool
    reasons: list[str]
    slices: list[dict] = field(default_factory=list)
    worst: list[dict] = field(default_factory=list)
    flips: list[dict] = field(default_factory=list)
    flip_examples: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    compressed: dict | None = None  # the compressed student's own audit (passed, reasons, worst), when evaluated
    compressed_int8: dict | None = None  # ... and its INT8 model's, as that model answers

    def to_dict(self) -> dict:
        return asdict(self)


def classifier_predictor(clf, batch_size: int, max_length: int) -> Predictor:
    """A predict function over a loaded ``Classifier`` (CPU, batched)."""
    from distill.models import predict_logits

    def predict(texts: list[str]) -> np.ndarray:
        logits = predict_logits(clf, list(texts), batch_size, max_length)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)

    return predict


def length_bucket(texts: pd.Series, edges: list[int]) -> pd.Series:
    """Word-count bucket names such as '<=4 words', '5-8 words', '>8 words'."""
    words = texts.str.split().str.len()
    names, low = [], 0
    for edge in edges:
        names.append(f"{low + 1}-{edge} words" if low else f"<={edge} words")
        low = edge
    names.append(f">{low} words")
    return pd.Series(pd.cut(words, [-np.inf, *edges, np.inf], labels=names), index=texts.index).astype(str)


def slice_masks(frame: pd.DataFrame, cfg: AuditConfig, slice_columns: Sequence[str] = ()) -> list[tuple[str, np.ndarray]]:
    """(name, boolean mask) of every slice: label, length, language, term presence, data columns."""
    texts = frame["text"].astype(str)
    keyed = {"label": frame["label"].astype(str), "length": length_bucket(texts, cfg.length_buckets)}
    if "language" in frame.columns:
        keyed["language"] = frame["language"].astype(str)
    for column in slice_columns:
        if column in frame.columns and column not in keyed:
            keyed[column] = frame[column].astype(str)
    masks = []
    for kind, values in keyed.items():
        for value in values.value_counts().index[:50].sort_values():  # a column of ids is not 10k slices
            masks.append((f"{kind}={value}", (values == value).to_numpy()))
    for group, terms in cfg.term_lists.items():
        present = texts.str.contains(perturb.term_pattern(terms), regex=True).to_numpy()
        if present.any():
            masks.append((f"{group}=present", present))
    return masks


def worse_p_value(teacher_right: np.ndarray, model_right: np.ndarray) -> float:
    """One-sided exact McNemar test: how likely is a drop this large if the model were no worse?

    Only the discordant examples count: those the teacher gets right and the model
    wrong, against the reverse.
    """
    from scipy.stats import binomtest

    lost = int((teacher_right & ~model_right).sum())
    won = int((~teacher_right & model_right).sum())
    return 1.0 if lost + won == 0 else float(binomtest(lost, lost + won, 0.5, alternative="greater").pvalue)


def below_p_value(right: np.ndarray, floor: float) -> float:
    """One-sided exact binomial test: how likely is an accuracy this low if the true one were ``floor``?"""
    from scipy.stats import binomtest

    if floor <= 0:
        return 1.0
    return float(binomtest(int(right.sum()), len(right), floor, alternative="less").pvalue)


def slice_table(predictions: pd.DataFrame, cfg: AuditConfig, slice_columns: Sequence[str] = ()) -> pd.DataFrame:
    """Accuracy of teacher, student (and baseline) on every slice, with the tests of the gates."""
    models = [m for m in MODELS if m in predictions.columns]
    right = {m: (predictions[m].astype(str) == predictions["label"].astype(str)).to_numpy() for m in models}
    rows = []
    for name, mask in slice_masks(predictions, cfg, slice_columns):
        row = {"slice": name, "n": int(mask.sum())}
        row |= {f"{m}_accuracy": float(right[m][mask].mean()) for m in models}
        row["drop"] = row["teacher_accuracy"] - row["student_accuracy"]
        row["p_value"] = worse_p_value(right["teacher"][mask], right["student"][mask])
        row["p_poor"] = below_p_value(right["student"][mask], cfg.poor_slice_accuracy)
        if "baseline" in models:
            row["student_minus_baseline"] = row["student_accuracy"] - row["baseline_accuracy"]
        rows.append(row)
    return pd.DataFrame(rows)


def flip_tests(texts: list[str], predictors: dict[str, Predictor], cfg: AuditConfig, seed: int,
               labels: list[str] | None = None) -> tuple[pd.DataFrame, list[dict]]:
    """Flip rate of every model under every counterfactual group and perturbation.

    Returns one row per test (n variants, each model's flip rate, the student's increase over the
    teacher and its one-sided McNemar p-value) and up to three student flips per test as examples.
    """
    tests: list[tuple[str, list[int], list[str]]] = []
    for group, members in cfg.counterfactual_groups.items():
        pairs = perturb.counterfactuals(texts, members, seed)
        tests.append((f"counterfactual:{group}", [p[0] for p in pairs], [p[1] for p in pairs]))
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(texts), min(cfg.max_perturbed, len(texts)), replace=False))
    for name in cfg.perturbations:
        variants = perturb.perturb([texts[i] for i in sample], name, seed)
        tests.append((f"perturbation:{name}", [int(sample[i]) for i, _ in variants], [v for _, v in variants]))
    every_variant = [v for _, _, variants in tests for v in variants]
    base, varied = {}, {}
    for model, predict in predictors.items():  # one call per model over all variants: big batches
        base[model] = predict(texts).argmax(axis=1)
        varied[model] = predict(every_variant).argmax(axis=1) if every_variant else np.array([], dtype=int)
    name_of = (lambda i: labels[i]) if labels else (lambda i: int(i))
    rows, examples, offset = [], [], 0
    for test, sources, variants in tests:
        n, src = len(variants), np.array(sources, dtype=int)
        flipped = {m: base[m][src] != varied[m][offset:offset + n] for m in predictors}
        row = {"test": test, "n": n} | {f"{m}_flip_rate": float(flipped[m].mean()) if n else 0.0 for m in predictors}
        if "student" in flipped and "teacher" in flipped:
            row["increase"] = row["student_flip_rate"] - row["teacher_flip_rate"]
            # A flip is an error of consistency: the McNemar test of "student flips more" on the pairs.
            row["p_value"] = worse_p_value(~flipped["teacher"], ~flipped["student"])
            for k in np.flatnonzero(flipped["student"])[:3]:
                examples.append({"test": test, "text": texts[src[k]], "variant": variants[k],
                                 "teacher": f"{name_of(base['teacher'][src[k]])} -> "
                                            f"{name_of(varied['teacher'][offset + k])}",
                                 "student": f"{name_of(base['student'][src[k]])} -> "
                                            f"{name_of(varied['student'][offset + k])}"})
        rows.append(row)
        offset += n
    return pd.DataFrame(rows), examples


def gate(rows: pd.DataFrame, over_limit: pd.Series, p_column: str, cfg: AuditConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(failing, over the limit but not significant) rows; Bonferroni over the sized rows."""
    sized = rows[rows["n"] >= cfg.min_slice_size]
    sized = sized.assign(p_adjusted=(sized[p_column] * max(len(sized), 1)).clip(upper=1.0))
    large = sized[over_limit.loc[sized.index]]
    failing = large[large["p_adjusted"] < cfg.significance]
    return failing, large.drop(failing.index)


def audit(predictions: pd.DataFrame, cfg: AuditConfig, predictors: dict[str, Predictor] | None = None,
          slice_columns: Sequence[str] = (), labels: list[str] | None = None, seed: int = 0) -> AuditReport:
    """Audit a student against its teacher (and baseline) on a labelled predictions frame.

    Args:
        predictions: columns ``text``, ``label``, ``teacher``, ``student`` (predicted label names),
            optionally ``baseline``, ``language`` and the ``slice_columns``.
        cfg: limits, slices, counterfactual groups and perturbations.
        predictors: predict functions by model name (``teacher``, ``student``, ``baseline``) for the
            counterfactual and robustness tests; without them those tests are skipped.
        slice_columns: data columns whose values become slices.
        labels: class names in the predictors' output order (for readable flip examples).
        seed: seeds the perturbations.

    Returns:
        The verdict, its reasons and every table behind it.
    """
    missing = [c for c in ("text", "label", "teacher", "student") if c not in predictions.columns]
    if missing:
        raise ValueError(f"the predictions lack columns {missing}; evaluate both teacher and student")
    table = slice_table(predictions, cfg, slice_columns)
    failing, warnings = [], []
    drops, noisy = gate(table, table["drop"] > cfg.max_slice_drop, "p_value", cfg)
    failing += [f"slice {r.slice} (n={r.n}): student accuracy {r.student_accuracy:.3f} is {r.drop:.3f} below the "
                f"teacher's {r.teacher_accuracy:.3f} (limit {cfg.max_slice_drop}, adjusted p={r.p_adjusted:.2g})"
                for r in drops.itertuples()]
    warnings += [f"slice {r.slice} (n={r.n}) drops {r.drop:.3f}, above the limit but not significant "
                 f"(adjusted p={r.p_adjusted:.2g} >= {cfg.significance}): reported, not gating" for r in noisy.itertuples()]
    both_poor = (table["teacher_accuracy"] < cfg.poor_slice_accuracy) & (table["student_accuracy"] < cfg.poor_slice_accuracy)
    poor, unsure = gate(table, both_poor, "p_poor", cfg)
    failing += [f"slice {r.slice} (n={r.n}): teacher {r.teacher_accuracy:.3f} and student {r.student_accuracy:.3f} "
                f"both below {cfg.poor_slice_accuracy} (teacher bias passed on{baseline_note(r)}; "
                f"adjusted p={r.p_adjusted:.2g})" for r in poor.itertuples()]
    warnings += [f"slice {r.slice} (n={r.n}): teacher and student both below {cfg.poor_slice_accuracy}, "
                 f"not significant: reported, not gating" for r in unsure.itertuples()]
    if "student_minus_baseline" in table:
        behind = table[(table["n"] >= cfg.min_slice_size) & (table["student_minus_baseline"] < -cfg.max_slice_drop)]
        warnings += [f"slice {r.slice} (n={r.n}): student {r.student_accuracy:.3f} trails the undistilled baseline "
                     f"{r.baseline_accuracy:.3f}: reported, not gating" for r in behind.itertuples()]
    flips, examples, notes = pd.DataFrame(), [], []
    if predictors and {"teacher", "student"} <= set(predictors):
        flips, examples = flip_tests(predictions["text"].astype(str).tolist(), predictors, cfg, seed, labels)
        flip_failing, flip_noisy = gate(flips, flips["increase"] > cfg.max_flip_increase, "p_value", cfg)
        failing += [f"{r.test} (n={r.n}): student flip rate {r.student_flip_rate:.3f} exceeds the teacher's "
                    f"{r.teacher_flip_rate:.3f} by {r.increase:.3f} (limit {cfg.max_flip_increase}, "
                    f"adjusted p={r.p_adjusted:.2g})" for r in flip_failing.itertuples()]
        warnings += [f"{r.test} (n={r.n}): student flip rate {r.student_flip_rate:.3f} vs teacher "
                     f"{r.teacher_flip_rate:.3f}, over the limit but not significant: reported, not gating"
                     for r in flip_noisy.itertuples()]
        notes += [f"{r.test}: no text holds a term of the group" for r in flips.itertuples() if r.n == 0]
    else:
        notes.append("counterfactual and robustness tests skipped: no teacher and student models given")
    if len(warnings) > MAX_LISTED:
        warnings = warnings[:MAX_LISTED] + [f"... and {len(warnings) - MAX_LISTED} more findings below their gate "
                                            "(see audit.json)"]
    reasons = failing + warnings
    if not failing:
        reasons.append(f"no slice of at least {cfg.min_slice_size} examples drops more than {cfg.max_slice_drop} "
                       f"or is poor for teacher and student (< {cfg.poor_slice_accuracy}), and no flip rate rises "
                       f"more than {cfg.max_flip_increase} (significance {cfg.significance})")
    worst = table.sort_values("drop", ascending=False).head(5)
    return AuditReport(not failing, reasons, table.to_dict("records"), worst.to_dict("records"),
                       flips.to_dict("records"), examples, notes)


def baseline_note(row) -> str:
    """Whether the undistilled baseline escapes a poor slice (then the bias came from the teacher)."""
    accuracy = getattr(row, "baseline_accuracy", None)
    if accuracy is None or pd.isna(accuracy):
        return ""
    verdict = "so the student inherited it" if accuracy >= row.student_accuracy + 0.1 else "as hard for it"
    return f"; baseline {accuracy:.3f}, {verdict}"


def write_report(path: Path, report: AuditReport, chart: Path | None = None) -> None:
    """audit.html: the verdict, its reasons, the flip tests, examples and every slice."""
    def table(records: list[dict]) -> str:
        return pd.DataFrame(records).to_html(index=False, float_format=lambda v: f"{v:.3f}") if records else "<p>none</p>"

    verdict = "PASSED" if report.passed else "FAILED"
    image = ""
    if chart is not None and chart.is_file():
        image = f"<img alt='flip rates' src='data:image/png;base64,{base64.b64encode(chart.read_bytes()).decode()}'/>"
    path.write_text(
        "<html><head><meta charset='utf-8'><title>distill audit</title></head><body>"
        f"<h1>Audit: {verdict}</h1><ul>{''.join(f'<li>{html.escape(r)}</li>' for r in report.reasons)}</ul>"
        f"{''.join(f'<p><i>{html.escape(n)}</i></p>' for n in report.notes)}"
        f"<h2>Counterfactual and robustness flip rates</h2>{image}{table(report.flips)}"
        f"<h2>Student flips (examples)</h2>{table(report.flip_examples)}"
        f"<h2>Slices</h2>{table(report.slices)}</body></html>")


def remembered(predict: Predictor) -> Predictor:
    """``predict`` answering each text it has seen from memory (the teacher is asked once for two audits)."""
    seen: dict[str, np.ndarray] = {}

    def cached(texts: list[str]) -> np.ndarray:
        new = list(dict.fromkeys(t for t in texts if t not in seen))
        if new:
            seen.update(zip(new, predict(new)))
        return np.stack([seen[t] for t in texts]) if texts else predict(texts)

    return cached


def run(cfg: PipelineConfig, predictions_path: Path, out_dir: Path, teacher_dir: Path | None = None,
        student_dir: Path | None = None, baseline_dir: Path | None = None,
        compressed_dir: Path | None = None) -> AuditReport:
    """Audit the evaluate stage's predictions (and, given the model folders, the models' flips); the compressed
    student and its INT8 model, when the evaluation scored them, are audited the same way against the teacher
    (``compressed``, ``compressed_int8``): either may be registered in the student's place."""
    from distill import plots
    from distill.lengths import with_teacher_lengths
    from distill.models import load_classifier, read_card
    from distill.runtime import load_served
    from distill.served import INT8_FILE

    cfg = with_teacher_lengths(cfg, teacher_dir)
    predictors, labels = {}, None
    for name, folder in (("teacher", teacher_dir), ("student", student_dir), ("baseline", baseline_dir)):
        if folder is not None:
            clf = load_classifier(Path(folder))
            predictors[name] = classifier_predictor(clf, cfg.audit.batch_size, cfg.train.max_length)
            labels = clf.labels
    if "teacher" in predictors:
        predictors["teacher"] = remembered(predictors["teacher"])
    predictions = pd.read_parquet(predictions_path)
    report = audit(predictions, cfg.audit, predictors, cfg.data.slice_columns, labels, cfg.seed)
    compressed = compressed_dir is not None and read_card(Path(compressed_dir)).get("enabled")
    for name, precision in (("compressed", "fp32"), ("compressed_int8", "int8")):
        if not compressed or name not in predictions:
            continue
        if precision == "int8" and not Path(compressed_dir, INT8_FILE).is_file():
            report.notes.append("compressed_int8 not audited: the compressed student's folder holds no INT8 model "
                                "(evaluate.runtime is eager or its export failed; the evaluation quantized one of "
                                "its own), so it cannot be registered")
            continue
        stand_in = {k: v for k, v in predictors.items() if k != "baseline"}
        if "student" in stand_in:
            stand_in["student"] = classifier_predictor(load_served(Path(compressed_dir), precision),
                                                       cfg.audit.batch_size, cfg.train.max_length)
        view = predictions.drop(columns=["student", "baseline"], errors="ignore").rename(columns={name: "student"})
        other = audit(view, cfg.audit, stand_in, cfg.data.slice_columns, labels, cfg.seed)
        setattr(report, name, {"passed": other.passed, "reasons": other.reasons, "worst": other.worst})
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / "audit.json", report.to_dict())
        chart = plots.flip_rate_chart(report.flips, tmp / "flip_rates.png") if report.flips else None
        write_report(tmp / "audit.html", report, chart)
    return report
