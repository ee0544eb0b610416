import numpy as np

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
