"""Teacher shift: the production teacher is no longer the one the champion student learned from.

Two signals, either of which is a trigger:

* **version**: the teacher's registry alias (``models:/<teacher_model>@champion``) points to a
  version, or a fingerprint, other than the ``teacher_version`` / ``teacher_fingerprint`` tags of
  the champion student;
* **canary**: on a fixed canary set (cut once from gold_test), teacher and student disagree more than
  they did when the student was distilled (its evaluation's agreement with the teacher) by over
  ``max_canary_disagreement``.  This catches a teacher that changes behind an unchanged version, an
  LLM endpoint for instance.

Everything here is a pure decision over figures the flow gathers; no registry calls.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from distill.io import atomic_file


@dataclass
class TeacherShift:
    changed: bool
    reasons: list[str] = field(default_factory=list)
    teacher_version: str | None = None
    teacher_fingerprint: str | None = None
    student_version: str | None = None
    distilled_from_version: str | None = None
    distilled_from_fingerprint: str | None = None
    canary_disagreement: float | None = None
    baseline_disagreement: float | None = None
    canary_size: int = 0
    max_canary_disagreement: float = 0.1

    @property
    def incident(self) -> str:
        """One key per (teacher, student) pair: the same shift never re-distils twice."""
        fingerprint = (self.teacher_fingerprint or "none")[:12]
        return f"teacher-v{self.teacher_version}-{fingerprint}-student-v{self.student_version}"

    def to_dict(self) -> dict:
        return {**asdict(self), "incident": self.incident}


def disagreement(teacher: Sequence[str], student: Sequence[str]) -> float:
    """Share of inputs on which the two label sequences differ."""
    if len(teacher) != len(student):
        raise ValueError("teacher and student predictions differ in length")
    if not len(teacher):
        return 0.0
    return float(np.mean([str(t) != str(s) for t, s in zip(teacher, student)]))


def check_teacher_shift(teacher_version: str | None, teacher_fingerprint: str | None, student_version: str | None,
                        student_tags: dict[str, str], canary_disagreement: float | None = None,
                        baseline_disagreement: float | None = None, canary_size: int = 0,
                        max_canary_disagreement: float = 0.1) -> TeacherShift:
    """Decide whether the teacher shifted under the champion student."""
    shift = TeacherShift(False, [], teacher_version, teacher_fingerprint, student_version,
                         student_tags.get("teacher_version"), student_tags.get("teacher_fingerprint"),
                         canary_disagreement, baseline_disagreement, canary_size, max_canary_disagreement)
    if teacher_version is None or student_version is None:
        return shift
    if shift.distilled_from_version and str(teacher_version) != str(shift.distilled_from_version):
        shift.reasons.append(f"teacher alias points to version {teacher_version}; the champion student "
                             f"v{student_version} was distilled from version {shift.distilled_from_version}")
    if (teacher_fingerprint and shift.distilled_from_fingerprint
            and teacher_fingerprint != shift.distilled_from_fingerprint):
        shift.reasons.append(f"teacher fingerprint {teacher_fingerprint[:12]} differs from the champion's "
                             f"teacher {shift.distilled_from_fingerprint[:12]}")
    if canary_disagreement is not None:
        rise = canary_disagreement - (baseline_disagreement or 0.0)
        if rise > max_canary_disagreement:
            shift.reasons.append(f"canary disagreement {canary_disagreement:.3f} is {rise:.3f} above the "
                                 f"{baseline_disagreement or 0.0:.3f} measured at distillation "
                                 f"(limit {max_canary_disagreement})")
    shift.changed = bool(shift.reasons)
    return shift


def teacher_sample(request_ids: pd.Series, texts: pd.Series, size: int) -> pd.Index:
    """The rows of a window the teacher is asked about: up to ``size`` with a text, chosen by a hash of the
    request id, so every monitor pass asks about the same requests and a window's figure does not move."""
    with_text = texts.notna()
    order = request_ids[with_text].astype(str).map(lambda r: hashlib.sha256(r.encode()).hexdigest()).sort_values()
    return order.index[:size]


def cached_answers(predict: Callable[[list[str]], list[str]], texts: list[str], cache: Path) -> list[str]:
    """``predict(texts)``, asking only about texts not already in ``cache`` (a parquet of text -> answer, one
    per teacher version), which then holds them too."""
    known = pd.read_parquet(cache) if cache.is_file() else pd.DataFrame({"text": [], "answer": []})
    answers = dict(zip(known["text"], known["answer"]))
    new = sorted({t for t in texts if t not in answers})
    if new:
        answers.update(zip(new, map(str, predict(new))))
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(cache, "wb") as handle:
            pd.DataFrame({"text": list(answers), "answer": list(answers.values())}).to_parquet(handle, index=False)
    return [answers[t] for t in texts]


def ensure_canary(path: Path, gold_test: pd.DataFrame, size: int, seed: int,
                  min_present: float = 0.5) -> tuple[pd.DataFrame, str]:
    """The canary set and a note for the log ("" when there is nothing to say).

    Cut from gold_test the first time, then read back unchanged while it belongs to this data: while at
    least ``min_present`` of its rows (text and label) are still in gold_test. A re-distillation keeps
    gold_test, so the canary stays fixed across runs; a canary mostly absent from it was cut from another
    data set (the project's ``data.path`` changed, or its file was re-split), and measuring this teacher and
    student on it would raise a false teacher-shift alarm. It is moved aside (``<name>.replaced-<time>``,
    nothing is deleted) and a new one is cut.
    """
    path = Path(path)
    note = ""
    if path.is_file():
        canary = pd.read_parquet(path)
        current = set(zip(gold_test["text"].astype(str), gold_test["label"].astype(str)))
        present = float(np.mean([(str(t), str(lbl)) in current for t, lbl in zip(canary["text"], canary["label"])])
                        ) if len(canary) else 0.0
        if present >= min_present:
            return canary, note
        aside = path.with_name(f"{path.stem}.replaced-{time.strftime('%Y%m%dT%H%M%S')}{path.suffix}")
        path.rename(aside)
        note = (f"the canary set {path} was cut from other data: {present:.0%} of its {len(canary)} rows are in "
                f"this gold_test (under {min_present:.0%}); it is kept as {aside.name}, and a new one is cut from "
                "gold_test. Commit the new one so later runs compare against it.")
    canary = gold_test[["text", "label"]].sample(n=min(size, len(gold_test)), random_state=seed)
    with atomic_file(path, "wb") as handle:
        canary.reset_index(drop=True).to_parquet(handle, index=False)
    return pd.read_parquet(path), note
    canary = gold_test[["text", "label"]].sample(n=min(size, len(gold_test)), random_state=seed)
    with atomic_file(path, "wb") as handle:
        canary.reset_index(drop=True).to_parquet(handle, index=False)
    return pd.read_parquet(path)
