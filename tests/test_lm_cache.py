"""The LM prompt set, the completions file and the compact ragged top-k cache: round trips, budget, refusals."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from distill.config import LMPromptsConfig, LMTopKConfig
from distill.lm import generate as gen
from distill.lm import topk as tk
from distill.lm.prompts import (LMDataError, PromptTemplate, build_prompts, read_prompts, render_prompt,
                                 write_prompts)
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

    chat = render_prompt(tiny_tokenizer(["a b c"]), PromptTemplate("Be brief."), "lights on")
    assert chat.startswith("<|im_start|>system\nBe brief.") and chat.endswith("<|im_start|>assistant\n")
    plain = render_prompt(tiny_tokenizer(["a b c"], chat=False), PromptTemplate("Be brief."), "lights on")
    assert plain == "Be brief.\n\nRequest: lights on\nResponse:"


def test_worked_examples_are_earlier_turns_before_the_request():
    from tests.lm_tiny import tiny_tokenizer

    template = PromptTemplate("Be brief.", (("tv off", "Please turn off the tv."),))
    chat = render_prompt(tiny_tokenizer(["a b c"]), template, "lights on")
    assert chat.index("tv off") < chat.index("Please turn off the tv.") < chat.index("lights on")
    assert chat.count("<|im_start|>user") == 2 and chat.count("<|im_start|>assistant") == 2  # the example + the reply
    plain = render_prompt(tiny_tokenizer(["a b c"], chat=False), template, "lights on")
    assert plain == ("Be brief.\n\nRequest: tv off\nResponse: Please turn off the tv.\n\n"
                     "Request: lights on\nResponse:")
    assert PromptTemplate.of({"instruction": "Be brief.", "examples": [["tv off", "Please turn off the tv."]]}) == template


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



# ---- the top-k cache: teacher pass, water-filling, the stored format, refusals ---------------------

def test_topk_from_logits_keeps_the_largest_and_the_leftover_mass():
    logits = torch.randn(5, 49152) * 3
    cache = tk.topk_from_logits(logits, k=8)
    assert cache.indices.dtype == np.uint16 and cache.counts.tolist() == [8] * 5 and cache.indices.shape == (40,)
    logprobs = torch.log_softmax(logits, -1)
    expected = logprobs.topk(8, -1)
    np.testing.assert_array_equal(cache.indices.reshape(5, 8).astype(np.int64), expected.indices.numpy())
    np.testing.assert_allclose(cache.logprobs.reshape(5, 8), expected.values.numpy(), atol=1e-5)
    np.testing.assert_allclose(cache.tail, 1 - expected.values.exp().sum(-1).numpy(), atol=1e-5)
    assert tk.topk_from_logits(torch.randn(2, 70_000), 4).indices.dtype == np.int32  # does not fit uint16
    assert tk.topk_from_logits(torch.randn(2, 300), 300).counts.dtype == np.uint16  # counts above 255


def test_tiny_tail_is_not_lost_to_cancellation():
    logits = torch.tensor([[10.0, 0.0, 0.0, 0.0]])
    cache = tk.topk_from_logits(logits, k=1)
    assert float(cache.tail[0]) == pytest.approx(3 * np.exp(-10.0), rel=1e-3)
    assert float(tk.topk_from_logits(logits, k=4).tail[0]) == 0.0
    # truncating a deeper cache adds the dropped tokens to the tail, never 1 - kept
    assert float(tk.topk_from_logits(logits, k=4).truncate(np.array([1])).tail[0]) == pytest.approx(
        3 * np.exp(-10.0), rel=1e-3)


def _deep(rng, lengths, k=8, vocab=49152, scale=3.0):
    """Caches as the teacher pass makes them: k tokens per position, sorted, exact tails."""
    return [tk.topk_from_logits(torch.from_numpy(rng.normal(size=(n, vocab)) * scale).float(), k, vocab)
            for n in lengths]


def _ragged(rng, lengths, k=8, vocab=49152):
    """Deep caches cut to a random number of tokens per position (1..k)."""
    return [c.truncate(rng.integers(1, k + 1, c.positions)) for c in _deep(rng, lengths, k, vocab)]


def _by_id(cache):
    """Ids and values sorted by (position, id): comparable whatever the order of equal values."""
    order = np.lexsort((cache.indices, np.repeat(np.arange(cache.positions), cache.counts)))
    return cache.indices[order], cache.logprobs[order]


def _write(path, caches, k=8, vocab=49152, dtype="uint8", meta=None):
    layout = tk.make_layout(caches, k, vocab, dtype)
    tk.write_topk(path, [f"p{i}" for i in range(len(caches))], caches,
                  {"k": k, "completions_hash": "h1", "teacher_fingerprint": "t", **(meta or {})}, layout)
    return layout


@pytest.mark.parametrize("seed", range(4))
def test_ragged_cache_round_trip_keeps_ids_counts_and_tails_and_bounds_the_quantisation(tmp_path, seed):
    rng = np.random.default_rng(seed)
    caches = _ragged(rng, [3, 0, 5, 1], vocab=600)
    path = tmp_path / "topk.parquet"
    layout = _write(path, caches, vocab=600)
    back, meta = tk.read_topk(path, {"completions_hash": "h1"})
    assert list(back) == ["p0", "p1", "p2", "p3"] and meta["format"] == tk.FORMAT and meta["k"] == 8
    step = layout.logprob_step
    assert step == pytest.approx(-min(c.logprobs.min() for c in caches if c.positions) / 255, rel=1e-6)
    for want, got in zip(caches, back.values()):
        np.testing.assert_array_equal(got.counts, want.counts)
        np.testing.assert_array_equal(got.tail, want.tail.astype(np.float16).astype(np.float32))
        (want_ids, want_values), (got_ids, got_values) = _by_id(want), _by_id(got)
        np.testing.assert_array_equal(got_ids, want_ids)  # the same tokens at each position
        assert np.abs(got_values - want_values).max(initial=0) <= step / 2 + 1e-6
        for start, end in zip(got.offsets()[:-1], got.offsets()[1:]):  # still sorted within each position
            assert (np.diff(got.logprobs[start:end]) <= 0).all()
    # the stored form is a fixed point: writing what was read stores the same bytes
    again = tmp_path / "again.parquet"
    _write(again, list(back.values()), vocab=600)
    assert tk.read_topk(again)[1]["topk_hash"] == meta["topk_hash"]
    assert sorted(f.name for f in tmp_path.iterdir()) == ["again.parquet", "topk.parquet"]  # atomic: no temporary
    with pytest.raises(LMDataError, match="other teacher completions.*lm_topk"):
        tk.read_topk(path, {"completions_hash": "h2"})


def test_float16_values_and_wide_dtypes_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    caches = [c.truncate(rng.integers(1, 301, c.positions)) for c in _deep(rng, [4, 2], k=300, vocab=70_000)]
    layout = _write(tmp_path / "topk.parquet", caches, k=300, vocab=70_000, dtype="float16")
    assert (layout.count_dtype, layout.index_dtype, layout.entry_bytes, layout.position_bytes) == \
        ("uint16", "int32", 6, 4)
    back, _ = tk.read_topk(tmp_path / "topk.parquet")
    for want, got in zip(caches, back.values()):
        (want_ids, want_values), (got_ids, got_values) = _by_id(want), _by_id(got)
        np.testing.assert_array_equal(got_ids, want_ids)
        np.testing.assert_array_equal(got_values, want_values.astype(np.float16).astype(np.float32))


def test_uint8_grid_error_is_at_most_half_a_step():
    for low in (-0.5, -6.9, tk.LOGPROB_FLOOR):
        layout = tk.Layout("uint8", "uint16", "uint8", low)
        values = np.concatenate([np.linspace(low, 0, 10_001), [0.0, low]]).astype(np.float32)
        decoded = layout.decode_logprobs(layout.encode_logprobs(values))
        assert np.abs(decoded - values).max() <= layout.logprob_step / 2 + 1e-6
        assert decoded[-2] == 0.0 and decoded[-1] == pytest.approx(low)
    coarse = tk.Layout("uint8", "uint16", "uint8", -6.3, 64)
    values = np.linspace(-6.3, 0, 1001)
    codes = coarse.encode_logprobs(values)
    assert codes.max() == 63 and coarse.logprob_step == pytest.approx(0.1)
    assert np.abs(coarse.decode_logprobs(codes) - values).max() <= 0.05 + 1e-6
    layout = tk.Layout("uint8", "uint16", "uint8", -5.0)
    clipped = layout.decode_logprobs(layout.encode_logprobs(np.array([-np.inf, -40.0, 0.5], np.float32)))
    np.testing.assert_allclose(clipped, [-5.0, -5.0, 0.0], atol=1e-6)  # below the grid: its bottom; above 0: 0
    caches = [tk.TopK(np.array([2], np.uint8), np.array([1, 2], np.uint16), np.array([-0.1, -40.0], np.float32),
                      np.array([0.0]))]
    assert tk.make_layout(caches, 8, 100).logprob_min == pytest.approx(tk.LOGPROB_FLOOR)  # floored at log 1e-8


def test_tail_is_one_minus_the_kept_mass():
    rng = np.random.default_rng(2)
    for cache in _ragged(rng, [6, 9], k=16, vocab=200):
        kept = np.bincount(np.repeat(np.arange(cache.positions), cache.counts),
                           np.exp(cache.logprobs.astype(np.float64)), minlength=cache.positions)
        np.testing.assert_allclose(cache.tail, 1 - kept, atol=1e-6)


def test_water_filling_keeps_the_globally_largest_entries_as_prefixes():
    rng = np.random.default_rng(3)
    deep = _deep(rng, [7, 4, 9], k=12, vocab=300, scale=2.0)
    positions, total = 20, 20 * 12
    for entries in (0, 20, 21, 57, 130, total - 1, total):
        caches, threshold = tk.water_fill(deep, entries)
        counts = np.concatenate([c.counts for c in caches]).astype(int)
        assert counts.min() >= 1 and counts.sum() == max(entries, positions)
        # what is kept beyond each position's first token is exactly the globally largest rest
        rest = np.concatenate([np.concatenate([c.logprobs.reshape(-1, 12)[:, 1:] for c in deep]).ravel()])
        expected = np.sort(rest)[::-1][:max(entries, positions) - positions]
        got = np.concatenate([c.logprobs for c in caches])
        firsts = np.concatenate([c.logprobs.reshape(-1, 12)[:, 0] for c in deep])
        np.testing.assert_allclose(np.sort(got), np.sort(np.concatenate([firsts, expected])))
        for d, c in zip(deep, caches):  # prefixes of each position's sorted list
            starts = c.offsets()[:-1]
            for i, (start, n) in enumerate(zip(starts, c.counts)):
                np.testing.assert_array_equal(c.indices[start:start + n], d.indices[i * 12:i * 12 + n])
        assert (threshold is None) == (not positions < entries < total)
    # the same entries spent as one fixed k keep less mass than water-filling
    filled, _ = tk.water_fill(deep, 4 * positions)
    fixed = [d.truncate(np.full(d.positions, 4)) for d in deep]
    mass = lambda cs: np.mean(np.concatenate([1 - c.tail for c in cs]))  # noqa: E731
    assert mass(filled) > mass(fixed)


def test_water_filling_breaks_ties_in_position_order():
    same = tk.TopK(np.array([3, 3], np.uint8), np.arange(6, dtype=np.uint16),
                   np.log(np.array([0.5, 0.2, 0.2, 0.5, 0.2, 0.2], np.float32)), np.array([0.1, 0.1]))
    caches, threshold = tk.water_fill([same], 3)
    assert caches[0].counts.tolist() == [2, 1] and threshold == pytest.approx(0.2)
    caches, _ = tk.water_fill([same], 5)
    assert caches[0].counts.tolist() == [3, 2]


def test_the_byte_budget_is_met_by_the_file_on_disk(tmp_path):
    rng = np.random.default_rng(4)
    deep = _deep(rng, [300, 250, 400], k=64, vocab=2000, scale=2.0)
    ids = [f"p{i}" for i in range(len(deep))]
    masses = []
    for budget in (20.0, 40.0, 80.0):
        cfg = LMTopKConfig(k=64, bytes_per_token=budget)
        caches, layout, threshold = tk.fit_budget(ids, deep, cfg, 2000, {"k": 64})
        tk.write_topk(tmp_path / "topk.parquet", ids, caches, {"k": 64}, layout)
        assert (tmp_path / "topk.parquet").stat().st_size <= budget * 950
        assert threshold is not None and tk.encoded_size(ids, caches, layout, {"k": 64}) == \
            (tmp_path / "topk.parquet").stat().st_size
        masses.append(np.mean(np.concatenate([1 - c.tail for c in caches])))
    assert masses[0] < masses[1] < masses[2]
    everything, _, none = tk.fit_budget(ids, deep, LMTopKConfig(k=64, bytes_per_token=None), 2000, {})
    assert everything is deep and none is None
    tiny, _, _ = tk.fit_budget(ids, deep, LMTopKConfig(k=64, bytes_per_token=1.0), 2000, {})
    assert all((c.counts == 1).all() for c in tiny)  # never below the top token, even past the budget


def test_cache_stats_reports_bytes_per_token_and_kept_mass():
    caches = [tk.TopK(np.array([1, 3], np.uint8), np.arange(4, dtype=np.uint16),
                      np.log(np.array([0.9, 0.5, 0.3, 0.1], np.float32)), np.array([0.1, 0.1])),
              tk.TopK(np.array([4], np.uint8), np.arange(4, dtype=np.uint16),
                      np.log(np.full(4, 0.2, np.float32)), np.array([0.2]))]
    layout = tk.make_layout(caches, 8, 49152)
    stats = tk.cache_stats(caches, layout, 8, file_bytes=3 * 50, min_prob=0.1)
    assert stats.k == 8 and stats.positions == 3 and stats.k_mean == pytest.approx(8 / 3, abs=0.05)
    assert stats.bytes_per_token == pytest.approx(3 + 3 * 8 / 3, abs=0.05)  # uint8 count + float16 tail; id + code
    assert stats.file_bytes_per_token == 50.0 and stats.k_max == 4 and stats.logprob_dtype == "uint8"
    assert stats.kept_mass_mean == pytest.approx((0.9 + 0.9 + 0.8) / 3, abs=1e-4)
    assert stats.kept_mass_p05 <= stats.kept_mass_p10 <= stats.kept_mass_mean
    curve = tk.kept_mass_by_k(torch.tensor([[2.0, 1.0, 0.0, -1.0]]), [1, 2, 4])
    assert curve[4] == pytest.approx(1.0) and curve[1] < curve[2] < curve[4]
    deep = _deep(np.random.default_rng(0), [5], k=8, vocab=50)
    assert tk.kept_mass_curve(deep, [1, 8])[1] < tk.kept_mass_curve(deep, [1, 8])[8]


def test_an_old_format_cache_is_refused_with_the_remedy(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from distill.lm.batch import write_parquet

    old = pa.table({"prompt_id": ["a"], "positions": pa.array([1], pa.int32()),
                    "indices": pa.array([[1, 2]], pa.list_(pa.uint16())),
                    "logprobs": pa.array([np.array([-0.1, -2.0], np.float16)], pa.list_(pa.float16())),
                    "tail": pa.array([np.array([0.05], np.float16)], pa.list_(pa.float16()))})
    write_parquet(tmp_path / "old.parquet", old, {"k": 2, "completions_hash": "h1", "topk_hash": "x"})
    with pytest.raises(LMDataError, match=r"format 1.*reads format 3.*dvc repro lm_topk"):
        tk.read_topk(tmp_path / "old.parquet", {"completions_hash": "h1"})
    # format 2 had the same columns, with raw token ids where format 3 has ranks: read, it would give wrong tokens
    _write(tmp_path / "v2.parquet", _ragged(np.random.default_rng(7), [3], vocab=600), vocab=600)
    table = pq.read_table(tmp_path / "v2.parquet")
    meta = json.loads(table.schema.metadata[b"distill"])
    write_parquet(tmp_path / "v2.parquet", table, {**meta, "format": 2})
    with pytest.raises(LMDataError, match=r"format 2.*reads format 3.*dvc repro lm_topk"):
        tk.read_topk(tmp_path / "v2.parquet", {"completions_hash": "h1"})


def test_token_ids_are_stored_as_ranks_of_the_files_token_order(tmp_path):
    import pyarrow.parquet as pq

    # token 500 is kept at every position, 7 at two, 3 at one: ranks 0, 1, 2 in the file's order
    cache = tk.TopK(np.array([2, 2, 1], np.uint8), np.array([500, 7, 7, 500, 500], np.uint16),
                    np.log(np.array([0.6, 0.3, 0.5, 0.4, 0.9], np.float32)), np.array([0.1, 0.1, 0.1]))
    other = tk.TopK(np.array([1], np.uint8), np.array([3], np.uint16), np.zeros(1, np.float32), np.zeros(1))
    np.testing.assert_array_equal(tk.token_order([cache, other]), [500, 7, 3])
    path = tmp_path / "topk.parquet"
    _write(path, [cache, other], vocab=600)
    stored = pq.read_table(path).column("indices").to_pylist()
    np.testing.assert_array_equal(tk._unplanar(stored[0], np.uint16), [0, 1, 0, 1, 0])  # rank gaps per position
    back, meta = tk.read_topk(path)
    np.testing.assert_array_equal(back["p0"].indices, cache.indices)
    np.testing.assert_array_equal(back["p1"].indices, [3])
    assert meta["token_order_bytes"] == 3 * 2


def test_a_damaged_token_order_is_refused_with_the_remedy(tmp_path):
    import pyarrow.parquet as pq

    from distill.lm.batch import write_parquet

    path = tmp_path / "topk.parquet"
    caches = _ragged(np.random.default_rng(8), [4, 3], vocab=600)
    _write(path, caches, vocab=600)
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[b"distill"])
    order = tk.token_order(caches)
    swapped = order.copy()
    swapped[[0, 1]] = swapped[[1, 0]]  # another order of the same tokens: every rank would name another token
    blob = tk.ORDER_CODEC.compress(tk._planar(swapped, np.uint16), asbytes=True)
    write_parquet(path, table, meta, {tk.ORDER_KEY: blob})
    with pytest.raises(LMDataError, match="does not match its recorded hash.*dvc repro lm_topk"):
        tk.read_topk(path)
    write_parquet(path, table, meta)  # no token order at all
    with pytest.raises(LMDataError, match="missing.*token_order.*dvc repro lm_topk"):
        tk.read_topk(path)
    write_parquet(path, table, meta, {tk.ORDER_KEY: b"not zstd"})
    with pytest.raises(LMDataError, match="token order is damaged.*dvc repro lm_topk"):
        tk.read_topk(path)


def test_a_damaged_cache_is_refused_with_the_remedy(tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from distill.lm.batch import read_blobs, write_parquet

    rng = np.random.default_rng(6)
    path = tmp_path / "topk.parquet"
    _write(path, _ragged(rng, [4, 3], vocab=600), vocab=600)
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[b"distill"])
    footer = read_blobs(path, (tk.ORDER_KEY,))
    blobs = table.column("logprobs").to_pylist()
    blobs[0] = bytes([blobs[0][0] ^ 1]) + blobs[0][1:]
    tampered = table.set_column(table.column_names.index("logprobs"), "logprobs", pa.array(blobs, pa.binary()))
    write_parquet(path, tampered, meta, footer)
    with pytest.raises(LMDataError, match="does not match its recorded hash.*dvc repro lm_topk"):
        tk.read_topk(path)
    # counts that disagree with the entries: the writer refuses them, and so does the reader under a matching hash
    bad = tk.TopK(np.array([2, 2], np.uint8), np.arange(3, dtype=np.uint16), np.zeros(3, np.float32), np.zeros(2))
    with pytest.raises(ValueError, match="inconsistent cache"):
        _write(path, [bad])
    from distill.lm.batch import hash_arrays

    blobs = {name: table.column(name).to_pylist() for name in tk.COLUMNS}
    blobs["counts"][0] = bytes([blobs["counts"][0][0] + 1]) + blobs["counts"][0][1:]
    order = tk.ORDER_CODEC.decompress(footer[tk.ORDER_KEY], meta["token_order_bytes"], asbytes=True)
    digest = hash_arrays(table.column("prompt_id").to_pylist(),
                         *([np.frombuffer(b, np.uint8) for b in blobs[name]] for name in tk.COLUMNS),
                         [np.frombuffer(order, np.uint8)])
    forged = table.set_column(table.column_names.index("counts"), "counts", pa.array(blobs["counts"], pa.binary()))
    write_parquet(path, forged, {**meta, "topk_hash": digest}, footer)
    with pytest.raises(LMDataError, match="inconsistent counts.*dvc repro lm_topk"):
        tk.read_topk(path)
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(LMDataError, match="not a readable top-k cache.*dvc repro lm_topk"):
        tk.read_topk(path)
    with pytest.raises(LMDataError, match="not found.*dvc repro lm_topk"):
        tk.read_topk(tmp_path / "missing.parquet")


# ---- reading the cache for training ---------------------------------------------------------------

DIVERGENCES = ["forward_kl", "reverse_kl", "js", "gjsd", "skew_kl", "skew_reverse_kl", "tvd"]


@pytest.mark.parametrize("name", DIVERGENCES)
def test_a_ragged_batch_gives_each_position_its_own_divergence(name):
    from distill import losses
    from distill.lm.train import TeacherTargets, cached_divergence

    rng = np.random.default_rng(7)
    caches = _ragged(rng, [3, 4], k=6, vocab=40)
    targets = TeacherTargets.from_caches(caches, 64, [3, 2])  # the second completion cut to 2 positions
    assert targets.valid is not None and targets.indices.shape == (5, int(targets.valid.sum(1).max()))
    logits = torch.randn(5, 40, requires_grad=True)
    mask = torch.tensor([True, False, True, True, True])
    got = cached_divergence(logits, targets, name, temperature=2.0, mask=mask)
    rows = [c.head(n) for c, n in zip(caches, [3, 2])]
    alone, r = [], 0
    for cache in rows:
        for i, start in enumerate(cache.offsets()[:-1]):
            n = int(cache.counts[i])
            if mask[r]:
                alone.append(losses.topk_divergence(
                    logits[r:r + 1], torch.from_numpy(cache.indices[start:start + n].astype(np.int64))[None],
                    torch.from_numpy(cache.logprobs[start:start + n])[None],
                    torch.tensor([float(cache.tail[i])]), divergence=name, temperature=2.0))
            r += 1
    assert float(got) == pytest.approx(float(torch.stack(alone).mean()), abs=1e-5)
    got.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad[1] == 0).all()
    full = TeacherTargets.from_caches([c.truncate(np.full(c.positions, 1)) for c in caches], 64, [3, 4])
    assert full.valid is None  # one width everywhere: the plain top-k path


def test_quantised_values_change_the_kl_loss_negligibly():
    from distill.lm.train import TeacherTargets, cached_divergence

    rng = np.random.default_rng(8)
    teacher = torch.from_numpy(rng.normal(size=(64, 3000)) * 2.5).float()
    deep = [tk.topk_from_logits(teacher, 64, 3000)]
    caches, _ = tk.water_fill(deep, 64 * 20)
    student = teacher + torch.randn(teacher.shape)
    losses_by_dtype = {}
    for dtype in ("float16", "uint8"):
        layout = tk.make_layout(caches, 64, 3000, dtype)
        stored = [tk.TopK(c.counts, c.indices, layout.decode_logprobs(layout.encode_logprobs(c.logprobs)),
                          c.tail.astype(np.float16)) for c in caches]
        targets = TeacherTargets.from_caches(stored, 64, [64])
        losses_by_dtype[dtype] = float(cached_divergence(student, targets, "forward_kl"))
    assert abs(losses_by_dtype["uint8"] - losses_by_dtype["float16"]) < 0.01 * losses_by_dtype["float16"]


def test_tiny_token_level_training_on_a_ragged_cache_lowers_its_loss(tmp_path):
    from distill.config import LMStudentConfig, LMTrainConfig
    from distill.lm.student import build_lm_student
    from distill.lm.teacher import CausalLM
    from distill.lm.train import LMData, train_lm
    from tests.lm_tiny import tiny_llama, tiny_tokenizer

    tokenizer = tiny_tokenizer(["turn on the lights in the kitchen", "what is the weather like today"] * 5)
    teacher = CausalLM(tiny_llama(tokenizer, seed=1), tokenizer)
    rng = np.random.default_rng(9)
    vocab = len(tokenizer)
    prompts = [rng.integers(3, vocab, 5).tolist() for _ in range(8)]
    completions = [rng.integers(3, vocab, 6).tolist() for _ in range(8)]
    deep = tk.teacher_topk(teacher, prompts, completions, 16, 4, torch.device("cpu"))
    ids = [f"p{i}" for i in range(8)]
    caches, _ = tk.water_fill(deep, 4 * 48)  # 4 tokens per position on average, from 1 to 16
    layout = tk.make_layout(caches, 16, vocab)
    assert len({int(n) for c in caches for n in c.counts}) > 1  # ragged
    tk.write_topk(tmp_path / "topk.parquet", ids, caches, {"k": 16}, layout)
    back, _ = tk.read_topk(tmp_path / "topk.parquet")
    student = build_lm_student(LMStudentConfig(num_layers=1, hidden_size=32, num_heads=2, num_kv_heads=1,
                                               intermediate_size=64), tokenizer, seed=0)
    cfg = LMTrainConfig(mode="token", loss="forward_kl", alpha=1.0, epochs=10, batch_size=4, learning_rate=1e-2,
                        device="cpu")
    data = LMData(prompts, completions, [0] * 8, [back[i] for i in ids])
    history = train_lm(student, data, cfg, 0, torch.device("cpu"))
    first, last = np.mean([h["kd"] for h in history[:3]]), np.mean([h["kd"] for h in history[-3:]])
    assert np.isfinite(first) and last < 0.7 * first
