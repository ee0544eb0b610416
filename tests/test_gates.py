import pandas as pd

from distill.audit import audit
from distill.config import AuditConfig, PromoteConfig, TeacherConfig
from distill.gates import GateReport, check_teacher, decide_promotion, label_accuracy

METRICS = {"teacher": {"accuracy": 0.95}, "student": {"accuracy": 0.93, "latency_p50_ms": 2.0}}


def test_teacher_gate():
    cfg = TeacherConfig(min_accuracy=0.8, min_macro_f1=0.75)
    assert check_teacher({"accuracy": 0.9, "macro_f1": 0.8}, cfg).passed
    gate = check_teacher({"accuracy": 0.79, "macro_f1": 0.8}, cfg)
    assert not gate.passed and "accuracy 0.790 < minimum 0.800" in gate.reasons[0]


def test_a_failed_teacher_gate_says_what_it_was_judged_on_and_what_to_change():
    cfg = TeacherConfig(min_accuracy=0.8, min_macro_f1=0.75)
    boot = check_teacher({"accuracy": 0.69, "macro_f1": 0.6, "test_size": 48, "train_size": 32,
                          "bootstrapped": True}, cfg)
    assert "fine-tuned on 32 and tested on 48 gold examples" in boot.reasons[-1]
    assert "data.gold: all" in boot.reasons[-1] and "teacher.path" in boot.reasons[-1]
    given = check_teacher({"accuracy": 0.5, "macro_f1": 0.5, "test_size": 400, "bootstrapped": False}, cfg)
    assert "given teacher (teacher.path) was tested on 400" in given.reasons[-1]
    assert len(check_teacher({"accuracy": 0.9, "macro_f1": 0.9, "test_size": 400}, cfg).reasons) == 2


def test_the_gate_macro_f1_leaves_out_labels_too_small_to_judge_and_names_them():
    import numpy as np

    from distill.teacher import judged_macro_f1

    labels = ["big", "mid", "rare", "absent"]
    gold = np.array([0] * 10 + [1] * 6 + [2] * 2)
    pred = np.array([0] * 10 + [1] * 6 + [0] * 2)  # both rare examples wrong
    found = judged_macro_f1(gold, pred, labels, min_support=5)
    assert found["labels_judged"] == 2 and found["labels_too_few"] == ["rare"]
    assert found["macro_f1"] == 1.0 - (1 - 2 * (10 / 12) / (1 + 10 / 12)) / 2  # big's F1 suffers the rare misses
    assert found["macro_f1_all_labels"] < found["macro_f1"] and found["too_few_rows_share"] == 2 / 18
    everyone = judged_macro_f1(gold, pred, labels, min_support=50)  # none has 50: every present label counts
    assert everyone["labels_judged"] == 3 and everyone["labels_too_few"] == []
    assert everyone["macro_f1"] == everyone["macro_f1_all_labels"]

    gate = check_teacher({"accuracy": 0.9, **found}, TeacherConfig(min_accuracy=0.8, min_macro_f1=0.75))
    assert gate.passed and any("1 with fewer (11.1% of the test rows) are too few to judge: rare" in r
                               for r in gate.reasons)


def test_promotion_needs_every_gate():
    ok = GateReport(True, [])
    cfg = PromoteConfig(min_teacher_share=0.9)
    assert decide_promotion(ok, METRICS, True, [], cfg).passed
    assert not decide_promotion(GateReport(False, []), METRICS, True, [], cfg).passed
    assert not decide_promotion(ok, METRICS, False, ["slice x"], cfg).passed
    weak = {"teacher": {"accuracy": 0.95}, "student": {"accuracy": 0.80, "latency_p50_ms": 2.0}}
    decision = decide_promotion(ok, weak, True, [], cfg)
    assert not decision.passed and "84.2%" in decision.reasons[1]


def test_first_promotion_skips_the_champion_gates_and_says_so():
    decision = decide_promotion(GateReport(True, []), METRICS, True, [], PromoteConfig())
    assert decision.passed
    assert "no champion yet" in decision.reasons[-1]


def test_latency_gate():
    slow = {"teacher": METRICS["teacher"], "student": {"accuracy": 0.93, "latency_p50_ms": 40.0}}
    decision = decide_promotion(GateReport(True, []), slow, True, [], PromoteConfig(max_latency_p50_ms=25))
    assert not decision.passed
    assert any("40.00 ms > limit 25 ms" in r for r in decision.reasons)
    no_figure = {"teacher": METRICS["teacher"], "student": {"accuracy": 0.93}}
    assert not decide_promotion(GateReport(True, []), no_figure, True, [], PromoteConfig()).passed


def _slices(right: dict[str, tuple[int, int]]) -> dict:
    """{'a': (hits, n)} -> label_accuracy of a matching prediction list."""
    gold, pred = [], []
    for label, (hits, n) in right.items():
        gold += [label] * n
        pred += [label] * hits + ["other"] * (n - hits)
    return label_accuracy(gold, pred)


def test_challenger_is_held_to_the_champion_overall_and_per_label():
    cfg = PromoteConfig(max_drop_vs_champion=0.01, max_slice_drop_vs_champion=0.1, min_slice_size=10)
    champion = {"version": "3", "accuracy": 0.95, "slices": _slices({"a": (20, 20), "b": (18, 20), "c": (4, 5)})}
    ok = GateReport(True, [])
    # Same overall accuracy, but label a collapses from 1.0 to 0.7: a significant slice regression blocks it.
    worse_on_a = _slices({"a": (14, 20), "b": (20, 20), "c": (4, 5)})
    decision = decide_promotion(ok, METRICS | {"student": {"accuracy": 0.95, "latency_p50_ms": 2.0}}, True, [],
                                cfg, champion=champion, challenger_slices=worse_on_a)
    assert not decision.passed
    assert any("slice label=a (n=20): accuracy 0.700 is 0.300 below champion v3's 1.000 (limit 0.1, p=0.01)" in r
               for r in decision.reasons)
    # Three changed answers out of 20 are over the limit but within chance: reported, not gated ...
    noise_on_a = _slices({"a": (17, 20), "b": (18, 20), "c": (4, 5)})
    decision = decide_promotion(ok, METRICS | {"student": {"accuracy": 0.95, "latency_p50_ms": 2.0}}, True, [],
                                cfg, champion=champion, challenger_slices=noise_on_a)
    assert decision.passed, decision.reasons
    assert any("label=a (n=20)" in r and "not significant (p=0.12" in r and "not gated" in r
               for r in decision.reasons)
    # ... unless the gate is told to go by the limit alone.
    strict = cfg.model_copy(update={"slice_significance": None})
    assert not decide_promotion(ok, METRICS | {"student": {"accuracy": 0.95, "latency_p50_ms": 2.0}}, True, [],
                                strict, champion=champion, challenger_slices=noise_on_a).passed
    # Overall drop over the limit.
    decision = decide_promotion(ok, METRICS, True, [], cfg, champion=champion, challenger_slices=champion["slices"])
    assert not decision.passed and any("drop 0.020 (over the limit 0.01)" in r for r in decision.reasons)
    # A drop on a slice below min_slice_size is reported, not gated.
    small_drop = _slices({"a": (20, 20), "b": (18, 20), "c": (2, 5)})
    decision = decide_promotion(ok, METRICS | {"student": {"accuracy": 0.95, "latency_p50_ms": 2.0}}, True, [],
                                cfg, champion=champion, challenger_slices=small_drop)
    assert decision.passed, decision.reasons
    assert any("label=c (n=5)" in r and "not gated" in r for r in decision.reasons)


def test_a_regression_on_the_shifted_holdout_blocks_promotion():
    ok, cfg = GateReport(True, []), PromoteConfig(max_slice_drop_vs_champion=0.05, min_slice_size=10)
    same = _slices({"a": (20, 20)})
    champion = {"version": "3", "accuracy": 0.95,
                "slices": same | {"holdout=shifted": {"n": 40, "accuracy": 0.80}}}
    better = METRICS | {"student": {"accuracy": 0.95, "latency_p50_ms": 2.0}}
    worse = decide_promotion(ok, better, True, [], cfg, champion=champion,
                             challenger_slices=same | {"holdout=shifted": {"n": 40, "accuracy": 0.55}})
    assert not worse.passed
    assert any("slice holdout=shifted (n=40)" in r for r in worse.reasons)
    fixed = decide_promotion(ok, better, True, [], cfg, champion=champion,
                             challenger_slices=same | {"holdout=shifted": {"n": 40, "accuracy": 0.90}})
    assert fixed.passed, fixed.reasons
    assert "slice holdout=shifted (n=40): accuracy 0.900 vs champion v3's 0.800 (within the limit 0.05)" \
        in fixed.reasons


def test_label_accuracy_counts_each_label():
    assert label_accuracy(["a", "a", "b"], ["a", "b", "b"]) == {
        "label=a": {"n": 2, "accuracy": 0.5}, "label=b": {"n": 1, "accuracy": 1.0}}


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
