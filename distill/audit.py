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
            teacher_right = group["teacher"] == group["label"]
            model_right = group[model] == group["label"]
            rows.append({"slice": f"{kind}={value}", "n": len(group),
                         "teacher_accuracy": float(teacher_right.mean()),
                         f"{model}_accuracy": float(model_right.mean()),
                         "drop": float(teacher_right.mean() - model_right.mean()),
                         "p_value": worse_p_value(teacher_right.to_numpy(), model_right.to_numpy())})
    return pd.DataFrame(rows)


def worse_p_value(teacher_right: np.ndarray, model_right: np.ndarray) -> float:
    """One-sided exact McNemar test: how likely is a drop this large if the model were no worse?

    Only the discordant examples count: those the teacher gets right and the model
    wrong, against the reverse.
    """
    from scipy.stats import binomtest

    lost = int((teacher_right & ~model_right).sum())
    won = int((~teacher_right & model_right).sum())
    return 1.0 if lost + won == 0 else float(binomtest(lost, lost + won, 0.5, alternative="greater").pvalue)


def audit(predictions: pd.DataFrame, cfg: AuditConfig) -> AuditReport:
    """Fail on a slice of at least ``min_slice_size`` examples whose accuracy drops more than
    ``max_slice_drop`` below the teacher's, when the drop is significant at ``significance``
    after a Bonferroni correction over the gated slices. With many small slices, a fixed
    limit alone fails good students on sampling noise (4 errors in 24 is a 0.167 drop)."""
    table = slice_table(predictions, cfg)
    gated = table[table["n"] >= cfg.min_slice_size].copy()
    gated["p_adjusted"] = (gated["p_value"] * max(len(gated), 1)).clip(upper=1.0)
    large = gated[gated["drop"] > cfg.max_slice_drop]
    failing = large[large["p_adjusted"] < cfg.significance]
    reasons = [f"slice {row.slice} (n={row.n}): student accuracy {row.student_accuracy:.3f} is "
               f"{row.drop:.3f} below the teacher's {row.teacher_accuracy:.3f} (limit {cfg.max_slice_drop}, "
               f"adjusted p={row.p_adjusted:.2g})" for row in failing.itertuples()]
    reasons += [f"slice {row.slice} (n={row.n}) drops {row.drop:.3f}, above the limit but not significant "
                f"(adjusted p={row.p_adjusted:.2g} >= {cfg.significance}): reported, not gating"
                for row in large.drop(failing.index).itertuples()]
    if failing.empty and large.empty:
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
