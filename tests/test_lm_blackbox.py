"""A black-box teacher in the LM stages: completions through the ChatClient, no top-k, clear refusals."""

from __future__ import annotations

import json

import httpx
import pytest

from distill.config import config_from_dict
from distill.lm import generate as gen
from distill.lm import topk as tk
from distill.lm.client import ChatClient
from distill.lm.prompts import LMDataError, PromptTemplate, build_prompts, instructions, write_prompts
from tests.conftest import make_examples
from tests.lm_tiny import save_tiny_lm, tiny_tokenizer


def fake_endpoint(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    text = f"{body['messages'][-1]['content'].split()[0]} lights_on"
    return httpx.Response(200, json={"choices": [{"message": {"role": "assistant", "content": text},
                                                  "finish_reason": "stop"}],
                                     "usage": {"prompt_tokens": 10, "completion_tokens": 3}})


def test_black_box_completions_are_cached_rows_in_the_local_tokenizer_and_topk_is_refused(tmp_path):
    examples = make_examples(per_label=4)
    tokenizer = tiny_tokenizer(examples["text"].tolist())
    folder = save_tiny_lm(tmp_path / "tok", tokenizer)
    cfg = config_from_dict({"lm": {"api": {"model": "remote", "cache_dir": str(tmp_path / "cache"),
                                           "api_key_env": None},
                                   "train": {"mode": "sequence"}, "prompts": {"train_size": 6, "heldout_size": 2}}})
    prompts = build_prompts(examples.iloc[::2], examples.iloc[1::2], cfg.lm.prompts, seed=0)
    labels = sorted(examples["label"].unique())
    write_prompts(tmp_path / "prompts.parquet", prompts, {**instructions(cfg.lm.prompts, labels), "labels": labels})
    settings = gen.GenerationSettings.from_config(cfg.lm.generate, cfg.seed)
    with ChatClient(cfg.lm.api, transport=httpx.MockTransport(fake_endpoint)) as client:
        rows, spend = gen.api_completion_rows(client, tokenizer, prompts, PromptTemplate("route it"), "Answer:", settings)
    assert len(rows) == 8 and spend["skipped"] == 0 and spend["requests"] == 8
    assert all(r["finished"] and r["completion_ids"][-1] == tokenizer.eos_token_id for r in rows)
    key = {"teacher_fingerprint": gen.api_fingerprint(cfg.lm.api)}
    gen.write_completions(tmp_path / "completions.parquet", rows, key)
    frame, _ = gen.read_completions(tmp_path / "completions.parquet", gen.teacher_identity(cfg, folder))
    assert frame["completion"].str.endswith("lights_on").all()
    # The same requests again: all from the cache, nothing sent.
    with ChatClient(cfg.lm.api, transport=httpx.MockTransport(lambda r: httpx.Response(500))) as client:
        again, spend = gen.api_completion_rows(client, tokenizer, prompts, PromptTemplate("route it"), "Answer:", settings)
    assert spend["cache_hits"] == 8 and spend["requests"] == 0 and again == rows

    tk.run(cfg, tmp_path / "completions.parquet", folder, tmp_path / "topk.parquet")
    with pytest.raises(LMDataError, match="black-box endpoint lm.api"):
        tk.read_topk(tmp_path / "topk.parquet")
