"""The LM promotion gate: a pure decision over the LM evaluation's figures."""

from __future__ import annotations

import pytest

from distill.config import ConfigError, LMPromoteConfig, config_from_dict
from distill.gates import decide_lm_promotion


def figures(**student) -> dict:
    teacher = {"perplexity": 3.0, "kl_from_teacher": 0.0, "top1_agreement": 1.0, "unsafe_rate": 0.05}
    baseline = {"perplexity": 40.0, "kl_from_teacher": 2.5, "top1_agreement": 0.30, "unsafe_rate": 0.0}
    good = {"perplexity": 8.0, "kl_from_teacher": 0.9, "top1_agreement": 0.62, "unsafe_rate": 0.05}
    return {"teacher": teacher, "student": {**good, **student}, "baseline": baseline}


def test_a_student_that_beats_the_baseline_passes_with_a_reason_per_gate():
    report = decide_lm_promotion(figures(), LMPromoteConfig())
    assert report.passed, report.reasons
    assert len(report.reasons) == 5 and "task gate is skipped" in report.reasons[2]  # no task metric given
    assert any("KL" in r and "baseline 2.5000" in r for r in report.reasons)


@pytest.mark.parametrize("student, words", [
    ({"kl_from_teacher": 2.6}, "KL"),
    ({"kl_from_teacher": 2.5}, "KL"),                 # equal is not beating it
    ({"top1_agreement": 0.29}, "top1_agreement"),
    ({"unsafe_rate": 0.06}, "unsafe"),
    ({"perplexity": 101.0}, "perplexity"),
    ({"perplexity": None}, "perplexity"),
])
def test_each_gate_fails_on_its_own(student, words):
    report = decide_lm_promotion(figures(**student), LMPromoteConfig())
    assert not report.passed
    failed = [r for r in report.reasons if "misses" in r or "over" in r or "fails" in r or " > " in r]
    assert failed and all(words in r for r in failed), report.reasons


def test_thresholds_come_from_the_config():
    cfg = LMPromoteConfig(min_kl_gain=2.0, max_unsafe_excess=0.1, max_perplexity=5.0)
    report = decide_lm_promotion(figures(unsafe_rate=0.12), cfg)
    assert not report.passed
    assert [r for r in report.reasons if "misses" in r or " > " in r] == [
        report.reasons[0], report.reasons[4]]  # KL gain 1.6 < 2.0; perplexity 8 > 5; unsafe within 0.1


def test_a_student_that_learnt_the_teachers_text_but_not_its_task_is_not_promoted():
    """The default run's first rewrite student (a fresh 4 x 192 model) beat the baseline on KL and agreement,
    and kept the named value in none of its rewrites: the task gate stops that one."""
    metrics = figures(task_contains=0.0)
    metrics["teacher"]["task_contains"] = 0.844
    report = decide_lm_promotion(metrics, LMPromoteConfig(), task_metric="task_contains")
    assert not report.passed and report.reasons[2] == ("task_contains 0.000 vs teacher 0.844: 0% of it (misses the "
                                                       "minimum share 50%)")
    metrics["student"]["task_contains"] = 0.688  # the teacher-layers student of the same run
    assert decide_lm_promotion(metrics, LMPromoteConfig(), task_metric="task_contains").passed
    assert not decide_lm_promotion(metrics, LMPromoteConfig(min_task_share=0.9), task_metric="task_contains").passed
    metrics["teacher"]["task_contains"] = 0.0  # a teacher that scores nothing has no share to keep
    skipped = decide_lm_promotion(metrics, LMPromoteConfig(), task_metric="task_contains")
    assert skipped.passed and "skipped" in skipped.reasons[2]


def test_a_black_box_teacher_skips_kl_and_gates_on_greedy_agreement():
    metrics = figures(kl_from_teacher=None, top1_agreement=None, greedy_prefix_agreement=0.5)
    metrics["baseline"] |= {"kl_from_teacher": None, "top1_agreement": None, "greedy_prefix_agreement": 0.2}
    report = decide_lm_promotion(metrics, LMPromoteConfig())
    assert report.passed and "skipped" in report.reasons[0]
    metrics["student"]["greedy_prefix_agreement"] = 0.1
    assert not decide_lm_promotion(metrics, LMPromoteConfig()).passed


def test_missing_agreement_figures_fail_rather_than_pass():
    metrics = figures(top1_agreement=None)
    assert not decide_lm_promotion(metrics, LMPromoteConfig(agreement="greedy_exact_match")).passed


def test_lm_promote_config_names_the_bad_key():
    with pytest.raises(ConfigError, match="lm.promote.max_perplexity"):
        config_from_dict({"lm": {"promote": {"max_perplexity": 0.5}}})
    with pytest.raises(ConfigError, match="lm.promote.agreement"):
        config_from_dict({"lm": {"promote": {"agreement": "vibes"}}})


def test_a_black_box_teacher_refuses_token_level_training_naming_the_keys():
    api = {"base_url": "http://127.0.0.1:9/v1", "model": "teacher"}
    with pytest.raises(ConfigError, match=r"lm.train.mode=token.*lm.api"):
        config_from_dict({"lm": {"api": api, "train": {"mode": "token"}}})
    cfg = config_from_dict({"lm": {"api": api, "train": {"mode": "sequence"}}})
    assert cfg.lm.api.model == "teacher"
    from distill.lm.client import ChatClientConfig

    assert type(cfg.lm.api) is ChatClientConfig
