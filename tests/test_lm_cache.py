"""The LM prompt set, the completions file and the compact top-k cache: format round trips and refusals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from distill.config import LMPromptsConfig
from distill.lm import generate as gen
from distill.lm import topk as tk
from distill.lm.prompts import LMDataError, build_prompts, read_prompts, render_prompt, write_prompts
from tests.conftest import make_examples


def test_prompt_set_splits_are_disjoint_and_keep_references(tmp_path):
    examples = make_examples(per_label=20)
    train_pool, heldout_pool = examples.iloc[::2], examples.iloc[1::2]
    prompts = build_prompts(train_pool, heldout_pool, LMPromptsConfig(train_size=12, heldout_size=6), seed=3)
    assert prompts["split"].value_counts().to_dict() == {"train": 12, "heldout": 6}
    assert set(prompts[prompts.split == "train"].request).isdisjoint(prompts[prompts.split == "heldout"].request)
    assert prompts["reference"].isin(examples["label"]).all() and prompts["prompt_id"].is_unique
    assert prompts[prompts.split == "train"]["reference"].nunique() == 4  # drawn round-robin over labels
    path = tmp_path / "prompts.parquet"
    write_prompts(path, prompts, {"instruction": "route", "cot_instruction": "think", "answer_marker": "Answer:"})
    back, meta = read_prompts(path)
    pd.testing.assert_frame_equal(back, prompts.astype(str))
    assert meta["instruction"] == "route" and len(meta["prompts_hash"]) == 64
    assert [f.name for f in tmp_path.iterdir()] == ["prompts.parquet"]  # atomic: no temporary left


def test_render_prompt_uses_the_chat_template_or_plain_text():
    from tests.lm_tiny import tiny_tokenizer

    chat = render_prompt(tiny_tokenizer(["a b c"]), "Be brief.", "lights on")
    assert chat.startswith("<|im_start|>system\nBe brief.") and chat.endswith("<|im_start|>assistant\n")
    plain = render_prompt(tiny_tokenizer(["a b c"], chat=False), "Be brief.", "lights on")
    assert plain == "Be brief.\n\nRequest: lights on\nResponse:"


def test_topk_from_logits_keeps_the_largest_and_the_leftover_mass():
    logits = torch.randn(5, 49152) * 3
    cache = tk.topk_from_logits(logits, k=8)
    assert cache.indices.dtype == np.uint16 and cache.logprobs.dtype == np.float16 and cache.tail.dtype == np.float16
    logprobs = torch.log_softmax(logits, -1)
    expected = logprobs.topk(8, -1)
    np.testing.assert_array_equal(cache.indices.astype(np.int64), expected.indices.numpy())
    np.testing.assert_allclose(cache.logprobs.astype(np.float32), expected.values.numpy(), atol=1e-2)
    np.testing.assert_allclose(cache.tail.astype(np.float32), 1 - expected.values.exp().sum(-1).numpy(), atol=1e-3)
    assert tk.topk_from_logits(torch.randn(2, 70_000), 4).indices.dtype == np.int32  # does not fit uint16


def test_tiny_tail_is_not_lost_to_cancellation():
    logits = torch.tensor([[10.0, 0.0, 0.0, 0.0]])
    cache = tk.topk_from_logits(logits, k=1)
    assert float(cache.tail[0]) == pytest.approx(3 * np.exp(-10.0), rel=1e-2)
    assert float(tk.topk_from_logits(logits, k=4).tail[0]) == 0.0


def _caches(rng, lengths, k=4, vocab=49152):
    return [tk.TopK(rng.integers(0, vocab, (n, k)).astype(np.uint16),
                    np.sort(-rng.random((n, k)) * 5, -1)[:, ::-1].astype(np.float16),
                    rng.random(n).astype(np.float16)) for n in lengths]


def test_topk_cache_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    caches = _caches(rng, [3, 0, 5])
    path = tmp_path / "topk.parquet"
    tk.write_topk(path, ["a", "b", "c"], caches, {"k": 4, "completions_hash": "h1", "teacher_fingerprint": "t"})
    back, meta = tk.read_topk(path, {"completions_hash": "h1"})
    assert list(back) == ["a", "b", "c"] and meta["k"] == 4
    for want, got in zip(caches, back.values()):
        assert got.indices.dtype == np.uint16 and got.logprobs.dtype == np.float16
        np.testing.assert_array_equal(got.indices, want.indices)
        np.testing.assert_array_equal(got.logprobs, want.logprobs)
        np.testing.assert_array_equal(got.tail, want.tail)
    with pytest.raises(LMDataError, match="other teacher completions.*lm_topk"):
        tk.read_topk(path, {"completions_hash": "h2"})


def test_cache_stats_reports_bytes_per_token_and_kept_mass():
    rng = np.random.default_rng(1)
    caches = _caches(rng, [10, 6], k=32)
    for c in caches:
        c.tail[:] = np.float16(0.04)
    stats = tk.cache_stats(caches, file_bytes=2080)
    assert stats.k == 32 and stats.positions == 16 and stats.index_dtype == "uint16"
    assert stats.bytes_per_token == 32 * 4 + 2 <= 150  # uint16 ids + float16 log-probs + float16 tail
    assert stats.file_bytes_per_token == 130.0
    assert stats.kept_mass_mean == pytest.approx(0.96, abs=1e-3)
    curve = tk.kept_mass_by_k(torch.tensor([[2.0, 1.0, 0.0, -1.0]]), [1, 2, 4])
    assert curve[4] == pytest.approx(1.0) and curve[1] < curve[2] < curve[4]


def _rows(n=3):
    return [{"prompt_id": f"p{i}", "split": "train", "request": f"r{i}", "reference": "x", "prompt": "P",
             "completion": "c", "rationale": "", "answer": "c", "answer_found": True, "finished": True,
             "prompt_ids": [1, 2, 3], "completion_ids": list(range(i + 1)), "rationale_tokens": 0} for i in range(n)]


def test_completions_round_trip_and_refuse_tampering_or_another_teacher(tmp_path):
    path = tmp_path / "completions.parquet"
    digest = gen.write_completions(path, _rows(), {"teacher_fingerprint": "t1", "settings": {"seed": 1}})
    frame, meta = gen.read_completions(path, "t1")
    assert meta["completions_hash"] == digest and [list(v) for v in frame.completion_ids] == [[0], [0, 1], [0, 1, 2]]
    with pytest.raises(LMDataError, match="teacher t1.*lm_generate"):
        gen.read_completions(path, "t2")
    import json

    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[b"distill"])
    tampered = table.set_column(table.column_names.index("completion"), "completion",
                                [["changed"] * table.num_rows])
    gen_meta = {**meta}
    from distill.lm.batch import write_parquet

    write_parquet(path, tampered, gen_meta)
    with pytest.raises(LMDataError, match="does not match its recorded hash"):
        gen.read_completions(path)


def test_split_rationale_and_its_token_count():
    from tests.lm_tiny import tiny_tokenizer

    text = "It is a light. Answer: HassTurnOn "
    assert gen.split_rationale(text, "Answer:") == ("It is a light. ", "HassTurnOn", True)
    assert gen.split_rationale("no marker", "Answer:") == ("no marker", "", False)
    tok = tiny_tokenizer(["It is a light. Answer: HassTurnOn"] * 5)
    ids = tok("It is a light. Answer: HassTurnOn", add_special_tokens=False)["input_ids"]
    n = gen.rationale_token_count(tok, ids, "It is a light. ")
    assert tok.decode(ids[:n]).strip() == "It is a light." and "Answer" in tok.decode(ids[n:])


def test_variable_k_spends_the_budget_where_the_mass_is():
    # Position 0 is confident (one token holds 0.9), position 1 is flat over its 8 cached tokens.
    confident = np.log(np.array([0.9] + [0.1 / 7] * 7))
    flat = np.log(np.full(8, 1 / 8))
    cache = tk.TopK(np.zeros((2, 8), np.uint16), np.stack([confident, flat]).astype(np.float16), np.zeros(2, np.float16))
    assert tk.kept_mass_curve([cache], [1, 8]) == {1: pytest.approx(0.5125, abs=1e-3), 8: pytest.approx(1.0, abs=1e-3)}
    # 4 bytes per position + 4 per kept token: 4 + 4 * 4.5 = 22 B/token keeps 9 of the 16 entries.
    stats = tk.variable_k_at_budget([cache], bytes_per_token=22)
    assert stats.bytes_per_token <= 22 and stats.k_cap == 8 and stats.k_max == 8
    fixed = tk.kept_mass_curve([cache], [4])[4]  # the same 16 B of entries spent as k = 4 everywhere
    assert stats.kept_mass_mean > fixed  # the flat position gets the bytes the confident one does not need
    assert tk.variable_k_at_budget([cache], bytes_per_token=1000).kept_mass_mean == pytest.approx(1.0, abs=1e-3)
    assert tk.variable_k_at_budget([cache], bytes_per_token=0).k_mean == 1.0  # never below top-1
