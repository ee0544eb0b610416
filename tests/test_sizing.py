"""The student's shape from the deployment budget: timing, the budget, the choice, and the stages reading it."""

import json

import pytest

from distill import data, label, sizing, students, teacher
from distill.config import SizeConfig, config_from_dict
from distill.models import load_classifier
from tests.conftest import tiny_params

LATENCY = {"teacher": {"latency_p50_ms": 8.0}, "teacher_int8": {"latency_p50_ms": 3.0},
           "shape0": {"latency_p50_ms": 0.5}, "shape1": {"latency_p50_ms": 0.9}, "shape2": {"latency_p50_ms": 2.0}}
SHAPES = [sizing.candidate_shape(2, 128), sizing.candidate_shape(3, 192), sizing.candidate_shape(4, 256)]


def test_candidate_shapes_have_heads_of_width_64_and_a_wide_feed_forward():
    assert sizing.candidate_shape(3, 192) == {"num_layers": 3, "hidden_size": 192, "num_heads": 3,
                                              "intermediate_size": 768, "vocab_size": None}
    assert sizing.candidate_shape(2, 64)["num_heads"] == 2


def test_the_budget_says_which_shapes_fit_and_why_the_others_miss():
    latency = {**LATENCY, "shape1": {"latency_p50_ms": 1.1}}
    scores = sizing.judge(SizeConfig(min_speedup=8, min_speedup_int8=3, max_size_mb=30), SHAPES, latency,
                          [4_000_000, 6_000_000, 10_000_000])
    assert [s.fits for s in scores] == [True, False, False]
    assert scores[1].misses == ["7.3x the fp32 teacher < 8x", "2.7x the INT8 teacher < 3x"]
    assert scores[2].misses == ["4.0x the fp32 teacher < 8x", "1.5x the INT8 teacher < 3x", "40.0 MB > 30 MB"]
    assert scores[0].speedup == 16.0 and scores[0].size_mb == 16.0


def test_the_most_accurate_fitting_shape_wins_and_near_ties_go_to_the_faster():
    scores = sizing.judge(SizeConfig(min_speedup=0, min_speedup_int8=0), SHAPES, LATENCY, [1, 2, 3])
    for score, accuracy in zip(scores, [0.80, 0.83, 0.832]):
        score.val_accuracy = accuracy
    assert sizing.choose(scores, tolerance=0.005).num_layers == 3      # 0.83 is within 0.005 of 0.832, faster
    assert sizing.choose(scores, tolerance=0.0).num_layers == 4
    none_fit = sizing.judge(SizeConfig(min_speedup=100), SHAPES, LATENCY, [1, 2, 3])
    assert sizing.choose(none_fit, 0.005).num_layers == 2              # nothing fits: the fastest


def test_a_shape_over_the_memory_budget_alone_is_tried_with_the_largest_vocabulary_that_fits():
    cfg = SizeConfig(min_speedup=8, min_speedup_int8=3, max_size_mb=10, vocab_sizes=[16000, 8000, 4000])
    # 2 x 128 with 30,522 tokens: 4.4 M weights (17.6 MB), of which 3.9 M are the word embeddings
    latency = {**LATENCY, "shape1": {"latency_p50_ms": 1.1}}
    scores = sizing.judge(cfg, SHAPES, latency, [4_400_000, 6_000_000, 10_000_000])
    assert [(s.fits, s.slow) for s in scores] == [(False, False), (False, True), (False, True)]
    smaller = sizing.smaller_vocabularies(cfg, scores, 30522)
    # 16,000 leaves 4.4 M - 14,522 x 128 = 2.54 M (10.2 MB, over); 8,000 leaves 1.52 M (6.1 MB)
    assert smaller == [SHAPES[0] | {"vocab_size": 8000}]
    assert sizing.smaller_vocabularies(cfg.model_copy(update={"max_size_mb": 2}), scores, 30522) == []  # none fits
    assert sizing.smaller_vocabularies(cfg.model_copy(update={"max_size_mb": None}), scores, 30522) == []


@pytest.fixture
def labelled(tiny_cfg, tiny_teacher, tmp_path):
    prepared, teacher_dir, outputs = tmp_path / "prepared", tmp_path / "teacher", tmp_path / "logits.parquet"
    data.run(tiny_cfg, prepared)
    teacher.run(tiny_cfg, prepared, teacher_dir, teacher_path=tiny_teacher)
    label.run(tiny_cfg, prepared, teacher_dir, outputs)
    return prepared, teacher_dir, outputs


def sized_cfg(**size):
    params = tiny_params(None)
    params["size"] = {"candidates": [[1, 32], [2, 32]], "steps": 3, **size}
    params["evaluate"].update(latency_rounds=1, runtime="eager")
    return config_from_dict(params)


def test_the_stage_times_scores_and_writes_the_choice_that_training_then_uses(labelled, tmp_path):
    prepared, teacher_dir, outputs = labelled
    cfg = sized_cfg(min_speedup=0, min_speedup_int8=0)
    out = tmp_path / "shape.json"
    result = sizing.run(cfg, prepared, teacher_dir, outputs, out)
    written = json.loads(out.read_text())
    assert result.searched and result.budget_met and written["shape"] == result.shape
    assert {c["num_layers"] for c in written["candidates"]} == {1, 2}
    assert all(c["val_accuracy"] is not None and c["latency_p50_ms"] > 0 for c in written["candidates"])
    students.run_student(cfg, prepared, teacher_dir, outputs, tmp_path / "student", shape_file=out)
    trained = load_classifier(tmp_path / "student").model.config
    assert (trained.num_hidden_layers, trained.hidden_size) == (result.shape["num_layers"], result.shape["hidden_size"])


def test_an_unreachable_budget_is_said_plainly_and_the_fastest_shape_is_kept(labelled, tmp_path):
    prepared, teacher_dir, outputs = labelled
    result = sizing.run(sized_cfg(min_speedup=1000), prepared, teacher_dir, outputs, tmp_path / "shape.json")
    assert result.budget_met is False and "no candidate meets the budget" in result.reason
    assert all(c.val_accuracy is None for c in result.candidates)


def test_search_off_keeps_the_configured_shape(labelled, tmp_path):
    prepared, teacher_dir, outputs = labelled
    cfg = sized_cfg(search=False)
    result = sizing.run(cfg, prepared, teacher_dir, outputs, tmp_path / "shape.json")
    assert not result.searched and result.shape["num_layers"] == cfg.student.num_layers
    assert result.shape["hidden_size"] == cfg.student.hidden_size


def test_the_memory_budget_chooses_a_smaller_vocabulary_that_the_student_then_trains_with(labelled, tmp_path):
    prepared, teacher_dir, outputs = labelled
    # 1 x 32 with the teacher's 30,522 tokens is ~4 MB, almost all word embeddings; 1 MB leaves room
    # for a few thousand tokens; 2 x 32 misses the speed target, so it is not retried
    cfg = sized_cfg(min_speedup=0, min_speedup_int8=0, max_size_mb=1.0, vocab_sizes=[16000, 4000, 500],
                    candidates=[[1, 32]])
    out = tmp_path / "shape.json"
    result = sizing.run(cfg, prepared, teacher_dir, outputs, out)
    first, retried = result.candidates
    assert first.vocab_size is None and not first.fits and first.misses[0].endswith("> 1 MB")
    assert retried.vocab_size == 4000 and retried.fits and retried.size_mb <= 1.0
    assert result.budget_met and result.shape["vocab_size"] == 4000 and "vocabulary 4,000" in result.reason
    students.run_student(cfg, prepared, teacher_dir, outputs, tmp_path / "student", shape_file=out)
    trained = load_classifier(tmp_path / "student")
    assert len(trained.tokenizer) <= 4000 and trained.model.config.vocab_size == len(trained.tokenizer)
    assert 4 * trained.num_parameters / 1e6 <= 1.0
