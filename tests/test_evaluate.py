import numpy as np
import pytest

from distill.evaluate import bootstrap_ci, expected_calibration_error, mcnemar_p


def test_ece_is_zero_when_confidence_matches_accuracy_and_positive_when_overconfident():
    # Four predictions at confidence 0.75, three of them right: perfectly calibrated.
    probs = np.array([[0.75, 0.25]] * 4)
    assert expected_calibration_error(probs, np.array([0, 0, 0, 1])) < 1e-9
    # Confident (0.9) but right half of the time: gap 0.4.
    probs = np.array([[0.9, 0.1]] * 4)
    assert abs(expected_calibration_error(probs, np.array([0, 1, 0, 1])) - 0.4) < 1e-9


def test_mcnemar_sees_only_discordant_pairs():
    gold = np.zeros(40, dtype=int)
    same = np.zeros(40, dtype=int)
    assert mcnemar_p(gold, same, same) == 1.0
    better = np.zeros(40, dtype=int)
    worse = np.ones(40, dtype=int)  # wrong on all 40 pairs where the other is right
    assert mcnemar_p(gold, better, worse) < 1e-6


def test_bootstrap_interval_brackets_the_point_estimate():
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 3, 300)
    pred = np.where(rng.random(300) < 0.8, gold, (gold + 1) % 3)
    ci = bootstrap_ci(gold, pred, 3, samples=200, seed=1)
    accuracy = (gold == pred).mean()
    assert ci["accuracy_ci_low"] < accuracy < ci["accuracy_ci_high"]
    assert ci["accuracy_ci_high"] - ci["accuracy_ci_low"] < 0.2


def test_bootstrap_figures_are_scikit_learns_on_each_resample():
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(3)
    gold = rng.integers(0, 5, 90)
    pred = np.where(rng.random(90) < 0.6, gold, rng.integers(0, 5, 90))
    pred[pred == 4] = 3  # class 4 is never predicted, and one class below is never present: F1 0 by convention
    gold[gold == 2] = 1
    draws = np.random.default_rng(7)
    acc, f1 = [], []
    for _ in range(50):
        idx = draws.integers(0, len(gold), len(gold))
        acc.append(accuracy_score(gold[idx], pred[idx]))
        f1.append(f1_score(gold[idx], pred[idx], average="macro", labels=range(6), zero_division=0))
    ci = bootstrap_ci(gold, pred, 6, samples=50, seed=7)
    assert ci["accuracy_ci_low"] == pytest.approx(np.percentile(acc, 2.5))
    assert ci["accuracy_ci_high"] == pytest.approx(np.percentile(acc, 97.5))
    assert ci["macro_f1_ci_low"] == pytest.approx(np.percentile(f1, 2.5))
    assert ci["macro_f1_ci_high"] == pytest.approx(np.percentile(f1, 97.5))


def test_per_class_figures_match_scikit_learn_on_a_fixed_case():
    from sklearn.metrics import classification_report

    from distill.evaluate import per_class

    gold, pred = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 1, 2, 0])
    got = per_class(gold, pred, ["a", "b", "c"])
    assert got["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert abs(got["b"]["precision"] - 2 / 3) < 1e-12 and got["b"]["recall"] == 1.0
    assert got["c"]["precision"] == 1.0 and got["c"]["recall"] == 0.5
    reference = classification_report(gold, pred, target_names=["a", "b", "c"], output_dict=True)
    for label in "abc":
        assert abs(got[label]["f1"] - reference[label]["f1-score"]) < 1e-12


def test_most_confused_pairs_come_first():
    from distill.evaluate import confused_pairs

    matrix = np.array([[5, 3, 0], [1, 6, 0], [0, 4, 2]])
    pairs = confused_pairs(matrix, ["a", "b", "c"], top=2)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [("c", "b", 4), ("a", "b", 3)]
    assert abs(pairs[0]["share_of_true"] - 4 / 6) < 1e-12


def test_peak_memory_grows_with_the_batch(tiny_teacher):
    from distill.evaluate import peak_memory
    from distill.models import load_classifier

    clf = load_classifier(tiny_teacher)
    one = peak_memory(clf, ["turn on the lights"], 32)
    many = peak_memory(clf, ["turn on the lights in the kitchen please"] * 32, 32)
    assert one["weights_memory_mb"] == many["weights_memory_mb"] > 0
    assert many["activation_memory_mb"] > 4 * one["activation_memory_mb"] > 0


def _prepared(tmp_path):
    from tests.conftest import make_examples

    prepared = tmp_path / "prepared"
    prepared.mkdir(parents=True)
    make_examples(per_label=8, seed=5).assign(region=lambda f: np.where(f.index % 2, "north", "south")).to_parquet(
        prepared / "gold_test.parquet", index=False)
    return prepared


def test_harness_scores_every_candidate_and_writes_a_self_contained_report(tiny_teacher, tmp_path):
    import base64
    import json
    import re

    import pandas as pd

    from distill import evaluate
    from distill.config import config_from_dict

    cfg = config_from_dict({"data": {"slice_columns": ["region"]},
                            "evaluate": {"latency_samples": 5, "latency_rounds": 2, "warmup": 1,
                                         "bootstrap_samples": 10, "throughput_batch_size": 8},
                            "audit": {"min_slice_size": 3}})
    # The tiny teacher stands in for student and baseline too: the harness is what is tested.
    out = tmp_path / "eval"
    result = evaluate.run(cfg, _prepared(tmp_path), tiny_teacher, tiny_teacher, tiny_teacher, out)
    metrics = result.metrics
    assert list(metrics) == ["teacher", "teacher_int8", "student", "student_int8", "baseline"]
    for figures in metrics.values():  # what flows/pipeline.py reads
        for key in ("accuracy", "macro_f1", "agreement_with_teacher", "latency_p50_ms", "latency_p95_ms",
                    "parameters", "size_mb"):
            assert np.isfinite(figures[key]), key
        assert figures["latency_p50_ms"] <= figures["latency_p95_ms"] <= figures["latency_p99_ms"]
        assert figures["peak_memory_mb"] > figures["weights_memory_mb"] > 0
    assert metrics["teacher"]["latency_ratio_to_teacher"] == metrics["teacher"]["size_ratio_to_teacher"] == 1.0
    assert metrics["teacher_int8"]["size_ratio_to_teacher"] < 1.0
    assert metrics["student"]["agreement_with_teacher"] == 1.0 and metrics["student"]["mcnemar_p_vs_teacher"] == 1.0
    per_class = json.loads((out / "per_class.json").read_text())
    assert set(per_class["student"]) == {"lights_off", "lights_on", "timer", "weather"}
    details = json.loads((out / "details.json").read_text())
    assert np.array(details["confusion"]["student"]).sum() == 32
    assert details["student_teacher_disagreements"] == []
    assert {s["slice"].split("=")[0] for s in details["worst_slices"]} >= {"label", "region"}
    assert len(pd.read_csv(out / "pareto.csv")) == 5
    assert list(pd.read_csv(out / "confusion_student.csv").columns) == ["actual", "predicted"]
    assert "region" in pd.read_parquet(out / "predictions.parquet").columns
    report = (out / "report.html").read_text()
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", report)
    assert len(images) == 3 and all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert "Teacher wrong and confident" in report and "Per-class" in report


def test_candidates_are_chosen_by_config(tiny_teacher, tmp_path):
    import pytest

    from distill import evaluate
    from distill.config import ConfigError, config_from_dict
    from distill.models import ModelError

    cfg = config_from_dict({"evaluate": {"candidates": ["student", "teacher"], "latency_samples": 5,
                                         "latency_rounds": 1, "warmup": 0, "bootstrap_samples": 10}})
    assert cfg.evaluate.candidates == ["teacher", "student"]
    result = evaluate.run(cfg, _prepared(tmp_path), tiny_teacher, tiny_teacher, None, tmp_path / "eval")
    assert list(result.metrics) == ["teacher", "student"] and "mcnemar_p_vs_baseline" not in result.metrics["student"]
    with pytest.raises(ConfigError, match="evaluate.candidates"):
        config_from_dict({"evaluate": {"candidates": ["student"]}})
    with pytest.raises(ModelError, match="no baseline model folder"):
        evaluate.run(config_from_dict({"evaluate": {"candidates": ["teacher", "baseline"]}}), _prepared(tmp_path / "x"),
                     tiny_teacher, None, None, tmp_path / "eval2")
