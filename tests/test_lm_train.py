"""LM distillation end to end on tiny models: prompts -> teacher text -> top-k cache -> student; refusals."""

from __future__ import annotations

import json

import pytest

from distill.config import PipelineConfig, config_from_dict
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
        "student": {"num_layers": 1, "hidden_size": 32, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 64},
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
    assert meta["instruction"].startswith("You route") and "Answer:" in meta["instruction"]
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
