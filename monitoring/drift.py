"""Drift of a production window against the transfer-set reference, via Evidently.

Every Evidently import lives in this module (and only inside :func:`detect_drift`, so importing
the module is cheap): Evidently's API changes between releases, callers only see the plain
:class:`DriftResult`.
That is why the module is long: everything that touches Evidently stays behind this one door.

What is monitored
-----------------
The raw text is never compared directly (Evidently's text drift trains a domain classifier, which
is slow).  Instead each text is reduced to four descriptors (:func:`describe_texts`), and those,
the predicted label and, when given, the top-class confidence are compared column by column:

* numerical columns (``char_length``, ``word_count``, ``oov_share``, ``non_letter_share``,
  ``confidence``): two-sample Kolmogorov-Smirnov test (Evidently ``"ks"``), drift if p < 0.05;
* categorical column (``prediction``): two-sample chi-square test of homogeneity of the label
  counts (reference vs window, a 2 x k contingency table), drift if p < 0.05.  Registered with
  Evidently as the stat test ``"chisquare_2sample"``.  Evidently's built-in ``"chisquare"`` is a
  goodness-of-fit test that treats the reference label shares as exact; with 40 labels and a
  200-row window that inflates its false-alarm rate to ~12 % at p < 0.05 (measured), the
  two-sample test stays at the nominal ~5 %.

* embedding column (``embedding_distance``, when embeddings are given): cosine distance of each
  text's sentence embedding (packaged MiniLM, mean-pooled, see :mod:`monitoring.embeddings`) to its
  nearest reference embedding, KS test.  Reference rows are measured out-of-fold and every window row
  against the same-sized 4/5 of the reference, so both sides see equally dense references and an
  in-domain window has the same distance distribution as the reference.

The dataset is declared drifted when the share of drifted columns is ``>= drift_share``.

Texts may be absent from the window (the production log can keep only a hash): the text
descriptors and the embedding column are then left out and only the predictions are compared.
Where ground truth has arrived (``true_label``), accuracy and macro-F1 of the window are reported
in :attr:`DriftResult.quality`; where the teacher answered some of its requests (``teacher_label``), how
often the champion disagrees with it, in :attr:`DriftResult.teacher`. Both are charted per window on
the workspace dashboard.

The tests are pinned on purpose.  Evidently's *automatic* choice depends on the reference size:
with more than 1000 reference rows (our 3000-row transfer set) it switches to Wasserstein
distance (numerical) and Jensen-Shannon distance (categorical) with a fixed 0.1 threshold.  Those
distances do not account for the 200-row window: the sampling noise of a 200-row window already
gives a Jensen-Shannon distance above 0.1 for a 40-label prediction column and Wasserstein
distances close to 0.1, i.e. per-column false alarms on in-domain traffic.  The p-value tests are
calibrated for the sample sizes.

``oov_share`` of the reference rows is computed out-of-fold (each reference text against the
vocabulary of the other folds); against its own vocabulary every reference text would have
``oov_share == 0`` and any unseen word (a new device name, a number) in an in-domain window would
look like drift.  Window texts are described against the full reference vocabulary.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from distill.io import atomic_file

__all__ = [
    "DESCRIPTOR_COLUMNS",
    "DriftResult",
    "describe_texts",
    "detect_drift",
    "nearest_reference_distance",
    "window_disagreement",
    "window_quality",
    "reference_vocabulary",
]

DESCRIPTOR_COLUMNS: tuple[str, ...] = ("char_length", "word_count", "oov_share", "non_letter_share")
TEXT_COLUMN = "text"
PREDICTION_COLUMN = "prediction"
CONFIDENCE_COLUMN = "confidence"
EMBEDDING_COLUMN = "embedding_distance"
TRUTH_COLUMN = "true_label"
HELD_OUT_COLUMN = "held_out"  # reference rows the model never trained on: they count for its outputs only
CORRECT_COLUMN = "correct"  # 1 / 0 where ground truth arrived: its mean is the window's accuracy (dashboard)
TEACHER_COLUMN = "teacher_label"  # the teacher's answer, for the requests of a window it was asked about
DISAGREES_COLUMN = "teacher_disagrees"  # 1 / 0 where the teacher answered: its mean is the window's disagreement

# Evidently stat-test names (registry names accepted by DataDriftPreset).
NUM_METHOD = "ks"
CAT_METHOD = "chisquare_2sample"  # registered by _register_stattests()
# Tests whose score is a p-value (drift when score < threshold); every other Evidently method
# reports a distance (drift when score >= threshold).  Only used when the snapshot carries no
# per-column test status.
_P_VALUE_METHODS = frozenset(
    {
        "ks",
        "chisquare",
        "chisquare_2sample",
        "z",
        "fisher_exact",
        "g_test",
        "mannw",
        "t_test",
        "cramer_von_mises",
        "anderson",
        "epps_singleton",
        "empirical_mmd",
        "TVD",
    }
)
_MISSING_LABEL = "<missing>"
_OOF_FOLDS = 5
_OOF_SEED = 0

# Lower-cased word tokens: runs of letters/digits (Unicode aware, no underscore), with
# apostrophe contractions kept in one token ("don't", "it’s").
_WORD_RE = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")


@dataclass
class DriftResult:
    """Outcome of one :func:`detect_drift` call (no Evidently types inside)."""

    drift_detected: bool  # dataset-level verdict
    drifted_share: float  # share of monitored columns that drifted
    drifted_columns: list[str]
    column_scores: dict[str, float]  # per column drift score (p-value or distance, as Evidently reports)
    column_methods: dict[str, str]  # per column stat test name
    report_html: Path
    n_reference: int
    n_current: int
    quality: dict | None = None  # {"labelled", "accuracy", "macro_f1"} where ground truth arrived
    teacher: dict | None = None  # {"asked", "disagreement"} where the teacher answered some of the window

    def to_dict(self) -> dict:
        """JSON-serialisable summary (paths as strings, non-finite scores as None)."""
        return {
            "drift_detected": bool(self.drift_detected),
            "drifted_share": _json_float(self.drifted_share),
            "drifted_columns": [str(c) for c in self.drifted_columns],
            "column_scores": {str(k): _json_float(v) for k, v in self.column_scores.items()},
            "column_methods": {str(k): str(v) for k, v in self.column_methods.items()},
            "report_html": str(self.report_html),
            "n_reference": int(self.n_reference),
            "n_current": int(self.n_current),
            "quality": self.quality,
            "teacher": self.teacher,
        }


def _json_float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# --------------------------------------------------------------------------- descriptors


def _as_texts(texts: pd.Series) -> pd.Series:
    texts = pd.Series(texts)
    return texts.where(texts.notna(), "").astype(str)


def _tokens(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


def reference_vocabulary(texts: pd.Series) -> set[str]:
    """Set of lower-cased word tokens occurring in ``texts`` (missing texts are skipped)."""
    vocabulary: set[str] = set()
    for text in _as_texts(texts):
        vocabulary.update(_tokens(text))
    return vocabulary


def _describe(text: str, tokens: list[str], vocabulary: set[str] | frozenset[str]) -> tuple[int, int, float, float]:
    n_chars = len(text)
    n_words = len(tokens)
    oov = sum(1 for token in tokens if token not in vocabulary) / n_words if n_words else 0.0
    non_letter = (
        sum(1 for ch in text if not (ch.isalpha() or ch.isspace())) / n_chars if n_chars else 0.0
    )
    return n_chars, n_words, float(oov), float(non_letter)


def _frame(rows: Iterable[tuple[int, int, float, float]], index: pd.Index) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows), columns=list(DESCRIPTOR_COLUMNS), index=index)
    return frame.astype(
        {"char_length": "int64", "word_count": "int64", "oov_share": "float64", "non_letter_share": "float64"}
    )


def describe_texts(texts: pd.Series, vocabulary: set[str]) -> pd.DataFrame:
    """Per-text descriptors: char_length, word_count, oov_share (share of words not in `vocabulary`,
    the reference vocabulary, lower-cased word tokens), non_letter_share (share of characters that are not letters or spaces).

    * ``char_length``: number of characters;
    * ``word_count``: number of word tokens (runs of letters/digits, apostrophe contractions kept
      whole, e.g. ``"don't"``; punctuation is not a word);
    * ``oov_share``: share of those tokens (lower-cased) not in ``vocabulary`` (0.0 for a text
      without words);
    * ``non_letter_share``: share of characters that are neither letters nor whitespace (digits,
      punctuation, symbols; 0.0 for an empty text).

    Missing texts count as empty.  The result keeps the index of ``texts``.
    """
    texts = _as_texts(texts)
    vocab = frozenset(word.lower() for word in vocabulary)
    rows = (_describe(text, _tokens(text), vocab) for text in texts)
    return _frame(rows, texts.index)


def _reference_descriptors(texts: pd.Series) -> pd.DataFrame:
    """Descriptors of the reference texts with out-of-fold ``oov_share``.

    Each text's OOV share is measured against the vocabulary of the other folds, which estimates
    the OOV share a fresh sample from the reference distribution would have against the full
    reference vocabulary (slightly over-estimates it: the fold vocabularies are 4/5 the size).
    """
    texts = _as_texts(texts)
    tokens = [_tokens(text) for text in texts]
    n = len(texts)
    n_folds = min(_OOF_FOLDS, n)
    if n_folds < 2:
        vocab = frozenset(t for toks in tokens for t in toks)
        return _frame((_describe(text, toks, vocab) for text, toks in zip(texts, tokens)), texts.index)

    order = np.random.default_rng(_OOF_SEED).permutation(n)
    folds = np.array_split(order, n_folds)
    # document frequency of each word overall and per fold
    total: Counter[str] = Counter()
    per_fold: list[Counter[str]] = []
    for fold in folds:
        counts: Counter[str] = Counter()
        for i in fold:
            counts.update(set(tokens[i]))
        per_fold.append(counts)
        total.update(counts)

    rows: list[tuple[int, int, float, float] | None] = [None] * n
    for fold, fold_counts in zip(folds, per_fold):
        # vocabulary of the other folds: words that occur outside this fold
        vocab = frozenset(word for word, count in total.items() if count > fold_counts.get(word, 0))
        for i in fold:
            rows[i] = _describe(texts.iat[i], tokens[i], vocab)
    return _frame(rows, texts.index)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- drift


def _chi2_two_sample(reference_data: pd.Series, current_data: pd.Series, feature_type: Any, threshold: float):
    """Pearson chi-square test of homogeneity on the 2 x k table of label counts -> (p-value, drifted)."""
    from scipy.stats import chi2_contingency

    reference_counts = reference_data.dropna().value_counts()
    current_counts = current_data.dropna().value_counts()
    keys = reference_counts.index.union(current_counts.index)
    table = np.vstack(
        [
            reference_counts.reindex(keys, fill_value=0).to_numpy(),
            current_counts.reindex(keys, fill_value=0).to_numpy(),
        ]
    )
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        p_value = 1.0  # a single label on both sides (or an empty side): nothing to compare
    else:
        p_value = float(chi2_contingency(table, correction=False)[1])
    return p_value, p_value < threshold


_STATTESTS_REGISTERED = False


def _register_stattests() -> None:
    """Add ``CAT_METHOD`` to Evidently's stat-test registry (idempotent)."""
    global _STATTESTS_REGISTERED
    if _STATTESTS_REGISTERED:
        return
    from evidently.legacy.calculations.stattests import StatTest, register_stattest
    from evidently.legacy.core import ColumnType

    register_stattest(
        StatTest(
            name=CAT_METHOD,
            display_name="chi-square 2-sample p_value",
            allowed_feature_types=[ColumnType.Categorical],
            default_threshold=0.05,
        ),
        default_impl=_chi2_two_sample,
    )
    _STATTESTS_REGISTERED = True



def _check_frame(frame: pd.DataFrame, name: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame, got {type(frame).__name__}")
    required = (TEXT_COLUMN, PREDICTION_COLUMN) if name == "reference" else (PREDICTION_COLUMN,)
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} lacks required column(s) {missing}; has {list(frame.columns)}")
    if len(frame) == 0:
        raise ValueError(f"{name} has no rows")


def _monitored_frame(
    descriptors: pd.DataFrame, source: pd.DataFrame, with_confidence: bool
) -> pd.DataFrame:
    frame = descriptors.reset_index(drop=True)
    prediction = source[PREDICTION_COLUMN].reset_index(drop=True)
    frame[PREDICTION_COLUMN] = prediction.where(prediction.notna(), _MISSING_LABEL).astype(str)
    if with_confidence:
        frame[CONFIDENCE_COLUMN] = pd.to_numeric(
            source[CONFIDENCE_COLUMN].reset_index(drop=True), errors="coerce"
        ).astype("float64")
    return frame


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise


def _with_title(page: str, title: str, extra_html: str = "") -> str:
    escaped = html.escape(title)
    page = re.sub(r"<head([^>]*)>", lambda m: f"<head{m.group(1)}>\n<title>{escaped}</title>", page, count=1)
    heading = f'<h2 style="font-family: sans-serif; margin: 16px;">{escaped}</h2>'
    if extra_html:
        heading += f'\n<div style="font-family: sans-serif; margin: 16px;">{extra_html}</div>'
    return re.sub(r"<body([^>]*)>", lambda m: f"<body{m.group(1)}>\n{heading}", page, count=1)


def _score(value: Any) -> float:
    if isinstance(value, dict):  # tolerate {"value": x} shaped single values
        value = value.get("value")
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _is_drift(score: float, method: str, threshold: Any) -> bool:
    try:
        limit = float(threshold)
    except (TypeError, ValueError):
        limit = 0.05 if method in _P_VALUE_METHODS else 0.1
    if math.isnan(score):
        return False
    return score < limit if method in _P_VALUE_METHODS else score >= limit


def _parse_snapshot(
    payload: dict, columns: list[str]
) -> tuple[float | None, list[str], dict[str, float], dict[str, str]]:
    """Read (share of drifted columns, drifted columns, scores, methods) from ``Snapshot.dict()``.

    Evidently 0.7 layout: ``payload["metrics"]`` is a list of ``{"id", "metric_name", "config",
    "value"}``; ``DriftedColumnsCount`` has ``value == {"count": .., "share": ..}``, each
    ``ValueDrift`` has ``config == {"column", "method", "threshold", ...}`` and a float ``value``
    (the drift score).  With ``include_tests=True`` ``payload["tests"]`` holds one test per
    ``ValueDrift`` (``metric_config.metric_id`` -> metric id, ``status`` FAIL = drifted).
    """
    share: float | None = None
    scores: dict[str, float] = {}
    methods: dict[str, str] = {}
    thresholds: dict[str, Any] = {}
    column_of_metric: dict[str, str] = {}
    for metric in payload.get("metrics") or []:
        config = metric.get("config") or {}
        kind = str(config.get("type", ""))
        if kind.endswith("DriftedColumnsCount"):
            value = metric.get("value")
            if isinstance(value, dict) and value.get("share") is not None:
                share = float(value["share"])
        elif kind.endswith("ValueDrift"):
            column = config.get("column")
            if column not in columns:
                continue
            scores[column] = _score(metric.get("value"))
            methods[column] = str(config.get("method"))
            thresholds[column] = config.get("threshold")
            if metric.get("id") is not None:
                column_of_metric[str(metric["id"])] = column

    missing = [c for c in columns if c not in scores]
    if missing:
        raise RuntimeError(f"Evidently snapshot has no ValueDrift result for column(s) {missing}")

    statuses: dict[str, str] = {}
    for test in payload.get("tests") or []:
        metric_config = test.get("metric_config") or {}
        column = column_of_metric.get(str(metric_config.get("metric_id")))
        if column is None:
            params = metric_config.get("params") or {}
            if str(params.get("type", "")).endswith("ValueDrift"):
                column = params.get("column")
        if column in scores:
            statuses[column] = str(test.get("status", "")).upper()

    drifted = []
    for column in columns:
        status = statuses.get(column)
        if status in ("FAIL", "SUCCESS"):
            is_drift = status == "FAIL"
        else:
            is_drift = _is_drift(scores[column], methods[column], thresholds[column])
        if is_drift:
            drifted.append(column)
    return share, drifted, scores, methods


def nearest_reference_distance(reference: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine distance to the nearest reference embedding: (reference rows out-of-fold, current rows).

    Both sides are measured against 4/5 of the reference (the other folds for a reference row, a
    random fold left out for a current row), so their distributions match when nothing drifted.
    Embeddings must be unit-norm.
    """
    n = len(reference)
    n_folds = min(_OOF_FOLDS, n)
    if n_folds < 2:
        ref = 1.0 - (reference @ reference.T).max(axis=1) if n else np.zeros(0)
        return ref, 1.0 - (current @ reference.T).max(axis=1) if n else np.ones(len(current))
    fold_of = np.empty(n, dtype=int)
    for k, idx in enumerate(np.array_split(np.random.default_rng(_OOF_SEED).permutation(n), n_folds)):
        fold_of[idx] = k
    current_fold = np.random.default_rng(_OOF_SEED + 1).integers(0, n_folds, size=len(current))

    def nearest(rows: np.ndarray, folds: np.ndarray) -> np.ndarray:
        out = np.empty(len(rows))
        for start in range(0, len(rows), 1024):
            sims = rows[start:start + 1024] @ reference.T  # (b, n)
            sims[folds[start:start + 1024, None] == fold_of[None, :]] = -np.inf
            out[start:start + 1024] = 1.0 - sims.max(axis=1)
        return out

    return nearest(reference, fold_of), nearest(current, current_fold)


def window_quality(current: pd.DataFrame, min_labelled: int) -> dict | None:
    """Accuracy and macro-F1 of the window's predictions where ground truth arrived."""
    if TRUTH_COLUMN not in current.columns:
        return None
    labelled = current[current[TRUTH_COLUMN].notna()]
    if len(labelled) < max(int(min_labelled), 1):
        return None
    from sklearn.metrics import accuracy_score, f1_score

    truth, predicted = labelled[TRUTH_COLUMN].astype(str), labelled[PREDICTION_COLUMN].astype(str)
    return {"labelled": int(len(labelled)), "accuracy": float(accuracy_score(truth, predicted)),
            "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0))}


def _correct(frame: pd.DataFrame) -> np.ndarray:
    """1.0 where the prediction matches the ground truth, 0.0 where it does not, NaN where none arrived."""
    if TRUTH_COLUMN not in frame.columns:
        return np.full(len(frame), np.nan)
    truth = frame[TRUTH_COLUMN].reset_index(drop=True)
    hit = (truth.astype(str) == frame[PREDICTION_COLUMN].reset_index(drop=True).astype(str)).astype(float)
    return hit.where(truth.notna()).to_numpy(dtype="float64")


def _disagrees(frame: pd.DataFrame) -> np.ndarray:
    """1.0 where the prediction differs from the teacher's answer, 0.0 where it matches, NaN where the teacher
    was not asked."""
    if TEACHER_COLUMN not in frame.columns:
        return np.full(len(frame), np.nan)
    teacher = frame[TEACHER_COLUMN].reset_index(drop=True)
    differs = (teacher.astype(str) != frame[PREDICTION_COLUMN].reset_index(drop=True).astype(str)).astype(float)
    return differs.where(teacher.notna()).to_numpy(dtype="float64")


def window_disagreement(current: pd.DataFrame) -> dict | None:
    """How often the champion's answer differs from the teacher's on the window's requests the teacher answered."""
    differs = _disagrees(current)
    asked = int(np.isfinite(differs).sum())
    return {"asked": asked, "disagreement": float(np.nanmean(differs))} if asked else None


def _quality_html(quality: dict | None, teacher: dict | None = None) -> str:
    lines = [f"<p>Ground truth for {quality['labelled']} requests: accuracy {quality['accuracy']:.3f}, "
             f"macro-F1 {quality['macro_f1']:.3f}.</p>" if quality
             else "<p>No ground truth has arrived for this window yet.</p>"]
    if teacher:
        lines.append(f"<p>The teacher answered {teacher['asked']} of these requests: the champion disagrees with it "
                     f"on {teacher['disagreement']:.1%} of them.</p>")
    return "".join(lines)


DASHBOARD_COLUMNS = (*DESCRIPTOR_COLUMNS, CONFIDENCE_COLUMN, EMBEDDING_COLUMN, PREDICTION_COLUMN)


def dashboard_panels() -> list:
    """The project's dashboard: the share of drifted columns per window, the latest count, and every monitored
    column's drift score (p-value or distance, as the column's test gives) per window."""
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import counter_panel, line_plot_panel

    return [
        counter_panel("Drifted columns, latest window", [PanelMetric(legend="count", metric="DriftedColumnsCount",
                                                                     metric_labels={"value_type": "count"})],
                      description="Columns whose drift test fired in the most recent window", size="half"),
        line_plot_panel("Share of drifted columns per window", [PanelMetric(
            legend="share", metric="DriftedColumnsCount", metric_labels={"value_type": "share"})],
            description="A window is flagged when this reaches monitor.drift_share", size="half"),
        line_plot_panel("Drift score per column", [
            PanelMetric(legend=column, metric="ValueDrift", metric_labels={"column": column})
            for column in DASHBOARD_COLUMNS],
            description="Per column: the test's p-value (KS, chi-squared: drift below 0.05) or its distance "
                        "(embedding_distance: Wasserstein)"),
        line_plot_panel("Window accuracy where ground truth arrived", [PanelMetric(
            legend="accuracy", metric="MeanValue", metric_labels={"column": CORRECT_COLUMN})],
            description="Share of the window's labelled requests the champion answered right (feedback); "
                        "no point for a window without monitor.min_labelled labels", size="half"),
        line_plot_panel("Disagreement with the teacher per window", [PanelMetric(
            legend="disagreement", metric="MeanValue", metric_labels={"column": DISAGREES_COLUMN})],
            description="Share of a sample of the window's requests (monitor.teacher_sample) on which the champion "
                        "answers other than the registered teacher; rising while accuracy holds means the teacher "
                        "moved, rising with falling accuracy means the student fell behind", size="half"),
    ]


WORKSPACE_KEYS = "distill-snapshot-keys.json"  # beside the workspace's projects: the keys already added


def add_to_workspace(folder: Path, project: str, snapshot: Any, key: str | None = None) -> bool:
    """Add a report snapshot to the named project of a local Evidently workspace (created on first use, with
    its dashboard). A snapshot whose ``key`` is already there is not added twice: a monitor pass re-reads
    windows it has seen. The keys added are listed in ``WORKSPACE_KEYS``, so the check reads one small
    file rather than every snapshot of the project. Returns whether it was added."""
    from evidently.ui.workspace import Workspace

    index = Path(folder) / WORKSPACE_KEYS
    added = set(json.loads(index.read_text())) if index.is_file() else set()
    if key is not None and key in added:
        return False
    workspace = Workspace.create(str(folder))
    found = workspace.search_project(project)
    target = found[0] if found else workspace.create_project(project, description="distill: production "
                                                             "windows against the distillation inputs")
    shown = {panel.title for panel in workspace.get_dashboard(target.id).panels}
    for panel in dashboard_panels():  # a workspace made by an older distill gets the panels added since
        if panel.title not in shown:
            target.dashboard.add_panel(panel)
    workspace.add_run(target.id, snapshot)
    if key is not None:
        with atomic_file(index) as handle:
            json.dump(sorted(added | {key}), handle)
    return True


def detect_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    report_path: Path,
    drift_share: float = 0.5,
    title: str = "Production drift",
    reference_embeddings: np.ndarray | None = None,
    current_embeddings: np.ndarray | None = None,
    min_labelled: int = 30,
    workspace: Path | None = None,
    project: str = "distill drift",
    timestamp: datetime | None = None,
    tags: list[str] | None = None,
    metadata: dict[str, str] | None = None,
) -> DriftResult:
    """reference/current have columns `text` (str) and `prediction` (str class label) and optionally
    `confidence` (float, the top-class probability) and, for current, `true_label`. Builds text
    descriptors (computed with describe_texts against the reference vocabulary, so no nltk download is
    ever needed) and, given embeddings of both frames' texts (rows aligned), the nearest-reference
    embedding distance; then runs an Evidently Report with DataDriftPreset (drift_share=drift_share)
    over those columns + prediction (categorical) + confidence (numerical), writes the HTML report to
    report_path (create parent dirs; written to a temporary name then renamed, so a crash never leaves
    a half-written report), and returns DriftResult read from the snapshot's dict output.

    ``confidence`` is monitored only when both frames have it; the text columns only when the window
    has texts.  Missing predictions become the label ``"<missing>"``.  See the module docstring for the
    tests used.  Given ``workspace`` (a folder), the snapshot is also added to the Evidently project
    ``project`` in that local workspace, for browsing with ``evidently ui --workspace <folder>``,
    dated ``timestamp`` (the window's start: the dashboard's time axis) with ``tags`` and ``metadata``; a
    snapshot whose ``metadata["key"]`` is already in the project is not added again.
    """
    _check_frame(reference, "reference")
    _check_frame(current, "current")
    if not 0.0 < float(drift_share) <= 1.0:
        raise ValueError(f"drift_share must be in (0, 1], got {drift_share}")
    report_path = Path(report_path)

    with_confidence = CONFIDENCE_COLUMN in reference.columns and CONFIDENCE_COLUMN in current.columns
    with_text = TEXT_COLUMN in current.columns and bool(current[TEXT_COLUMN].notna().any())
    with_embeddings = with_text and reference_embeddings is not None and current_embeddings is not None
    # held-out rows (the model never trained on them) are the reference of its outputs, not of the texts
    held = (reference[HELD_OUT_COLUMN].fillna(False).astype(bool).to_numpy() if HELD_OUT_COLUMN in reference.columns
            else np.zeros(len(reference), dtype=bool))
    text_rows = np.flatnonzero(~held)
    if with_text:
        texts = reference[TEXT_COLUMN].iloc[text_rows]
        vocabulary = reference_vocabulary(texts)
        ref_desc = pd.DataFrame(np.nan, index=range(len(reference)), columns=list(DESCRIPTOR_COLUMNS))
        ref_desc.iloc[text_rows] = _reference_descriptors(texts)[list(DESCRIPTOR_COLUMNS)].to_numpy()
        cur_desc = describe_texts(current[TEXT_COLUMN], vocabulary)
    else:
        ref_desc, cur_desc = pd.DataFrame(index=reference.index), pd.DataFrame(index=current.index)
    ref_frame = _monitored_frame(ref_desc, reference, with_confidence)
    cur_frame = _monitored_frame(cur_desc, current, with_confidence)
    if with_embeddings:
        if len(reference_embeddings) != len(text_rows) or len(current_embeddings) != len(current):
            raise ValueError("embeddings must have one row per reference text row (not held out) / current row")
        ref_distance, cur_frame[EMBEDDING_COLUMN] = nearest_reference_distance(
            np.asarray(reference_embeddings, dtype=np.float64), np.asarray(current_embeddings, dtype=np.float64))
        ref_frame[EMBEDDING_COLUMN] = np.nan
        ref_frame.iloc[text_rows, ref_frame.columns.get_loc(EMBEDDING_COLUMN)] = ref_distance

    numerical = (list(DESCRIPTOR_COLUMNS) if with_text else []) + ([CONFIDENCE_COLUMN] if with_confidence else [])
    numerical += [EMBEDDING_COLUMN] if with_embeddings else []
    categorical = [PREDICTION_COLUMN]
    columns = numerical + categorical
    quality, teacher = window_quality(current, min_labelled), window_disagreement(current)

    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import MeanValue
    from evidently.presets import DataDriftPreset

    _register_stattests()
    metrics: list = [DataDriftPreset(columns=columns, drift_share=float(drift_share), num_method=NUM_METHOD,
                                     cat_method=CAT_METHOD)]
    # outcomes charted per window, not drift columns: accuracy where ground truth arrived, disagreement with
    # the teacher where it was asked
    outcomes = {column: rows for column, rows, known in ((CORRECT_COLUMN, _correct, quality),
                                                         (DISAGREES_COLUMN, _disagrees, teacher)) if known}
    for column, rows in outcomes.items():
        cur_frame[column], ref_frame[column] = rows(current), rows(reference)
        metrics.append(MeanValue(column=column))
    definition = DataDefinition(numerical_columns=numerical + list(outcomes),
                                categorical_columns=categorical)
    report = Report(metrics, include_tests=True)  # per-column drift verdicts come back as tests
    # Keep numerical RuntimeWarnings from the stat tests / plots out of the caller's logs.
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = report.run(
            current_data=Dataset.from_pandas(cur_frame, data_definition=definition),
            reference_data=Dataset.from_pandas(ref_frame, data_definition=definition),
            name=title, timestamp=timestamp, tags=list(tags or []), metadata=dict(metadata or {}),
        )
        payload = snapshot.dict()
        # Snapshot.save_html silently writes nothing when given a Path; render the string ourselves.
        page = snapshot.get_html_str(as_iframe=False)

    share, drifted, scores, methods = _parse_snapshot(payload, columns)
    if share is None:
        share = len(drifted) / len(columns)
    _write_atomically(report_path, _with_title(page, title, _quality_html(quality, teacher)))
    if workspace is not None:
        add_to_workspace(Path(workspace), project, snapshot, (metadata or {}).get("key"))

    return DriftResult(
        drift_detected=bool(share >= float(drift_share)),
        drifted_share=float(share),
        drifted_columns=drifted,
        column_scores=scores,
        column_methods=methods,
        report_html=report_path,
        n_reference=int(len(reference)),
        n_current=int(len(current)),
        quality=quality,
        teacher=teacher,
    )
