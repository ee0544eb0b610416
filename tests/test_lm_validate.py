"""The LM teacher gate: the figures of a teacher's answers, the pure decision, and the stage on a tiny teacher."""

from __future__ import annotations

import json

import pytest

from distill.config import LMTeacherGateConfig, config_from_dict
from distill.gates import check_lm_teacher
from distill.lm.validate import require_passed_lm_gate, score_answers
from distill.models import ModelError
from tests.conftest import make_examples
from tests.lm_tiny import save_tiny_lm, tiny_tokenizer

LABELS = ["HassTurnOn", "HassTurnOff", "HassLightSet"]


def row(answer: str, reference: str = "HassTurnOn", finished: bool = True, found: bool = True) -> dict:
    return {"request": "turn on the lamp", "reference": reference, "completion": answer, "answer": answer,
            "finished": finished, "answer_found": found}


def test_answers_are_scored_on_task_format_refusals_and_safety():
    rows = [row("HassTurnOn"), row("hass_turn_on."), row("The intent is HassTurnOn"),
            row("HassTurnOff"), row("I'm sorry, I cannot help with that."), row("I will kill you")]
    figures = score_answers(rows, LABELS)
    assert figures["prompts"] == 6
    assert figures["task_exact"] == pytest.approx(2 / 6)       # normalised: case, underscores, punctuation
    assert figures["task_contains"] == pytest.approx(3 / 6)    # ... or the reference inside the answer
    assert figures["format_adherence"] == pytest.approx(3 / 6)  # one of the labels, nothing else
    assert figures["refusal_rate"] == pytest.approx(1 / 6)
    assert figures["unsafe_rate"] == pytest.approx(1 / 6)
    assert figures["majority_answer"] == "hass turn on" and figures["majority_score"] == 1.0  # every reference


def test_without_labels_the_format_is_an_answer_that_ended_and_a_chain_of_thought_needs_its_marker():
    rows = [row("the kitchen"), row("the kitchen and the", finished=False), row("  ")]
    assert score_answers(rows, None)["format_adherence"] == pytest.approx(1 / 3)
    assert score_answers([row("HassTurnOn", found=False)], LABELS, chain_of_thought=True)["format_adherence"] == 0.0


def figures(**changes) -> dict:
    return {"prompts": 32, "task_exact": 0.8, "task_contains": 0.9, "format_adherence": 0.95, "refusal_rate": 0.0,
            "unsafe_rate": 0.0, "majority_answer": "hass turn on", "majority_score": 0.125, **changes}


def test_a_teacher_that_does_the_task_passes_with_a_reason_per_check():
    report = check_lm_teacher(figures(), LMTeacherGateConfig())
    assert report.passed and len(report.reasons) == 5, report.reasons
    assert report.reasons[0] == "teacher task_exact 0.800 >= minimum 0.500 on 32 held-out prompts"
    assert report.reasons[1] == ("teacher task_exact 0.800 is +0.675 against always answering 'hass turn on' "
                                 "(0.125; minimum gain 0.100)")


def test_a_teacher_near_chance_on_two_labels_fails_though_over_the_minimum_score():
    """The packaged teacher on the sentiment set, with four worked examples: 0.594, 27 of 32 answers
    'positive', against 0.5 for always answering 'negative'."""
    report = check_lm_teacher(figures(task_exact=0.594, majority_answer="negative", majority_score=0.5),
                              LMTeacherGateConfig())
    assert not report.passed and "+0.094 against always answering 'negative'" in report.reasons[1]
    assert check_lm_teacher(figures(task_exact=0.594, majority_score=0.5), LMTeacherGateConfig(
        min_gain_over_majority=0.05)).passed


@pytest.mark.parametrize("changes, words", [({"task_exact": 0.0}, "task_exact 0.000 < minimum"),
                                            ({"format_adherence": 0.5}, "format adherence 0.500 < minimum"),
                                            ({"refusal_rate": 0.2}, "refusal rate 0.200 > maximum"),
                                            ({"unsafe_rate": 1 / 32}, "unsafe rate 0.031 > maximum")])
def test_each_check_fails_on_its_own_and_says_what_to_do(changes, words):
    report = check_lm_teacher(figures(**changes), LMTeacherGateConfig())
    assert not report.passed
    assert any(words in r for r in report.reasons), report.reasons
    assert "lm.teacher_gate" in report.reasons[-1]


def test_without_a_configured_metric_the_gate_scores_the_tasks_own():
    from distill.lm.prompts import TASKS

    rewrite = check_lm_teacher(figures(task_exact=0.0, task_contains=0.76), LMTeacherGateConfig(),
                               TASKS["rewrite"]["metric"])
    assert rewrite.passed and rewrite.reasons[0].startswith("teacher task_contains 0.760 >= minimum")
    assert not check_lm_teacher(figures(task_exact=0.0, task_contains=0.76), LMTeacherGateConfig(),
                                TASKS["route"]["metric"]).passed


def test_the_task_metric_is_the_users_choice():
    cfg = LMTeacherGateConfig(metric="task_contains", min_task_score=0.85)
    assert check_lm_teacher(figures(), cfg).passed
    assert not check_lm_teacher(figures(task_contains=0.84), cfg).passed


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random teacher and a prompt set: it answers gibberish."""
    from distill.lm.prompts import build_prompts, instructions, write_prompts

    root = tmp_path_factory.mktemp("lm_validate")
    examples = make_examples(per_label=6)
    teacher = save_tiny_lm(root / "teacher", tiny_tokenizer(examples["text"].tolist()), seed=1)
    cfg = config_from_dict({"lm": {"prompts": {"train_size": 8, "heldout_size": 6},
                                   "generate": {"max_new_tokens": 6, "batch_size": 4}}})
    labels = sorted(examples["label"].unique())
    write_prompts(root / "prompts.parquet", build_prompts(examples.iloc[::2], examples.iloc[1::2], cfg.lm.prompts, 0),
                  {**instructions(cfg.lm.prompts, labels), "labels": labels})
    return root, teacher, cfg


def test_the_stage_fails_a_teacher_that_cannot_do_the_task_and_generation_is_refused(tiny):
    from distill.lm import validate
    from distill.lm.generate import teacher_identity

    root, teacher, cfg = tiny
    out = root / "gate-default"
    result = validate.run(cfg, root / "prompts.parquet", teacher, out)
    assert not result.passed and result.metrics["prompts"] == 6
    assert result.metrics["task_exact"] == 0.0  # a random tiny model never names the intent
    gate = json.loads((out / "gate.json").read_text())
    assert gate["passed"] is False and gate["fingerprint"] == teacher_identity(cfg, teacher)
    assert "LM teacher gate: **failed**" in (out / "report.md").read_text()
    assert len((out / "report.md").read_text().split("\n| ")) > 2  # the answers beside their references
    with pytest.raises(ModelError, match="failed its gate.*Generation with it is refused"):
        require_passed_lm_gate(out / "gate.json", teacher_identity(cfg, teacher))


def test_a_gate_passed_by_another_teacher_or_not_run_is_refused(tiny):
    from distill.lm import validate
    from distill.lm.generate import teacher_identity

    root, teacher, cfg = tiny
    lenient = cfg.model_copy(update={"lm": cfg.lm.model_copy(update={"teacher_gate": LMTeacherGateConfig(
        min_task_score=0, min_gain_over_majority=-1, min_format_adherence=0, max_refusal_rate=1,
        max_unsafe_rate=1)})})
    out = root / "gate-lenient"
    assert validate.run(lenient, root / "prompts.parquet", teacher, out).passed
    require_passed_lm_gate(out / "gate.json", teacher_identity(cfg, teacher))  # this teacher: goes on
    with pytest.raises(ModelError, match="judged another LM teacher"):
        require_passed_lm_gate(out / "gate.json", "another-fingerprint")
    with pytest.raises(ModelError, match="has not run; run `dvc repro lm_validate_teacher`"):
        require_passed_lm_gate(root / "nowhere/gate.json", teacher_identity(cfg, teacher))


def test_a_black_box_teacher_is_validated_through_the_cached_client_and_not_paid_twice(tmp_path, monkeypatch):
    """An endpoint that routes every request right passes; lm_generate then finds the validated prompts in the
    response cache and pays only for the others."""
    import httpx

    from distill.lm import client as client_module
    from distill.lm import generate as gen
    from distill.lm import validate
    from distill.lm.prompts import build_prompts, instructions, write_prompts

    examples = make_examples(per_label=4)
    truth = dict(zip(examples["text"], examples["label"]))
    sent: list[str] = []

    def endpoint(request: httpx.Request) -> httpx.Response:
        text = json.loads(request.content)["messages"][-1]["content"]
        sent.append(text)
        return httpx.Response(200, json={"choices": [{"message": {"role": "assistant", "content": truth[text]},
                                                      "finish_reason": "stop"}],
                                         "usage": {"prompt_tokens": 10, "completion_tokens": 2}})

    real = client_module.ChatClient
    monkeypatch.setattr(client_module, "ChatClient", lambda cfg: real(cfg, transport=httpx.MockTransport(endpoint)))
    folder = save_tiny_lm(tmp_path / "tokenizer", tiny_tokenizer(examples["text"].tolist()))
    cfg = config_from_dict({"lm": {"api": {"model": "remote", "cache_dir": str(tmp_path / "cache"), "api_key_env": None},
                                   "train": {"mode": "sequence"}, "prompts": {"train_size": 6, "heldout_size": 4},
                                   "teacher_gate": {"prompts": 3}}})
    labels = sorted(examples["label"].unique())
    write_prompts(tmp_path / "prompts.parquet", build_prompts(examples.iloc[::2], examples.iloc[1::2], cfg.lm.prompts, 0),
                  {**instructions(cfg.lm.prompts, labels), "labels": labels})
    result = validate.run(cfg, tmp_path / "prompts.parquet", folder, tmp_path / "gate")
    assert result.passed and result.metrics["task_exact"] == 1.0 and result.metrics["format_adherence"] == 1.0
    assert len(sent) == 3 and result.teacher == gen.api_fingerprint(cfg.lm.api)
    generated = gen.run(cfg, tmp_path / "prompts.parquet", folder, tmp_path / "completions.parquet")
    assert generated.rows == 10 and generated.reused == 3 and len(sent) == 10  # 7 new requests, 3 from the cache
