"""LM distillation end to end on tiny models: prompts -> teacher text -> top-k cache -> student; refusals."""

from __future__ import annotations

import json

import pytest
import torch

from distill.config import LMStudentConfig, PipelineConfig, config_from_dict
from distill.lm import generate as gen
from distill.lm import topk as tk
from distill.lm import train as lm_train
from distill.lm.prompts import build_prompts, instructions, write_prompts
from distill.lm.student import TokenizerMismatchError, build_lm_student, check_same_tokenizer
from tests.conftest import make_examples
from tests.lm_tiny import save_tiny_lm, tiny_tokenizer


def _config(**train) -> PipelineConfig:
    return config_from_dict({"lm": {
        "prompts": {"train_size": 12, "heldout_size": 4},
        "generate": {"max_new_tokens": 8, "batch_size": 4, "save_every": 1},
        "topk": {"k": 8, "batch_size": 4},
        # a fresh student: one block of the sharp tiny teacher already reproduces it, leaving nothing to learn
        "student": {"init": "random", "num_layers": 1, "hidden_size": 32, "num_heads": 2, "num_kv_heads": 1,
                    "intermediate_size": 64},
        "train": {"epochs": 6, "batch_size": 4, "learning_rate": 1e-2, "device": "cpu", **train}}})


@pytest.fixture(scope="module")
def lm_project(tmp_path_factory):
    """A tiny teacher folder and a prompt set built from the test examples."""
    root = tmp_path_factory.mktemp("lm")
    examples = make_examples(per_label=12)
    tokenizer = tiny_tokenizer(examples["text"].tolist() + ["Answer: lights_on timer weather"])
    teacher = save_tiny_lm(root / "teacher", tokenizer, seed=1)
    cfg = _config()
    prompts = build_prompts(examples.iloc[::2], examples.iloc[1::2], cfg.lm.prompts, seed=0)
    labels = sorted(examples["label"].unique())
    write_prompts(root / "prompts.parquet", prompts, {**instructions(cfg.lm.prompts, labels), "labels": labels})
    return root, teacher, tokenizer


def test_tiny_lm_distillation_end_to_end(lm_project, tmp_path):
    root, teacher, _ = lm_project
    cfg = _config(mode="token", loss="forward_kl")
    generated = gen.run(cfg, root / "prompts.parquet", teacher, tmp_path / "completions.parquet")
    assert generated.rows == 16 and generated.generated == 16 and generated.completion_tokens > 0
    frame, meta = gen.read_completions(tmp_path / "completions.parquet", generated.teacher_fingerprint)
    assert meta["settings"]["max_new_tokens"] == 8 and meta["settings"]["sampling_temperature"] == 0.0
    assert frame["completion_ids"].map(len).between(1, 8).all()
    cached = tk.run(cfg, tmp_path / "completions.parquet", teacher, tmp_path / "topk.parquet")
    assert cached.stats.k == 8 and cached.stats.k_mean == 8 and cached.stats.bytes_per_token == 8 * 3 + 3
    assert cached.stats.positions == generated.completion_tokens and 0 < cached.stats.kept_mass_mean <= 1
    history = []
    result = lm_train.run(cfg, tmp_path / "completions.parquet", teacher, tmp_path / "student",
                          tmp_path / "topk.parquet", on_log=lambda step, m: history.append(m))
    assert len(history) == result.steps == 6 * 3
    assert result.train_loss_last < 0.7 * result.train_loss_first
    assert result.heldout_after["topk_forward_kl"] < result.heldout_before["topk_forward_kl"]
    card = json.loads((tmp_path / "student" / "distill.json").read_text())
    assert card["teacher_fingerprint"] == generated.teacher_fingerprint and card["mode"] == "token"
    assert card["topk_hash"] and any((tmp_path / "student").glob("*.safetensors"))
    # the saved student loads as an ordinary causal-LM folder
    from distill.lm.teacher import load_causal_lm

    assert load_causal_lm(tmp_path / "student").num_parameters == result.student_parameters


@pytest.mark.parametrize("mode", ["sequence", "online"])
def test_sequence_and_online_modes_learn(lm_project, tmp_path, mode):
    root, teacher, _ = lm_project
    cfg = _config(mode=mode, loss="gjsd", epochs=4)
    gen.run(cfg, root / "prompts.parquet", teacher, tmp_path / "completions.parquet")
    result = lm_train.run(cfg, tmp_path / "completions.parquet", teacher, None)
    assert result.train_loss_last < result.train_loss_first
    assert result.heldout_after["ce"] < result.heldout_before["ce"]


def test_generation_resumes_and_reuses_rows(lm_project, tmp_path, monkeypatch):
    root, teacher, _ = lm_project
    cfg = _config()
    out = tmp_path / "completions.parquet"
    calls = []
    real = gen.completion_rows

    def crash_after_two(lm, prompts, *args):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(len(prompts))
        return real(lm, prompts, *args)

    monkeypatch.setattr(gen, "completion_rows", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        gen.run(cfg, root / "prompts.parquet", teacher, out)
    assert not out.exists() and gen.partial_path(out).is_file()  # progress kept, no half output
    monkeypatch.setattr(gen, "completion_rows", real)
    resumed = gen.run(cfg, root / "prompts.parquet", teacher, out)
    assert (resumed.generated, resumed.reused) == (8, 8) and not gen.partial_path(out).exists()
    again = gen.run(cfg, root / "prompts.parquet", teacher, out)
    assert (again.generated, again.reused) == (0, 16)
    uninterrupted = gen.run(cfg, root / "prompts.parquet", teacher, tmp_path / "fresh.parquet")
    fresh, _ = gen.read_completions(tmp_path / "fresh.parquet")
    kept, _ = gen.read_completions(out)
    assert fresh["completion"].tolist() == kept["completion"].tolist() and uninterrupted.generated == 16
    # other sampling settings do not reuse greedy rows
    sampled = config_from_dict({**cfg.model_dump(), "lm": {**cfg.lm.model_dump(),
                                                           "generate": {**cfg.lm.generate.model_dump(),
                                                                        "sampling_temperature": 0.7}}})
    assert gen.run(sampled, root / "prompts.parquet", teacher, out).generated == 16


def test_chain_of_thought_is_stored_apart_and_weighted(lm_project, tmp_path):
    root, teacher, _ = lm_project
    cfg = _config(mode="sequence", rationale_weight=0.3, epochs=1)
    cfg.lm.generate.chain_of_thought = True
    gen.run(cfg, root / "prompts.parquet", teacher, tmp_path / "cot.parquet")
    frame, meta = gen.read_completions(tmp_path / "cot.parquet")
    assert meta["instruction"].startswith("Classify the request") and "Answer:" in meta["instruction"]
    # the random teacher never writes the marker: all of its text is rationale, the answer is empty
    assert (frame["rationale"] == frame["completion"]).all() and (frame["answer"] == "").all()
    assert (~frame["answer_found"]).all()
    assert (frame["rationale_tokens"] <= frame["completion_ids"].map(len)).all()
    assert lm_train.run(cfg, tmp_path / "cot.parquet", teacher, None).steps == 3


def test_mismatched_tokenizer_is_refused_for_token_level_losses(lm_project, tmp_path):
    root, teacher, tokenizer = lm_project
    other = tiny_tokenizer(["completely different words for another vocabulary"] * 3, vocab_size=300)
    with pytest.raises(TokenizerMismatchError, match="lm.train.mode=sequence"):
        check_same_tokenizer(other, tokenizer)
    check_same_tokenizer(tokenizer, tokenizer)
    student_dir = save_tiny_lm(tmp_path / "other_student", other, seed=2)
    cfg = _config(mode="token")
    cfg.lm.student.path = str(student_dir)
    gen.run(cfg, root / "prompts.parquet", teacher, tmp_path / "completions.parquet")
    tk.run(cfg, tmp_path / "completions.parquet", teacher, tmp_path / "topk.parquet")
    with pytest.raises(TokenizerMismatchError, match=r"lm\.train\.mode=token needs the student to share"):
        lm_train.run(cfg, tmp_path / "completions.parquet", teacher, None, tmp_path / "topk.parquet")
    cfg.lm.train.mode = "sequence"  # sequence-level KD retokenizes the teacher's text and still works
    cfg.lm.train.epochs = 2
    result = lm_train.run(cfg, tmp_path / "completions.parquet", teacher, None)
    assert result.steps == 6 and result.heldout_after["ce"] < result.heldout_before["ce"]


def test_built_student_shares_the_teacher_tokenizer(lm_project):
    _, _, tokenizer = lm_project
    student = build_lm_student(_config().lm.student, tokenizer, seed=0)
    assert student.model.config.vocab_size == len(tokenizer) and student.model.config.num_hidden_layers == 1
    check_same_tokenizer(student.tokenizer, tokenizer)


def test_a_student_of_the_teachers_layers_computes_what_those_blocks_compute(tmp_path):
    """Kept blocks are the teacher's (spread first to last), copies that leave the teacher whole, and the
    student's logits are the teacher's with the other blocks skipped; its KV cache generates what a full pass
    gives."""
    from distill.lm.student import spaced_layers, student_for, teacher_layers_student
    from distill.lm.teacher import load_causal_lm
    from distill.models import ModelError

    assert spaced_layers(2, 5) == [0, 4] and spaced_layers(3, 5) == [0, 2, 4] and spaced_layers(1, 5) == [0]
    assert spaced_layers(6, 30) == [0, 6, 12, 17, 23, 29]
    tokenizer = tiny_tokenizer(["turn the kitchen lights on", "set a timer for five minutes"])
    teacher = load_causal_lm(save_tiny_lm(tmp_path / "teacher", tokenizer, seed=3, layers=5))
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    student, keep = teacher_layers_student(teacher, 3)
    assert keep == [0, 2, 4] and student.model.config.num_hidden_layers == 3
    assert all(torch.equal(v, teacher.model.state_dict()[k]) for k, v in before.items())  # the teacher untouched
    with torch.no_grad():
        student.model.model.layers[0].mlp.down_proj.weight.add_(1.0)
    assert torch.equal(teacher.model.model.layers[0].mlp.down_proj.weight, before["model.layers.0.mlp.down_proj.weight"])
    with torch.no_grad():
        student.model.model.layers[0].mlp.down_proj.weight.sub_(1.0)
    ids = tokenizer("turn the kitchen lights on", return_tensors="pt")["input_ids"]
    skipped = teacher.model.model.layers
    teacher.model.model.layers = torch.nn.ModuleList([skipped[i] for i in keep])
    with torch.no_grad():
        reference = teacher.model(ids, use_cache=False).logits  # the same blocks in the teacher's own model
        teacher.model.model.layers = skipped
        ours = student.model(ids, use_cache=False).logits
    torch.testing.assert_close(ours, reference)
    with torch.no_grad():  # cached decoding (layer_idx renumbered) = recomputing the whole sequence each step
        out = student.model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        step = ids
        for _ in range(4):
            step = torch.cat([step, student.model(step, use_cache=False).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(out, step)
    built, source = student_for(LMStudentConfig(num_layers=2), teacher, seed=0)
    assert source == "teacher_layers [0, 4]" and built.model.config.hidden_size == 32  # the teacher's width
    fresh, source = student_for(LMStudentConfig(num_layers=2, hidden_size=16, num_heads=2), teacher, 0, black_box=True)
    assert source == "built" and fresh.model.config.hidden_size == 16
    with pytest.raises(ModelError, match="keeps all of the teacher's 5 blocks"):
        teacher_layers_student(teacher, 5)


def test_a_black_box_teacher_has_no_layers_to_copy():
    with pytest.raises(ValueError, match="no weights to copy; set lm.student.init: random"):
        config_from_dict({"lm": {"api": {"model": "m"}, "train": {"mode": "sequence"},
                                 "student": {"init": "teacher_layers"}}})


def test_topk_cache_of_other_completions_is_refused(lm_project, tmp_path):
    root, teacher, _ = lm_project
    cfg = _config(mode="token")
    gen.run(cfg, root / "prompts.parquet", teacher, tmp_path / "a.parquet")
    tk.run(cfg, tmp_path / "a.parquet", teacher, tmp_path / "topk.parquet")
    cfg.lm.generate.max_new_tokens = 5
    gen.run(cfg, root / "prompts.parquet", teacher, tmp_path / "b.parquet")
    from distill.lm.prompts import LMDataError

    with pytest.raises(LMDataError, match="other teacher completions"):
        lm_train.run(cfg, tmp_path / "b.parquet", teacher, None, tmp_path / "topk.parquet")
