import pandas as pd

from distill.audit import audit
from distill.config import AuditConfig, PromoteConfig, TeacherConfig
from distill.gates import GateReport, check_teacher, decide_promotion

METRICS = {"teacher": {"accuracy": 0.95}, "student": {"accuracy": 0.93}}


def test_teacher_gate():
    cfg = TeacherConfig(min_accuracy=0.8, min_macro_f1=0.75)
    assert check_teacher({"accuracy": 0.9, "macro_f1": 0.8}, cfg).passed
    gate = check_teacher({"accuracy": 0.79, "macro_f1": 0.8}, cfg)
    assert not gate.passed and "accuracy 0.790 < minimum 0.800" in gate.reasons[0]


def test_promotion_needs_every_gate():
    ok = GateReport(True, [])
    cfg = PromoteConfig(min_teacher_share=0.9)
    assert decide_promotion(ok, METRICS, True, [], cfg).passed
    assert not decide_promotion(GateReport(False, []), METRICS, True, [], cfg).passed
    assert not decide_promotion(ok, METRICS, False, ["slice x"], cfg).passed
    weak = {"teacher": {"accuracy": 0.95}, "student": {"accuracy": 0.80}}
    decision = decide_promotion(ok, weak, True, [], cfg)
    assert not decision.passed and "84.2%" in decision.reasons[1]


def test_audit_fails_when_the_student_collapses_on_one_slice():
    rows = []
    for i in range(60):
        label = ["a", "b", "c"][i % 3]
        student = "a" if label == "c" else label  # the student never says "c"
        rows.append({"text": "word " * (1 + i % 10), "label": label, "teacher": label, "student": student})
    report = audit(pd.DataFrame(rows), AuditConfig(min_slice_size=5, max_slice_drop=0.15))
    assert not report.passed
    assert any("label=c" in r for r in report.reasons)
    assert report.worst[0]["slice"] == "label=c"


def test_audit_passes_when_student_matches_teacher():
    frame = pd.DataFrame({"text": ["a b", "c d e f g h i j k"] * 10, "label": ["x", "y"] * 10,
                          "teacher": ["x", "y"] * 10, "student": ["x", "y"] * 10})
    assert audit(frame, AuditConfig(min_slice_size=5)).passed


def test_a_drop_within_sampling_noise_is_reported_but_does_not_fail():
    # Teacher perfect on 24 examples, student wrong on 4 of them: a 0.167 drop, but 4 discordant
    # pairs are too few to tell the models apart (one-sided p = 0.0625).
    frame = pd.DataFrame({"text": ["turn it on"] * 24, "label": ["x"] * 24, "teacher": ["x"] * 24,
                          "student": ["y"] * 4 + ["x"] * 20})
    report = audit(frame, AuditConfig(min_slice_size=10, max_slice_drop=0.15, significance=0.05))
    assert report.passed
    assert any("not significant" in r and "label=x" in r for r in report.reasons)
    # The same drop on ten times the data is a real regression.
    report = audit(pd.concat([frame] * 10, ignore_index=True), AuditConfig(min_slice_size=10))
    assert not report.passed
