"""Which training prompts a paid teacher answers (lm_select): the rules, the budget, and the stage end to end."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pandas as pd
import pytest

from distill.config import ConfigError, LMSelectConfig, config_from_dict
from distill.lm import select as sel
from tests.conftest import make_examples
from tests.lm_tiny import save_tiny_lm, tiny_tokenizer


def unit(rows) -> np.ndarray:
    points = np.asarray(rows, dtype=float)
    return points / np.linalg.norm(points, axis=1, keepdims=True)


# Four tight clusters on the unit circle: 0-2 near east, 3-5 near north, 6-8 near west, 9-11 near south.
ANGLES = [0, 0.05, 0.1, 1.57, 1.6, 1.65, 3.14, 3.1, 3.2, 4.7, 4.72, 4.75]
POINTS = unit([[np.cos(a), np.sin(a)] for a in ANGLES])


def cluster(i: int) -> int:
    return i // 3


def test_k_center_covers_every_cluster_before_repeating_one_and_keeps_away_from_what_is_paid():
    picks = sel.k_center(POINTS, [], range(12), 4)
    assert sorted(map(cluster, picks)) == [0, 1, 2, 3]
    # Clusters 0 and 1 are paid for: the next two come from the other two.
    picks = sel.k_center(POINTS, [0, 3], [i for i in range(12) if i not in (0, 3)], 2)
    assert sorted(map(cluster, picks)) == [2, 3]


def test_each_rule_picks_what_it_says_and_never_a_paid_prompt():
    uncertainty = np.array([0.1, 0.2, 0.3, 2.0, 2.1, 2.2, 1.0, 1.1, 1.2, 0.4, 0.5, 0.6])
    paid = [0, 9]  # east and south
    unpaid = [i for i in range(12) if i not in paid]
    assert sel.pick("uncertainty", uncertainty, POINTS, paid, unpaid, 3) == [5, 4, 3]  # most uncertain first
    diverse = sel.pick("diversity", uncertainty, POINTS, paid, unpaid, 2)
    assert sorted(map(cluster, diverse)) == [1, 2]  # the clusters nothing was paid in
    # Among the 2 x 2 most uncertain (5, 4, 3, 8), spread out: one from cluster 1, then cluster 2's.
    both = sel.pick("uncertainty_diversity", uncertainty, POINTS, paid, unpaid, 2, candidate_factor=2)
    assert sorted(map(cluster, both)) == [1, 2] and set(both) <= {3, 4, 5, 8}
    for rule in ("uncertainty", "diversity", "uncertainty_diversity"):
        assert not set(sel.pick(rule, uncertainty, POINTS, paid, unpaid, 5)) & set(paid)
    assert sel.pick("uncertainty", uncertainty, POINTS, paid, unpaid, 50) == unpaid
    with pytest.raises(ValueError, match="unknown lm.select.rule"):
        sel.pick("loudest", uncertainty, POINTS, paid, unpaid, 2)


# Eight requests near one direction, four near another, one alone far from both (in 3-D).
CROWD = np.vstack([np.array([1.0, 0, 0]) + 0.05 * np.random.default_rng(0).normal(size=(8, 3)),
                   np.array([0, 1.0, 0]) + 0.05 * np.random.default_rng(1).normal(size=(4, 3)), [[-1.0, -1.0, 0.3]]])
CROWD = unit(CROWD)


def crowd(i: int) -> str:
    return "big" if i < 8 else "small" if i < 12 else "outlier"


def test_coverage_picks_prompts_that_stand_for_many_where_k_center_reaches_for_the_outlier():
    everything = range(len(CROWD))
    assert [crowd(i) for i in sel.coverage(CROWD, [], everything, 2)] == ["big", "small"]
    assert "outlier" in [crowd(i) for i in sel.k_center(CROWD, [], everything, 2)]
    # Once the big group is paid for, the next one stands for the small group.
    assert [crowd(i) for i in sel.coverage(CROWD, [0, 1], range(2, 13), 1)] == ["small"]
    # Weights say where covering matters: with only the outlier weighted, the outlier is picked.
    weights = np.zeros(len(CROWD))
    weights[12] = 1.0
    assert sel.coverage(CROWD, [], everything, 1, weights) == [12]
    assert sel.coverage(CROWD, [], [3, 4], 5) == [3, 4]  # a budget past the candidates takes them all


def test_uncertainty_coverage_covers_where_the_student_is_unsure_and_coverage_ignores_it():
    uncertainty = np.r_[np.full(8, 0.1), np.full(4, 3.0), [np.nan]]  # the paid outlier is not scored
    paid, unpaid = [12], list(range(12))
    assert [crowd(i) for i in sel.pick("uncertainty_coverage", uncertainty, CROWD, paid, unpaid, 1)] == ["small"]
    assert [crowd(i) for i in sel.pick("coverage", uncertainty, CROWD, paid, unpaid, 1)] == ["big"]
    for rule in ("coverage", "uncertainty_coverage"):
        picks = sel.pick(rule, uncertainty, CROWD, paid, unpaid, 6)
        assert len(picks) == len(set(picks)) == 6 and not set(picks) & set(paid)


def test_the_first_round_is_chosen_by_the_rules_own_measure_of_spread():
    def score(rows, pool, unpaid):
        return (None if rows is None else np.ones(len(pool))), CROWD, None

    first = {}
    for rule in ("coverage", "uncertainty_coverage", "diversity"):
        teacher = FakeTeacher()
        sel.select_active(pool_of(13), teacher, score, LMSelectConfig(strategy="active", max_calls=4, rounds=2,
                                                                       rule=rule), seed=0)
        first[rule] = sorted(crowd(int(p[1:])) for p in teacher.asked[:2])
    assert first["coverage"] == first["uncertainty_coverage"] == ["big", "small"]
    assert first["diversity"] == ["big", "outlier"]  # k-center


def pool_of(n: int) -> pd.DataFrame:
    return pd.DataFrame({"prompt_id": [f"p{i:03d}" for i in range(n)], "request": [f"request {i}" for i in range(n)]})


class FakeTeacher:
    """Answers every prompt (or stops at a token budget), counting what it was asked."""

    def __init__(self, stop_after: int | None = None):
        self.asked: list[str] = []
        self.stop_after = stop_after

    def __call__(self, frame: pd.DataFrame):
        ids = frame["prompt_id"].tolist()
        if self.stop_after is not None:
            ids = ids[:max(0, self.stop_after - len(self.asked))]
        self.asked += ids
        rows = [{"prompt_id": i} for i in ids]
        return rows, {"calls": len(ids), "requests": len(ids), "dataset_tokens": 10 * len(ids),
                      "stopped_by_budget": len(ids) < len(frame)}


def fake_scores(pool_size: int, drop: float = 0.5):
    """Uncertainty that falls by ``drop`` per round trained; embeddings on a circle."""
    seen: list[int] = []

    def score(rows, pool, unpaid):
        assert len(unpaid) == len(set(unpaid)) and max(unpaid) < len(pool)
        seen.append(0 if rows is None else len(rows))
        angles = np.linspace(0, 2 * np.pi, pool_size, endpoint=False)
        base = np.linspace(1.0, 2.0, pool_size)
        trained = sum(1 for s in seen if s)
        return base * (1 - drop) ** trained, unit(np.c_[np.cos(angles), np.sin(angles)]), 0.1 if rows else None

    return score, seen


@pytest.mark.parametrize(("pool_size", "max_calls", "rounds"), [(40, 13, 4), (40, 40, 3), (7, 5, 10), (30, None, 4)])
def test_active_selection_never_sends_more_than_the_budget(pool_size, max_calls, rounds):
    cfg = LMSelectConfig(strategy="active", max_calls=max_calls, rounds=rounds)
    teacher = FakeTeacher()
    score, _ = fake_scores(pool_size)
    rows, done, spend, stopped = sel.select_active(pool_of(pool_size), teacher, score, cfg, seed=0)
    budget = cfg.budget(pool_size)
    assert budget == (max_calls if max_calls else 15)
    assert len(teacher.asked) == len(set(teacher.asked)) == budget == len(rows) == spend["calls"]
    assert sum(r.sent for r in done) == budget and stopped in ("budget", "pool")
    assert [r.paid_total for r in done] == list(np.cumsum([r.sent for r in done]))
    # The rounds after the first were scored by a student: the unpaid prompts' uncertainty is recorded.
    assert done[0].pool_uncertainty is None and all(r.pool_uncertainty is not None for r in done[1:])


def test_active_selection_stops_at_a_plateau_and_at_the_teachers_token_budget():
    pool = pool_of(40)
    score, seen = fake_scores(40, drop=0.01)  # uncertainty barely falls
    cfg = LMSelectConfig(strategy="active", max_calls=20, rounds=4, min_uncertainty_drop=0.05)
    teacher = FakeTeacher()
    rows, done, _, stopped = sel.select_active(pool, teacher, score, cfg, seed=0)
    assert stopped == "plateau" and len(teacher.asked) == 10 < 20  # rounds 1 and 2, then round 3 found no progress
    assert done[-1].sent == 0 and seen == [0, 5, 10]
    # The teacher's own token budget ends the rounds; nothing past it is asked again.
    teacher = FakeTeacher(stop_after=7)
    rows, done, spend, stopped = sel.select_active(pool, teacher, fake_scores(40)[0],
                                                   LMSelectConfig(strategy="active", max_calls=20), seed=0)
    assert stopped == "teacher budget" and len(rows) == 7 and spend["stopped_by_budget"]


def test_rule_uncertainty_starts_from_a_seeded_random_round_without_a_student():
    score, seen = fake_scores(30)
    cfg = LMSelectConfig(strategy="active", max_calls=8, rounds=2, rule="uncertainty")
    first, second = FakeTeacher(), FakeTeacher()
    sel.select_active(pool_of(30), first, score, cfg, seed=3)
    sel.select_active(pool_of(30), second, fake_scores(30)[0], cfg, seed=3)
    assert first.asked == second.asked and seen == [4]  # the seed round needed no scoring
    # The second round is the 4 most uncertain of the unpaid (uncertainty grows with the index).
    unpaid = [f"p{i:03d}" for i in range(30) if f"p{i:03d}" not in first.asked[:4]]
    assert first.asked[4:] == sorted(unpaid)[-4:][::-1]


def test_one_round_of_coverage_chooses_the_whole_budget_without_an_interim_student():
    score, seen = fake_scores(40)
    teacher = FakeTeacher()
    cfg = LMSelectConfig(strategy="active", max_calls=6, rounds=1, rule="coverage")
    rows, done, _, stopped = sel.select_active(pool_of(40), teacher, score, cfg, seed=0)
    assert seen == [0] and len(done) == 1 and done[0].pool_uncertainty is None  # the starting student's embeddings only
    assert len(rows) == len(set(teacher.asked)) == 6 and stopped == "budget"
    # On a circle, six prompts that stand for the pool are spread round it: none two neighbours.
    picked = sorted(int(p[1:]) for p in teacher.asked)
    assert min(np.diff(picked + [picked[0] + 40])) >= 4
    with pytest.raises(ConfigError, match="rounds=1 .*rule uncertainty_coverage would never see an uncertainty"):
        config_from_dict({"lm": {"select": {"strategy": "active", "rounds": 1, "rule": "uncertainty_coverage"},
                                 "api": {"model": "m"}, "train": {"mode": "sequence"}}})


def test_round_sizes_split_the_budget():
    assert sel.round_sizes(10, 4) == [3, 3, 2, 2] and sel.round_sizes(3, 5) == [1, 1, 1]


def test_random_and_active_need_a_black_box_teacher():
    with pytest.raises(ConfigError, match="lm.select.strategy=active.*lm.api is not set"):
        config_from_dict({"lm": {"select": {"strategy": "active"}}})
    cfg = config_from_dict({"lm": {"select": {"strategy": "random", "share": 0.25},
                                   "api": {"model": "m"}, "train": {"mode": "sequence"}}})
    assert cfg.lm.select.budget(10) == 3 and LMSelectConfig().budget(10) == 10


def test_the_stage_pays_for_the_rounds_and_generation_asks_only_for_the_chosen(tmp_path, monkeypatch):
    """lm_select (active) on a tiny student and a fake endpoint: the budget is spent, lm_generate finds the
    chosen answers in the response cache and adds only the held-out prompts; a selection for another prompt
    set is refused."""
    from distill.lm import client as client_module
    from distill.lm import generate as gen
    from distill.lm.prompts import LMDataError, build_prompts, instructions, write_prompts

    sent: list[str] = []

    def endpoint(request: httpx.Request) -> httpx.Response:
        text = json.loads(request.content)["messages"][-1]["content"]
        sent.append(text)
        return httpx.Response(200, json={"choices": [{"message": {"role": "assistant", "content": f"ok {text}"},
                                                      "finish_reason": "stop"}],
                                         "usage": {"prompt_tokens": 12, "completion_tokens": 4}})

    real = client_module.ChatClient
    monkeypatch.setattr(client_module, "ChatClient", lambda cfg: real(cfg, transport=httpx.MockTransport(endpoint)))
    examples = make_examples(per_label=6)
    folder = save_tiny_lm(tmp_path / "tokenizer", tiny_tokenizer(examples["text"].tolist()))
    cfg = config_from_dict({"lm": {
        "api": {"model": "remote", "cache_dir": str(tmp_path / "cache"), "api_key_env": None,
                "price_prompt_per_1k": 1.0, "price_completion_per_1k": 2.0},
        "select": {"strategy": "active", "max_calls": 6, "rounds": 3, "epochs": 1},
        "student": {"init": "random", "num_layers": 1, "hidden_size": 32, "num_heads": 2, "num_kv_heads": 1,
                    "intermediate_size": 64, "max_position_embeddings": 512},
        "generate": {"max_new_tokens": 4, "batch_size": 4},
        "train": {"mode": "sequence", "batch_size": 4, "device": "cpu", "max_length": 128},
        "prompts": {"train_size": 14, "heldout_size": 3}}})
    labels = sorted(examples["label"].unique())
    prompts = build_prompts(examples.iloc[::2], examples.iloc[1::2], cfg.lm.prompts, 0)
    write_prompts(tmp_path / "prompts.parquet", prompts, {**instructions(cfg.lm.prompts, labels), "labels": labels})

    chosen = sel.run(cfg, tmp_path / "prompts.parquet", folder, tmp_path / "selection.json")
    pool, heldout = int((prompts["split"] == "train").sum()), int((prompts["split"] == "heldout").sum())
    assert pool > 6 and len(chosen.selected) == 6 == len(sent) and chosen.pool == pool
    assert [r.sent for r in chosen.rounds] == [2, 2, 2] and chosen.stopped == "budget"
    assert chosen.spend["calls"] == 6 and chosen.spend["dataset_tokens"] == 6 * 16
    assert chosen.spend["dataset_cost"] == pytest.approx(6 * (12 * 1.0 + 4 * 2.0) / 1000)
    record = json.loads((tmp_path / "selection.json").read_text())
    assert record["selected"] == chosen.selected and "seconds" not in record

    identity = gen.teacher_identity(cfg, folder)
    result = gen.run(cfg, tmp_path / "prompts.parquet", folder, tmp_path / "completions.parquet",
                     sel.read_selection(tmp_path / "selection.json", tmp_path / "prompts.parquet", identity))
    frame, _ = gen.read_completions(tmp_path / "completions.parquet")
    assert set(frame.loc[frame["split"] == "train", "prompt_id"]) == set(chosen.selected)
    assert (frame["split"] == "heldout").sum() == heldout and len(sent) == 6 + heldout  # the chosen: from the cache
    assert result.api["calls"] == 6 + heldout and result.api["cache_hits"] == 6
    assert result.api["dataset_tokens"] == (6 + heldout) * 16
    # The student of 6 of the pool's prompts trains as many steps as one of all of them (keep_steps).
    from distill.lm import train

    trained = train.run(cfg, tmp_path / "completions.parquet", folder, None)
    epochs = -(-cfg.lm.train.epochs * pool // 6)
    assert epochs > cfg.lm.train.epochs and trained.steps == epochs * 2  # 6 completions, batches of 4
    assert LMSelectConfig(keep_steps=False).train_epochs(3, 6, pool) == 3
    assert LMSelectConfig().train_epochs(3, pool, pool) == 3 and LMSelectConfig().train_epochs(3, 6, None) == 3

    other = build_prompts(examples.iloc[1::2], examples.iloc[::2], cfg.lm.prompts, 0)
    write_prompts(tmp_path / "other.parquet", other, {**instructions(cfg.lm.prompts, labels), "labels": labels})
    with pytest.raises(LMDataError, match="another prompt set.*dvc repro lm_select"):
        sel.read_selection(tmp_path / "selection.json", tmp_path / "other.parquet", identity)
    with pytest.raises(LMDataError, match="teacher.*dvc repro lm_select"):
        sel.read_selection(tmp_path / "selection.json", tmp_path / "prompts.parquet", "api:" + "0" * 64)


def test_the_flow_reports_the_teachers_bill_from_the_stage_results():
    from flows.lm import spend_line, teacher_spend
    from tasks.dvc import StageRun

    api = {"calls": 160, "dataset_tokens": 30_000, "dataset_cost": 0.0123, "total_tokens": 0, "cache_hits": 160}
    runs = [StageRun("lm_select", False, "", {"calls": 96, "pool": 192, "rounds": [{}, {}, {}, {}]}),
            StageRun("lm_generate", True, "", {"rows": 160, "completion_tokens": 2400, "api": api})]
    spend = teacher_spend(runs)
    assert spend == {"calls": 160, "tokens": 30_000, "estimated_cost": 0.0123, "train_calls": 96, "train_pool": 192,
                     "select_rounds": 4}
    assert spend_line(spend, "active") == ("teacher: 160 calls (96 of 192 training prompts, lm.select.strategy "
                                           "active), 30,000 tokens, estimated cost 0.0123")
    # A local teacher: its rows are the calls, its completion tokens the tokens, no cost.
    local = teacher_spend([StageRun("lm_generate", False, "", {"rows": 80, "completion_tokens": 900})])
    assert local["calls"] == 80 and local["tokens"] == 900 and local["estimated_cost"] is None
