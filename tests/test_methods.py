"""Students, layer maps and strategies: the method menu wired into the trainer."""

import numpy as np
import pytest
import torch

from distill import data, label, students, teacher
from distill.config import ConfigError, LossTerm, config_from_dict, load_config
from distill.label import TeacherOutputError
from distill.models import ModelError, load_classifier, read_card
from distill.student_init import build_student
from distill.objective import ModelShape, Objective, ObjectiveError, capacity_warning, layer_pairs
from distill.sweep import PointResult, choose, grid
from tests.conftest import tiny_params



def with_params(cfg, **sections):
    params = cfg.model_dump()
    for section, values in sections.items():
        params[section] = {**params[section], **values} if isinstance(params[section], dict) else values
    return config_from_dict(params)


# --- layer maps -------------------------------------------------------------------------------

def test_uniform_map_spreads_student_layers_over_the_teacher():
    assert layer_pairs(LossTerm(name="hidden_mse"), 2, 6) == [(1, 3), (2, 6)]
    assert layer_pairs(LossTerm(name="hidden_mse"), 3, 6) == [(1, 2), (2, 4), (3, 6)]


def test_last_k_map_pairs_the_top_layers():
    assert layer_pairs(LossTerm(name="hidden_cosine", layers="last", k=2), 2, 6) == [(1, 5), (2, 6)]
    with pytest.raises(ObjectiveError, match="k <= the shallower"):
        layer_pairs(LossTerm(name="hidden_cosine", layers="last", k=3), 2, 6)


def test_explicit_map_past_the_depth_is_refused():
    assert layer_pairs(LossTerm(name="pkd", layers=[[0, 0], [2, 5]]), 2, 6) == [(0, 0), (2, 5)]
    with pytest.raises(ObjectiveError, match=r"pair \[3, 5\] points past the student's depth \(2 layers"):
        layer_pairs(LossTerm(name="pkd", layers=[[3, 5]]), 2, 6)
    with pytest.raises(ObjectiveError, match="teacher's depth"):
        layer_pairs(LossTerm(name="hidden_mse", layers=[[1, 7]]), 2, 6)
    with pytest.raises(ObjectiveError, match="numbered 1..2"):  # attention maps exist for layers 1..n only
        layer_pairs(LossTerm(name="attention", layers=[[0, 1]]), 2, 6)


def test_unknown_loss_name_is_a_config_error_naming_the_choices():
    with pytest.raises(ConfigError, match=r"train\.losses\.0\.name: .*unknown loss 'hinton_plus'.*gjsd"):
        load_config(__import__("pathlib").Path("/nonexistent"), ["train.losses=[{name: hinton_plus}]"], missing_ok=True)
    with pytest.raises(ConfigError, match=r"train\.losses\.0\.wieght: unknown key"):
        load_config(__import__("pathlib").Path("/nonexistent"), ["train.losses=[{name: kl, wieght: 2}]"],
                    missing_ok=True)


def test_objective_refuses_token_losses_across_tokenizers_and_other_label_sets():
    student, teacher_ = ModelShape(2, 32, 4), ModelShape(6, 64, 4)
    with pytest.raises(ObjectiveError, match="share the teacher's tokenizer"):
        Objective([LossTerm(name="attention")], 2.0, 0.5, student, teacher_, same_tokenizer=False)
    Objective([LossTerm(name="pkd"), LossTerm(name="rkd_angle")], 2.0, 0.5, student, teacher_, same_tokenizer=False)
    with pytest.raises(ObjectiveError, match="teacher predicts 5 labels but the student 4"):
        Objective([LossTerm(name="kl")], 2.0, 0.5, student, ModelShape(6, 64, 5))


def test_projection_only_where_widths_differ():
    teacher_ = ModelShape(4, 64, 4)
    wide = Objective([LossTerm(name="hidden_mse")], 1.0, 0.5, ModelShape(2, 64, 4), teacher_)
    narrow = Objective([LossTerm(name="hidden_mse")], 1.0, 0.5, ModelShape(2, 32, 4), teacher_)
    assert len(list(wide.parameters())) == 0
    assert [tuple(p.shape) for p in narrow.parameters()][:2] == [(64, 32), (64,)]


def test_capacity_warning_only_for_small_logit_only_students():
    assert "hidden_cosine" in capacity_warning(10, 100, [LossTerm(name="kl")], 0.7)
    assert capacity_warning(30, 100, [LossTerm(name="kl")], 0.7) is None
    assert capacity_warning(10, 100, [LossTerm(name="kl"), LossTerm(name="pkd")], 0.7) is None


# --- student builder --------------------------------------------------------------------------

def test_null_shape_values_take_the_teachers_and_init_copies_teacher_layers(tiny_teacher, tiny_cfg):
    t = load_classifier(tiny_teacher)
    shallow = tiny_cfg.student.model_copy(update={"num_layers": 1, "hidden_size": None, "num_heads": None,
                                                  "intermediate_size": None, "init": "auto"})
    s = build_student(t, shallow, seed=0)
    assert s.model.config.num_hidden_layers == 1 and s.model.config.hidden_size == 64
    t_layer = t.model.base_model.encoder.layer[0].state_dict()
    for key, value in s.model.base_model.encoder.layer[0].state_dict().items():
        assert torch.equal(value, t_layer[key]), key
    assert torch.equal(s.model.get_input_embeddings().weight, t.model.get_input_embeddings().weight)
    pick = s_config = shallow.model_copy(update={"teacher_layers": [1]})
    s = build_student(t, pick, seed=0)
    assert torch.equal(s.model.base_model.encoder.layer[0].attention.self.query.weight,
                       t.model.base_model.encoder.layer[1].attention.self.query.weight)
    with pytest.raises(ModelError, match=r"teacher_layers \[5\] point past the teacher's depth \(2 layers"):
        build_student(t, s_config.model_copy(update={"teacher_layers": [5]}), seed=0)


def test_born_again_copy_has_the_teachers_size_and_fresh_weights(tiny_teacher, tiny_cfg):
    t = load_classifier(tiny_teacher)
    same = tiny_cfg.student.model_copy(update={"num_layers": None, "hidden_size": None, "num_heads": None,
                                               "intermediate_size": None, "init": "random"})
    s = build_student(t, same, seed=1)
    assert s.num_parameters == t.num_parameters
    assert not torch.equal(s.model.base_model.encoder.layer[0].output.dense.weight,
                           t.model.base_model.encoder.layer[0].output.dense.weight)


def test_teacher_init_with_another_width_is_refused(tiny_teacher, tiny_cfg):
    t = load_classifier(tiny_teacher)
    with pytest.raises(ModelError, match="layer shape must match"):
        build_student(t, tiny_cfg.student.model_copy(update={"init": "teacher"}), seed=0)


def test_reduced_vocabulary_is_trained_and_seeded_from_the_teacher(tiny_teacher, tiny_cfg):
    t = load_classifier(tiny_teacher)
    texts = [f"turn on the lights in room {i} please" for i in range(200)]
    s = build_student(t, tiny_cfg.student.model_copy(update={"vocab_size": 300}), seed=0, texts=texts)
    assert len(s.tokenizer) <= 300 and s.model.get_input_embeddings().weight.shape[0] == len(s.tokenizer)
    assert s.tokenizer.tokenize("turn on the lights") == ["turn", "on", "the", "lights"]
    assert s.tokenizer is not t.tokenizer


def test_student_from_a_model_folder_gets_a_fresh_head(tiny_teacher, tiny_cfg):
    t = load_classifier(tiny_teacher)
    s = build_student(t, tiny_cfg.student.model_copy(update={"path": str(tiny_teacher)}), seed=0)
    assert s.labels == t.labels and s.num_parameters == t.num_parameters
    with pytest.raises(ModelError, match="not a Hugging Face model folder"):
        build_student(t, tiny_cfg.student.model_copy(update={"path": "/nonexistent/model"}), seed=0)


# --- training per family -------------------------------------------------------------------------

FAMILIES = {
    "response": [{"name": "kl"}, {"name": "gjsd", "beta": 0.3}],
    "feature": [{"name": "hidden_cosine"}, {"name": "pkd", "layers": "last"}],
    "attention": [{"name": "attention", "kind": "kl"}],
    "relation": [{"name": "rkd_distance"}, {"name": "rkd_angle"}, {"name": "similarity"}],
}


@pytest.fixture(scope="module")
def pretrained_labelled(tmp_path_factory):
    """A teacher bootstrapped from the packaged MiniLM: a random tiny teacher maps every input to
    almost the same [CLS] state, which leaves relation losses nothing to learn."""
    from tests.conftest import make_examples

    root = tmp_path_factory.mktemp("pretrained")
    make_examples().rename(columns={"text": "utterance", "label": "intent"}).to_csv(root / "ex.csv", index=False)
    cfg = config_from_dict(tiny_params(root / "ex.csv"))
    data.run(cfg, root / "prepared")
    teacher.run(cfg, root / "prepared", root / "teacher")
    label.run(cfg, root / "prepared", root / "teacher", root / "logits.parquet")
    return root / "prepared", root / "teacher", root / "logits.parquet"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_short_run_of_each_family_lowers_its_loss(request, tiny_cfg, tmp_path, family):
    fixture = "pretrained_labelled" if family == "relation" else "labelled"
    prepared, teacher_dir, outputs = request.getfixturevalue(fixture)
    # one batch holds the whole set, so every step sees the same inputs and the curve is not batch noise
    epochs = 12 if family == "relation" else 30  # the MiniLM teacher runs in every step
    cfg = with_params(tiny_cfg, train={"losses": FAMILIES[family], "alpha": 1.0, "epochs": epochs,
                                       "eval_every": epochs // 10, "patience": 1000, "learning_rate": 3e-3,
                                       "batch_size": 256})
    logged = []
    students.run_student(cfg, prepared, teacher_dir, outputs, tmp_path / "s", on_log=lambda s, m: logged.append(m))
    names = [t["name"] for t in FAMILIES[family]]
    for name in names:
        curve = [m[f"loss_{name}"] for m in logged]
        assert np.isfinite(curve).all()
        first, last = np.mean(curve[:3]), np.mean(curve[-3:])
        assert last < first, f"{name}: {first:.4f} -> {last:.4f}"
    card = read_card(tmp_path / "s")
    assert card["method"] == "+".join(names) and [t["name"] for t in card["losses"]] == names


def test_bad_layer_map_fails_before_training(labelled, tiny_cfg, tmp_path):
    prepared, teacher_dir, outputs = labelled
    cfg = with_params(tiny_cfg, train={"losses": [{"name": "hidden_mse", "layers": [[1, 9]]}]})
    with pytest.raises(ObjectiveError, match="past the teacher's depth"):
        students.run_student(cfg, prepared, teacher_dir, outputs, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_non_finite_cached_outputs_are_refused_before_training(labelled, tiny_cfg, tmp_path):
    prepared, teacher_dir, outputs = labelled
    frame, logits, meta = label.read_outputs(outputs)
    logits = logits.copy()
    logits[3, 0] = np.inf
    label.write_outputs(outputs, frame, logits, meta)
    with pytest.raises(TeacherOutputError, match=r"1 rows of teacher outputs are not finite \(first: row 3\)"):
        students.run_student(tiny_cfg, prepared, teacher_dir, outputs, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_assistant_chain_versions_the_assistants_outputs(labelled, tiny_cfg, tmp_path):
    prepared, teacher_dir, outputs = labelled
    off = students.run_assistant(tiny_cfg, prepared, teacher_dir, outputs, tmp_path / "off")
    assert off is None and read_card(tmp_path / "off") == {"role": "assistant", "enabled": False}
    cfg = with_params(tiny_cfg, assistant={"enabled": True, "num_layers": 1, "hidden_size": 48, "num_heads": 2,
                                           "intermediate_size": 96})
    result = students.run_assistant(cfg, prepared, teacher_dir, outputs, tmp_path / "assistant")
    _, a_logits, a_meta = label.read_outputs(tmp_path / "assistant" / "outputs.parquet", result.fingerprint)
    _, t_logits, _ = label.read_outputs(outputs)
    assert a_logits.shape == t_logits.shape and not np.allclose(a_logits, t_logits)
    student = students.run_student(cfg, prepared, teacher_dir, outputs, tmp_path / "student",
                                   assistant_dir=tmp_path / "assistant")
    card = read_card(tmp_path / "student")
    assert card["teacher_chain"] == [read_card(teacher_dir)["fingerprint"], result.fingerprint]
    assert card["method"].startswith("assistant:") and student.parameters < result.parameters


def test_born_again_a_trained_student_teaches_a_fresh_copy_of_itself(labelled, tiny_cfg, tmp_path):
    """Self-distillation: an earlier checkpoint (here a distilled student) is imported as the teacher."""
    prepared, teacher_dir, outputs = labelled
    first = students.run_student(tiny_cfg, prepared, teacher_dir, outputs, tmp_path / "gen1")
    teacher.run(tiny_cfg, prepared, tmp_path / "gen1_teacher", teacher_path=tmp_path / "gen1")
    label.run(tiny_cfg, prepared, tmp_path / "gen1_teacher", tmp_path / "gen1_logits.parquet")
    copy = with_params(tiny_cfg, student={"num_layers": None, "hidden_size": None, "num_heads": None,
                                          "intermediate_size": None, "init": "random"})
    second = students.run_student(copy, prepared, tmp_path / "gen1_teacher", tmp_path / "gen1_logits.parquet",
                                  tmp_path / "gen2")
    assert read_card(tmp_path / "gen2")["teacher_fingerprint"] == first.fingerprint
    assert second.parameters == first.parameters and second.fingerprint != first.fingerprint


# --- sweep -------------------------------------------------------------------------------------

def test_sweep_grid_and_choice_use_validation_accuracy_only():
    cfg = config_from_dict({**tiny_params(None), "sweep": {"temperatures": [1, 2, 2], "alphas": [0.5, 0.9]}})
    assert [(p.kd_temperature, p.alpha) for p in grid(cfg)] == [(1, 0.5), (1, 0.9), (2, 0.5), (2, 0.9)]
    results = [PointResult(1, 0.5, 0.80, 10, 1.0), PointResult(2, 0.5, 0.90, 10, 1.0),
               PointResult(4, 0.5, 0.90, 10, 1.0)]
    assert (choose(results).kd_temperature, choose(results).alpha) == (2, 0.5)
    with pytest.raises(ValueError, match="no results"):
        choose([])
