"""The audit stage: where is the student worse than its teacher, slice by slice."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from distill.config import AuditConfig, PipelineConfig
from distill.io import atomic_dir, write_json


@dataclass
class AuditReport:
    passed: bool
    reasons: list[str]
    slices: list[dict] = field(default_factory=list)
    worst: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def length_bucket(texts: pd.Series, edges: list[int]) -> pd.Series:
    """Word-count bucket names such as '<=4 words', '5-8 words', '>8 words'."""
    words = texts.str.split().str.len()
    names, low = [], 0
    for edge in edges:
        names.append(f"{low + 1}-{edge} words" if low else f"<={edge} words")
        low = edge
    names.append(f">{low} words")
    return pd.Series(pd.cut(words, [-np.inf, *edges, np.inf], labels=names), index=texts.index).astype(str)


def slice_table(predictions: pd.DataFrame, cfg: AuditConfig, model: str = "student") -> pd.DataFrame:
    """Accuracy of teacher and ``model`` on every slice."""
    frame = predictions.assign(length=length_bucket(predictions["text"], cfg.length_buckets))
    rows = []
    for kind, column in (("label", "label"), ("length", "length")):
        for value, group in frame.groupby(column, sort=True):
            teacher = float((group["teacher"] == group["label"]).mean())
            other = float((group[model] == group["label"]).mean())
            rows.append({"slice": f"{kind}={value}", "n": len(group), "teacher_accuracy": teacher,
                         f"{model}_accuracy": other, "drop": teacher - other})
    return pd.DataFrame(rows)


def audit(predictions: pd.DataFrame, cfg: AuditConfig) -> AuditReport:
    """Pass unless a large-enough slice loses more than ``max_slice_drop`` accuracy vs the teacher."""
    table = slice_table(predictions, cfg)
    gated = table[table["n"] >= cfg.min_slice_size]
    failing = gated[gated["drop"] > cfg.max_slice_drop]
    reasons = [f"slice {row.slice} (n={row.n}): student accuracy {row.student_accuracy:.3f} is "
               f"{row.drop:.3f} below the teacher's {row.teacher_accuracy:.3f} (limit {cfg.max_slice_drop})"
               for row in failing.itertuples()]
    if not reasons:
        reasons = [f"no slice of at least {cfg.min_slice_size} examples drops more than {cfg.max_slice_drop}"]
    worst = table.sort_values("drop", ascending=False).head(5)
    return AuditReport(failing.empty, reasons, table.to_dict("records"), worst.to_dict("records"))


def run(cfg: PipelineConfig, predictions_path: Path, out_dir: Path) -> AuditReport:
    """Audit the evaluate stage's predictions; write the report as JSON and HTML."""
    report = audit(pd.read_parquet(predictions_path), cfg.audit)
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / "audit.json", report.to_dict())
        verdict = "PASSED" if report.passed else "FAILED"
        body = "".join(f"<li>{r}</li>" for r in report.reasons)
        table = pd.DataFrame(report.slices).to_html(index=False, float_format=lambda v: f"{v:.3f}")
        (tmp / "audit.html").write_text(
            f"<html><head><meta charset='utf-8'><title>distill audit</title></head><body>"
            f"<h1>Audit: {verdict}</h1><ul>{body}</ul>{table}</body></html>")
    return report
