"""Greedy speculative decoding: a small draft model proposes, the teacher verifies.

Each round the draft proposes up to ``k`` tokens one at a time; the teacher scores the last accepted
token and the ``k`` proposals in one forward pass; the longest prefix of proposals that equals the
teacher's own greedy choices is kept, followed by the teacher's token at the first mismatch (or its
bonus token after the last proposal). The output is therefore exactly the teacher's greedy output,
whatever the draft: the draft only changes how many teacher passes it takes (Leviathan et al. 2023,
"Fast Inference from Transformers via Speculative Decoding", greedy case).

Both models keep a KV cache (``DynamicCache``) that is cropped back to the accepted tokens after
each round, so no token is ever re-encoded. The invariant: each cache holds a prefix of the
sequence without its last token; the next forward feeds whatever the cache is missing.

Draft and teacher must share token ids (the same tokenizer); :func:`measure_speculative` checks.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from distill.lm.teacher import CausalLM


@dataclass
class SpeculativeResult:
    """One speculative generation: the new tokens and what the draft contributed."""

    tokens: list[int]  # generated ids, prompt excluded, up to and including EOS
    proposed: int  # draft tokens offered to the teacher
    accepted: int  # draft tokens the teacher agreed with
    teacher_calls: int  # teacher forward passes, prefill included

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


def eos_ids(model: nn.Module, tokenizer=None) -> set[int]:
    """The ids that end a generation: the generation config's, else the tokenizer's EOS."""
    config = getattr(model, "generation_config", None)
    ids = getattr(config, "eos_token_id", None)
    if ids is None and tokenizer is not None:
        ids = tokenizer.eos_token_id
    return _as_set(ids)


def _as_set(ids: int | Iterable[int] | None) -> set[int]:
    if ids is None:
        return set()
    return {int(ids)} if isinstance(ids, int) else {int(i) for i in ids}


def _new_cache(model: nn.Module):
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    if not cache.is_croppable:
        raise ValueError(f"{type(model).__name__}: its KV cache cannot be cropped (sliding-window or "
                         "recurrent layers); speculative decoding needs a croppable cache")
    return cache


def _crop(cache, length: int) -> None:
    """Drop the cached positions from ``length`` on (the cache API takes the count to remove)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def _forward(model: nn.Module, cache, ids: list[int], last_only: bool) -> torch.Tensor:
    """Feed ``ids`` after what ``cache`` holds; logits (len(ids), V), or (1, V) with ``last_only``."""
    device = next(model.parameters()).device
    inputs = torch.tensor([ids], dtype=torch.long, device=device)
    out = model(input_ids=inputs, cache=cache, use_cache=True, logits_to_keep=1 if last_only else 0)
    return out.logits[0]


@torch.inference_mode()
def greedy_decode(model: nn.Module, prompt_ids: Sequence[int], max_new_tokens: int,
                  eos_token_id: int | Iterable[int] | None = None) -> list[int]:
    """Plain greedy decoding with a KV cache, batch 1: the reference speculative decoding must equal.

    Stops after ``max_new_tokens`` or after emitting an EOS id (which is kept). Pass
    ``eos_token_id=()`` to always generate ``max_new_tokens`` tokens (for timing).
    """
    if not prompt_ids:
        raise ValueError("the prompt is empty: greedy decoding needs at least one token")
    eos, cache, feed, out = _as_set(eos_token_id), _new_cache(model), list(prompt_ids), []
    while len(out) < max_new_tokens:
        token = int(_forward(model, cache, feed, last_only=True)[-1].argmax())
        out.append(token)
        if token in eos:
            break
        feed = [token]
    return out


def _propose(draft: nn.Module, cache, seq: list[int], k: int, eos: set[int]) -> list[int]:
    """Up to ``k`` greedy draft tokens after ``seq`` (fewer if the draft emits EOS)."""
    proposals: list[int] = []
    for _ in range(k):
        missing = (seq + proposals)[cache.get_seq_length():]  # 1 token, or 2 after a full accept
        token = int(_forward(draft, cache, missing, last_only=True)[-1].argmax())
        proposals.append(token)
        if token in eos:
            break
    return proposals


@torch.inference_mode()
def speculative_decode(target: nn.Module, draft: nn.Module, prompt_ids: Sequence[int], max_new_tokens: int,
                       k: int = 4, eos_token_id: int | Iterable[int] | None = None) -> SpeculativeResult:
    """Greedy speculative decoding of ``target`` with ``draft`` proposing ``k`` tokens a round, batch 1.

    Args:
        target: the model whose greedy output is produced (the teacher).
        draft: a cheaper model with the same token ids (the student).
        prompt_ids: the prompt's token ids (non-empty).
        max_new_tokens: the most tokens to generate.
        k: draft tokens proposed per teacher pass (>= 1).
        eos_token_id: ids that end the generation (kept in the output); default: the target's.

    Returns:
        The generated ids, identical to :func:`greedy_decode` of ``target``, with the proposal counts.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not prompt_ids:
        raise ValueError("the prompt is empty: speculative decoding needs at least one token")
    eos = eos_ids(target) if eos_token_id is None else _as_set(eos_token_id)
    target_cache, draft_cache = _new_cache(target), _new_cache(draft)
    seq, start = list(prompt_ids), len(prompt_ids)
    if max_new_tokens < 1:
        return SpeculativeResult([], 0, 0, 0)
    seq.append(int(_forward(target, target_cache, seq, last_only=True)[-1].argmax()))  # the cache: prompt
    proposed = accepted = 0
    calls = 1
    while len(seq) - start < max_new_tokens and seq[-1] not in eos:
        room = max_new_tokens - (len(seq) - start) - 1  # the teacher always adds one token itself
        proposals = _propose(draft, draft_cache, seq, min(k, room), eos) if room > 0 else []
        choices = _forward(target, target_cache, seq[-1:] + proposals, last_only=False).argmax(-1).tolist()
        calls += 1
        n = 0
        while n < len(proposals) and proposals[n] == choices[n]:
            n += 1
        proposed, accepted = proposed + len(proposals), accepted + n
        seq += cut_after_eos(proposals[:n] + [choices[n]], eos)  # an accepted EOS ends it: no bonus token
        _crop(target_cache, len(seq) - 1)  # the accepted proposals stay; the rejected ones go
        _crop(draft_cache, len(seq) - 1)
    return SpeculativeResult(seq[start:], proposed, accepted, calls)


def cut_after_eos(tokens: list[int], eos: set[int]) -> list[int]:
    """``tokens`` up to and including the first EOS id."""
    for i, token in enumerate(tokens):
        if token in eos:
            return tokens[:i + 1]
    return tokens


def check_same_vocabulary(a: CausalLM, b: CausalLM, what: str = "draft and teacher") -> None:
    """Raise ValueError unless the two tokenizers map the same strings to the same ids."""
    if a.tokenizer is b.tokenizer:
        return
    if a.tokenizer.get_vocab() != b.tokenizer.get_vocab():
        raise ValueError(f"{what} have different tokenizers: token-level comparison needs the same token ids "
                         "(use a student built on the teacher's tokenizer)")


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """A prompt's ids as the model sees them: the text as given (chat template already applied)."""
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]


def measure_speculative(teacher: CausalLM, draft: CausalLM, prompts: Sequence[str], max_new_tokens: int = 32,
                        k: int = 4, threads: int | None = 1, warmup: int = 1) -> dict[str, float]:
    """Acceptance rate and end-to-end tokens/s of speculative decoding vs the teacher alone (CPU, batch 1).

    Both sides run the same prompts, same stopping rule, same thread count, after ``warmup`` prompts
    of each; ``identical_rate`` is the share of prompts whose outputs are the same (1.0 unless the
    two paths disagree at a numerical tie).
    """
    check_same_vocabulary(draft, teacher)
    eos = eos_ids(teacher.model, teacher.tokenizer)
    ids = [encode_prompt(teacher.tokenizer, p) for p in prompts]
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        for prompt in ids[:warmup]:
            greedy_decode(teacher.model, prompt, max_new_tokens, eos)
            speculative_decode(teacher.model, draft.model, prompt, max_new_tokens, k, eos)
        plain, plain_s = _timed(lambda p: greedy_decode(teacher.model, p, max_new_tokens, eos), ids)
        spec, spec_s = _timed(lambda p: speculative_decode(teacher.model, draft.model, p, max_new_tokens, k, eos), ids)
    finally:
        torch.set_num_threads(previous)
    tokens = sum(len(r.tokens) for r in spec)
    proposed, accepted = sum(r.proposed for r in spec), sum(r.accepted for r in spec)
    return {"k": k, "prompts": len(ids), "tokens": tokens, "proposed": proposed, "accepted": accepted,
            "acceptance_rate": accepted / proposed if proposed else 0.0,
            "tokens_per_teacher_call": tokens / max(sum(r.teacher_calls for r in spec), 1),
            "teacher_tokens_per_s": sum(map(len, plain)) / plain_s, "speculative_tokens_per_s": tokens / spec_s,
            "speedup": plain_s / spec_s if spec_s else float("nan"),
            "identical_rate": sum(a == b.tokens for a, b in zip(plain, spec)) / max(len(ids), 1)}


def _timed(decode, prompts: list[list[int]]) -> tuple[list, float]:
    """Run ``decode`` on every prompt; its results and the total seconds (no GC pauses inside)."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        results = [decode(p) for p in prompts]
        return results, time.perf_counter() - start
    finally:
        if gc_was_enabled:
            gc.enable()
