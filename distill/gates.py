"""Gates: pure decisions with a verdict and the reasons for it. They never touch the network."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from distill.config import PromoteConfig, TeacherConfig


@dataclass
class GateReport:
    passed: bool
    reasons: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def check_teacher(metrics: dict[str, float], cfg: TeacherConfig) -> GateReport:
    """Is the teacher good enough to be worth distilling (gold test accuracy and macro-F1)?"""
    reasons, passed = [], True
    for key, floor in (("accuracy", cfg.min_accuracy), ("macro_f1", cfg.min_macro_f1)):
        ok = metrics[key] >= floor
        passed &= ok
        reasons.append(f"teacher {key} {metrics[key]:.3f} {'>=' if ok else '<'} minimum {floor:.3f}")
    return GateReport(passed, reasons)


def decide_promotion(teacher_gate: GateReport, metrics: dict[str, dict[str, float]], audit_passed: bool,
                     audit_reasons: list[str], cfg: PromoteConfig) -> GateReport:
    """Should the new student become champion? Every gate must pass."""
    reasons, passed = [], teacher_gate.passed
    reasons.append("teacher gate passed" if teacher_gate.passed else "teacher gate failed")
    share = metrics["student"]["accuracy"] / max(metrics["teacher"]["accuracy"], 1e-9)
    ok = share >= cfg.min_teacher_share
    passed &= ok
    reasons.append(f"student keeps {share:.1%} of the teacher's accuracy "
                   f"({'>=' if ok else '<'} {cfg.min_teacher_share:.0%})")
    passed &= audit_passed
    reasons.append("audit passed" if audit_passed else "audit failed: " + "; ".join(audit_reasons))
    return GateReport(bool(passed), reasons)
