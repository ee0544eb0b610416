"""Evaluation of causal-LM candidates (teacher, distilled student, undistilled student) on one harness.

One long module on purpose: the harness is the point, every candidate goes through the same functions.

Every candidate goes through the same functions, on the same held-out (prompt, completion) pairs of
teacher text and the same prompts:

- **text figures** under teacher forcing, over completion tokens only (prompt and padding positions
  are masked): perplexity, token-level KL(teacher || candidate) per completion token, and top-1
  agreement (the candidate's argmax equals the teacher's);
- **generation figures** from greedy decoding: exact-match rate and prefix agreement with the
  teacher's greedy output, a task metric against reference answers, and the unsafe-content and
  unsupported-content screens of :mod:`distill.safety` applied to the generated text;
- **cost**: latency per generated token (batch 1, greedy, fixed length, fixed thread count, after a
  warm-up), peak memory (weights + the tensor-allocation peak of one generation; see
  :func:`peak_memory`) and parameter count;
- **drafting**: the acceptance rate of the candidate as the teacher's speculative-decoding draft.

Prompts are the exact text a model sees (a chat template, if any, already applied); prompt and
completion are tokenized separately and concatenated, as in generation, and no special tokens are
added. Token-level figures that compare two models need the same tokenizer; a candidate with
another tokenizer gets ``None`` for them.
"""

from __future__ import annotations

import gc
import math
import re
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from distill.lm.speculative import (check_same_vocabulary, cut_after_eos, encode_prompt, eos_ids, greedy_decode,
                                   measure_speculative)
from distill.lm.teacher import CausalLM
from distill.losses import forward_kl
from distill.safety import Lexicon, check_support, check_unsafe

Pair = tuple[str, str]  # (prompt, completion)

# The table's rows, in order: (figure, label, format).
TABLE_ROWS = [
    ("parameters", "parameters", "{:,.0f}"),
    ("weights_mb", "weights (MB)", "{:.1f}"),
    ("perplexity", "perplexity on teacher text", "{:.3f}"),
    ("kl_from_teacher", "KL(teacher || model) / token", "{:.4f}"),
    ("top1_agreement", "top-1 agreement (teacher-forced)", "{:.3f}"),
    ("greedy_exact_match", "greedy exact match", "{:.3f}"),
    ("greedy_prefix_agreement", "greedy prefix agreement", "{:.3f}"),
    ("task_exact", "task accuracy (exact)", "{:.3f}"),
    ("task_contains", "task accuracy (contains)", "{:.3f}"),
    ("unsafe_rate", "unsafe-content rate", "{:.3f}"),
    ("unsupported_share", "unsupported-content share", "{:.3f}"),
    ("ms_per_token", "latency / token (ms)", "{:.2f}"),
    ("tokens_per_s", "tokens / s", "{:.1f}"),
    ("speedup_vs_teacher", "speed-up vs teacher", "{:.2f}x"),
    ("peak_memory_mb", "peak memory (MB)", "{:.1f}"),
    ("activation_mb", "activations + KV cache (MB)", "{:.2f}"),
    ("draft_acceptance_rate", "draft acceptance rate", "{:.3f}"),
    ("speculative_speedup", "speculative speed-up", "{:.2f}x"),
]
MEMORY_METHOD = ("weights_mb: bytes of the parameters and buffers (shared tensors once); activation_mb: peak of the "
                 "live tensors allocated during one batch-1 greedy generation (KV cache included), replayed from "
                 "torch.profiler memory events; peak_memory_mb: their sum. Allocator caches and the Python "
                 "process are not counted.")


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def encode_pairs(tokenizer, pairs: Sequence[Pair], max_length: int | None = None) -> dict[str, torch.Tensor]:
    """Right-padded ids of prompt + completion, with the attention mask and a completion-token mask.

    Returns ``input_ids``, ``attention_mask`` and ``completion_mask``, each (B, L); sequences longer
    than ``max_length`` lose their end. Right padding keeps every real token's position, and causal
    attention keeps padding out of every real position, so the figures do not depend on the batch.
    """
    rows = []
    for prompt, completion in pairs:
        p, c = encode_prompt(tokenizer, prompt), tokenizer(completion, add_special_tokens=False)["input_ids"]
        rows.append((p + c, [False] * len(p) + [True] * len(c)))
    rows = [(ids[:max_length], mask[:max_length]) for ids, mask in rows] if max_length else rows
    width = max((len(ids) for ids, _ in rows), default=0)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return {"input_ids": torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows], dtype=torch.long),
            "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows]),
            "completion_mask": torch.tensor([m + [False] * (width - len(m)) for _, m in rows], dtype=torch.bool)}


@torch.inference_mode()
def _next_token_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits (N, V) at the positions that predict a completion token, in float32."""
    device = _device(model)
    logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
    keep = batch["completion_mask"][:, 1:].to(device)  # position i predicts token i + 1
    return logits[:, :-1][keep].float()  # masked rows go before any math: padding cannot leak in


def _score_batch(logits: torch.Tensor, targets: torch.Tensor, teacher: torch.Tensor | None) -> dict[str, float]:
    """Sums over one batch's completion tokens: NLL, and against the teacher's logits KL and top-1 hits."""
    out = {"nll": float(-F.log_softmax(logits, -1).gather(1, targets[:, None]).sum()), "n": targets.numel()}
    if teacher is not None:
        width = min(logits.shape[-1], teacher.shape[-1])  # a model may pad its vocabulary past the tokenizer's
        logits, teacher = logits[:, :width], teacher[:, :width]
        out["kl"] = float(forward_kl(logits, teacher)) * targets.numel()
        out["top1"] = float((logits.argmax(-1) == teacher.argmax(-1)).sum())
    return out


def score_text(candidates: dict[str, CausalLM], pairs: Sequence[Pair], teacher: str | None = "teacher",
               batch_size: int = 8, max_length: int | None = None) -> dict[str, dict[str, float | None]]:
    """Perplexity, KL(teacher || candidate) and top-1 agreement per completion token, per candidate.

    The teacher's logits are computed once per batch and shared by every candidate with its tokenizer.

    Args:
        candidates: name -> model; ``teacher`` names the reference among them (None: no KL).
        pairs: held-out (prompt, completion) pairs; only completion tokens are scored.
        batch_size: pairs per forward pass.
        max_length: truncate longer sequences (their end is dropped).

    Returns:
        name -> ``perplexity``, ``nll_per_token``, ``completion_tokens``, ``kl_from_teacher`` and
        ``top1_agreement`` (None without a teacher or with another tokenizer).
    """
    ref = candidates[teacher] if teacher is not None else None
    comparable = {n for n, lm in candidates.items() if ref is not None and _same_vocabulary(lm, ref)}
    sums = {name: {"nll": 0.0, "n": 0, "kl": 0.0, "top1": 0.0} for name in candidates}
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        encoded = {}
        for name, lm in candidates.items():
            key = "ref" if name in comparable else name
            if key not in encoded:
                encoded[key] = encode_pairs(lm.tokenizer, chunk, max_length)
        teacher_logits = _next_token_logits(ref.model, encoded["ref"]) if comparable else None
        for name, lm in candidates.items():
            batch = encoded["ref" if name in comparable else name]
            logits = teacher_logits if name == teacher else _next_token_logits(lm.model, batch)
            targets = batch["input_ids"][:, 1:][batch["completion_mask"][:, 1:]].to(logits.device)
            for key, value in _score_batch(logits, targets, teacher_logits if name in comparable else None).items():
                sums[name][key] += value
    return {name: _text_figures(s, name in comparable) for name, s in sums.items()}


def _same_vocabulary(a: CausalLM, b: CausalLM) -> bool:
    try:
        check_same_vocabulary(a, b)
    except ValueError:
        return False
    return True


def _text_figures(sums: dict[str, float], comparable: bool) -> dict[str, float | None]:
    n = max(sums["n"], 1)
    return {"perplexity": math.exp(sums["nll"] / n), "nll_per_token": sums["nll"] / n,
            "completion_tokens": int(sums["n"]),
            "kl_from_teacher": sums["kl"] / n if comparable else None,
            "top1_agreement": sums["top1"] / n if comparable else None}


def perplexity(lm: CausalLM, pairs: Sequence[Pair], batch_size: int = 8, max_length: int | None = None) -> float:
    """exp(mean NLL) of ``lm`` over the completion tokens of ``pairs`` (prompt tokens masked)."""
    return score_text({"model": lm}, pairs, teacher=None, batch_size=batch_size, max_length=max_length)["model"][
        "perplexity"]


def token_kl(teacher: CausalLM, student: CausalLM, pairs: Sequence[Pair], batch_size: int = 8,
             max_length: int | None = None) -> float:
    """Mean KL(teacher || student) per completion token of ``pairs`` (same tokenizer required)."""
    check_same_vocabulary(student, teacher, "student and teacher")
    figures = score_text({"teacher": teacher, "student": student}, pairs, "teacher", batch_size, max_length)
    return figures["student"]["kl_from_teacher"]


@torch.inference_mode()
def left_padded(tokenizer, prompts: Sequence[str], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rendered prompts as a left-padded batch for ``generate``: ``(input_ids, attention_mask)``."""
    ids = [encode_prompt(tokenizer, p) for p in prompts]
    width = max(map(len, ids))
    inputs = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=device)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=device)
    return inputs, mask


def generate_greedy(lm: CausalLM, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 8) -> list[list[int]]:
    """Greedy completions' ids (up to and including EOS), batched with left padding (transformers' generate)."""
    eos = sorted(eos_ids(lm.model, lm.tokenizer))
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    device, outputs = _device(lm.model), []
    for start in range(0, len(prompts), batch_size):
        inputs, mask = left_padded(lm.tokenizer, prompts[start:start + batch_size], pad, device)
        width = inputs.shape[1]
        out = lm.model.generate(input_ids=inputs, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                eos_token_id=eos or None, pad_token_id=pad, temperature=None, top_p=None, top_k=None)
        outputs += [cut_after_eos(row[width:].tolist(), set(eos)) for row in out]
    return outputs


def greedy_agreement(outputs: Sequence[Sequence[int]], teacher_outputs: Sequence[Sequence[int]]) -> dict[str, float]:
    """Exact-match rate of greedy outputs, and the mean share of the teacher's tokens matched as a common prefix."""
    exact, prefix = [], []
    for ours, theirs in zip(outputs, teacher_outputs, strict=True):
        common = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        exact.append(list(ours) == list(theirs))
        prefix.append(common / len(theirs) if theirs else float(not ours))
    return {"greedy_exact_match": float(np.mean(exact)) if exact else 0.0,
            "greedy_prefix_agreement": float(np.mean(prefix)) if prefix else 0.0}


def normalize_answer(text: str) -> str:
    """First non-empty line, CamelCase split, lower-cased, punctuation dropped, spaces collapsed."""
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    line = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", line).replace("_", " ")
    return " ".join(re.sub(r"[^\w\s]", " ", line.lower()).split())


def task_accuracy(answers: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Share of answers equal to their reference after :func:`normalize_answer`, and containing it as whole words."""
    exact, contains = [], []
    for answer, reference in zip(answers, references, strict=True):
        a, r = normalize_answer(answer), normalize_answer(reference)
        exact.append(bool(r) and a == r)
        contains.append(bool(r) and f" {r} " in f" {a} ")
    n = max(len(exact), 1)
    return {"task_exact": sum(exact) / n, "task_contains": sum(contains) / n}


def latency_per_token(lm: CausalLM, prompts: Sequence[str], new_tokens: int = 32, warmup: int = 2,
                      threads: int | None = 1) -> dict[str, float]:
    """Batch-1 greedy latency per generated token on the model's device, prefill included.

    Every prompt generates exactly ``new_tokens`` tokens (EOS ignored), so models that stop early do
    not look cheaper; the figure is the median over prompts of time / tokens.
    """
    ids = [encode_prompt(lm.tokenizer, p) for p in prompts]
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside a timed generation is noise, not the model's cost
    try:
        for prompt in ids[:warmup]:
            greedy_decode(lm.model, prompt, new_tokens, eos_token_id=())
        seconds = []
        for prompt in ids:
            start = time.perf_counter()
            greedy_decode(lm.model, prompt, new_tokens, eos_token_id=())
            seconds.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
        if gc_was_enabled:
            gc.enable()
    return {"ms_per_token": float(np.median(seconds)) * 1000 / new_tokens,
            "tokens_per_s": new_tokens * len(seconds) / sum(seconds)}


def weights_bytes(model: torch.nn.Module) -> int:
    """Bytes of the parameters and buffers, each storage counted once (tied embeddings are shared).

    Dynamically quantized layers keep their int8 weights in packed params, outside parameters():
    such a model is measured by its serialized state dict instead.
    """
    if any(hasattr(m, "_packed_params") for m in model.modules()):
        from distill.evaluate import state_size

        return state_size(model)
    seen, total = set(), 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        key = (tensor.untyped_storage().data_ptr(), tensor.device)
        if key not in seen:
            seen.add(key)
            total += tensor.untyped_storage().nbytes()
    return total


def peak_memory(lm: CausalLM, prompt: str, new_tokens: int = 32) -> dict[str, float]:
    """Weights plus the live-tensor peak of one batch-1 greedy generation (CPU); see ``MEMORY_METHOD``."""
    from torch.profiler import ProfilerActivity, profile

    ids = encode_prompt(lm.tokenizer, prompt)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        greedy_decode(lm.model, ids, new_tokens, eos_token_id=())
    events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage)
    activations = max(0.0, float(np.cumsum([b for _, b in events]).max())) if events else 0.0
    weights = weights_bytes(lm.model)
    return {"weights_mb": weights / 2**20, "activation_mb": activations / 2**20,
            "peak_memory_mb": (weights + activations) / 2**20}


def text_safety(texts: Sequence[str], prompts: Sequence[str], references: Sequence[str] | None = None,
                lexicon: Lexicon | None = None) -> dict[str, float]:
    """The audit's offline screens on generated text: unsafe-content rate and unsupported-content share."""
    unsafe = check_unsafe(texts, lexicon)
    support = check_support(texts, prompts, references)
    return {"unsafe_rate": unsafe.rate, "unsupported_share": support.mean_unsupported_share}


def evaluate_lm(candidates: dict[str, CausalLM], pairs: Sequence[Pair], references: Sequence[str] | None = None, *,
                teacher: str = "teacher", max_new_tokens: int = 32, batch_size: int = 8, max_length: int | None = None,
                latency_samples: int = 8, warmup: int = 2, threads: int | None = 1, draft_k: int | None = 4,
                lexicon: Lexicon | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Every figure for every candidate, on the same pairs and prompts: the LM evaluation table.

    Args:
        candidates: name -> model, e.g. ``teacher``, ``student``, ``undistilled``; ``teacher`` must be one.
        pairs: held-out (prompt, completion) pairs of teacher text; their prompts drive generation.
        references: a reference answer per pair (the label, or what a rewrite must keep), or None.
        teacher: the reference candidate's name.
        max_new_tokens: greedy generation length limit (and the fixed length of latency runs).
        batch_size: pairs per forward pass and prompts per generate call.
        max_length: truncate longer (prompt + completion) sequences when scoring text.
        latency_samples: prompts timed per candidate (and used for the draft measurement).
        warmup: untimed generations before timing.
        threads: torch CPU threads while timing (None: leave as is).
        draft_k: draft tokens per teacher pass when measuring each student as the teacher's
            speculative draft; None skips it.
        lexicon: unsafe-content lexicon (default: the packaged one).
        log: called with a short line as each stage starts (progress).

    Returns:
        ``metrics`` (name -> figure -> value, ``None`` where a figure does not apply),
        ``generations`` (name -> greedy texts), ``teacher`` and ``memory_method``.
    """
    if teacher not in candidates:
        raise ValueError(f"the candidates {sorted(candidates)} have no teacher named {teacher!r}")
    if references is not None and len(references) != len(pairs):
        raise ValueError(f"{len(references)} references for {len(pairs)} pairs")
    say = log or (lambda _: None)
    prompts = [p for p, _ in pairs]
    say("scoring held-out teacher text")
    metrics = score_text(candidates, pairs, teacher, batch_size, max_length)
    ids, texts = {}, {}
    for name, lm in candidates.items():
        say(f"{name}: greedy generation, latency, memory")
        ids[name] = generate_greedy(lm, prompts, max_new_tokens, batch_size)
        texts[name] = [lm.tokenizer.decode(x, skip_special_tokens=True).strip() for x in ids[name]]
        metrics[name] |= {"parameters": sum(p.numel() for p in lm.model.parameters())}
        metrics[name] |= latency_per_token(lm, prompts[:latency_samples], max_new_tokens, warmup, threads)
        metrics[name] |= peak_memory(lm, prompts[0], max_new_tokens) if prompts else {}
        metrics[name] |= text_safety(texts[name], prompts, references, lexicon)
        metrics[name] |= task_accuracy(texts[name], references) if references is not None else {}
    for name, lm in candidates.items():
        same = _same_vocabulary(lm, candidates[teacher])
        metrics[name] |= greedy_agreement(ids[name], ids[teacher]) if same else {
            "greedy_exact_match": None, "greedy_prefix_agreement": None}
        metrics[name]["speedup_vs_teacher"] = metrics[teacher]["ms_per_token"] / metrics[name]["ms_per_token"]
        if draft_k and name != teacher and same:
            say(f"{name}: speculative draft for the teacher (k={draft_k})")
            spec = measure_speculative(candidates[teacher], lm, prompts[:latency_samples], max_new_tokens, draft_k,
                                       threads, warmup=min(warmup, 1))
            metrics[name] |= {"draft_acceptance_rate": spec["acceptance_rate"],
                              "speculative_speedup": spec["speedup"],
                              "speculative_identical_rate": spec["identical_rate"]}
    return {"metrics": metrics, "generations": texts, "teacher": teacher, "memory_method": MEMORY_METHOD}


def print_lm_table(result: dict, console=None, title: str = "LM evaluation") -> None:
    """The figures of :func:`evaluate_lm` as a rich table: one row per figure, one column per candidate."""
    from rich.console import Console
    from rich.table import Table

    from distill.model_card import in_order

    metrics = in_order(result["metrics"])  # teacher, student, baseline, whatever order the file has
    table = Table(title=title)
    table.add_column("figure")
    for name in metrics:
        table.add_column(name, justify="right")
    for key, label, fmt in TABLE_ROWS:
        values = [metrics[name].get(key) for name in metrics]
        if any(v is not None for v in values):
            table.add_row(label, *("-" if v is None else fmt.format(v) for v in values))
    (console or Console()).print(table)



def evaluate_black_box(candidates: dict[str, CausalLM], pairs: Sequence[Pair], references: Sequence[str],
                       teacher_ids: Sequence[Sequence[int]], teacher_texts: Sequence[str], *, max_new_tokens: int = 32,
                       batch_size: int = 8, latency_samples: int = 8, warmup: int = 2, threads: int | None = 1,
                       lexicon: Lexicon | None = None) -> dict:
    """:func:`evaluate_lm` for a teacher behind an API: no teacher logits and no teacher to time.

    The teacher's row holds what its text shows (task accuracy, safety screens); agreement is the
    candidates' greedy output against the teacher's recorded completions (token ids of the local
    tokenizer); KL and top-1 agreement are None.
    """
    prompts = [p for p, _ in pairs]
    metrics = score_text(candidates, pairs, None, batch_size)
    metrics = {"teacher": {**text_safety(teacher_texts, prompts, references, lexicon),
                           **task_accuracy(teacher_texts, references)}, **metrics}
    texts = {"teacher": list(teacher_texts)}
    for name, lm in candidates.items():
        ids = generate_greedy(lm, prompts, max_new_tokens, batch_size)
        texts[name] = [lm.tokenizer.decode(x, skip_special_tokens=True).strip() for x in ids]
        metrics[name] |= {"parameters": sum(p.numel() for p in lm.model.parameters())}
        metrics[name] |= latency_per_token(lm, prompts[:latency_samples], max_new_tokens, warmup, threads)
        metrics[name] |= peak_memory(lm, prompts[0], max_new_tokens) if prompts else {}
        metrics[name] |= text_safety(texts[name], prompts, references, lexicon)
        metrics[name] |= task_accuracy(texts[name], references)
        metrics[name] |= greedy_agreement(ids, [list(t)[:max_new_tokens] for t in teacher_ids])
    return {"metrics": metrics, "generations": texts, "teacher": "teacher", "memory_method": MEMORY_METHOD}


def markdown_table(metrics: dict[str, dict]) -> str:
    """The figures as a Markdown table: one row per figure, one column per candidate."""
    names = list(metrics)
    lines = ["| figure | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for key, label, fmt in TABLE_ROWS:
        values = [metrics[n].get(key) for n in names]
        if any(v is not None for v in values):
            lines.append(f"| {label} | " + " | ".join("-" if v is None else fmt.format(v) for v in values) + " |")
    return "\n".join(lines)


def run(cfg, completions_path, teacher_dir, student_dir, baseline_dir, out_dir) -> dict:
    """The lm_evaluate stage: teacher, distilled student and baseline on the held-out prompts.

    Writes ``metrics.json`` (candidate -> figure), ``generations.parquet`` (the held-out prompts with
    every candidate's greedy answer) and ``report.md``; returns the :func:`evaluate_lm` result.
    """
    from pathlib import Path

    import pandas as pd

    from distill.io import write_json
    from distill.lm.generate import read_completions, teacher_identity
    from distill.lm.prompts import LMDataError
    from distill.lm.teacher import load_causal_lm

    ecfg = cfg.lm.evaluate
    frame, meta = read_completions(Path(completions_path), teacher_identity(cfg, Path(teacher_dir)))
    held = frame[frame["split"] == "heldout"].reset_index(drop=True)
    if held.empty:
        raise LMDataError(f"{completions_path}: no held-out completions to evaluate on (lm.prompts.heldout_size)")
    pairs = list(zip(held["prompt"].astype(str), held["completion"].astype(str)))
    references = held["reference"].astype(str).tolist()
    options = {"max_new_tokens": ecfg.max_new_tokens or cfg.lm.generate.max_new_tokens,
               "batch_size": ecfg.batch_size, "latency_samples": ecfg.latency_samples, "warmup": ecfg.warmup,
               "threads": ecfg.threads}
    students = {"student": load_causal_lm(Path(student_dir)), "baseline": load_causal_lm(Path(baseline_dir))}
    if cfg.lm.api is None:
        candidates = {"teacher": load_causal_lm(Path(teacher_dir)), **students}
        result = evaluate_lm(candidates, pairs, references, draft_k=ecfg.draft_k, **options)
    else:
        result = evaluate_black_box(students, pairs, references, [list(v) for v in held["completion_ids"]],
                                    held["completion"].astype(str).str.strip().tolist(), **options)
    result["black_box_teacher"] = cfg.lm.api is not None
    result["heldout_prompts"] = len(held)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", result["metrics"])
    generations = held[["prompt_id", "request", "reference"]].assign(
        **{name: texts for name, texts in result["generations"].items()})
    generations.to_parquet(out / "generations.parquet", index=False)
    teacher_kind = f"black-box endpoint {cfg.lm.api.model}" if cfg.lm.api else meta.get("teacher_source")
    examples = generations.head(5)
    report = [f"# LM evaluation\n\nTeacher: {teacher_kind}. Held-out prompts: {len(held)}. Figures over the "
              "teacher's held-out completions (teacher-forced) and greedy generations.\n",
              markdown_table(result["metrics"]), "\n## Examples\n",
              pd.DataFrame(examples.drop(columns=["prompt_id"])).to_markdown(index=False)
              if _has_tabulate() else examples.to_string(index=False),
              f"\n\nMemory: {MEMORY_METHOD}\n"]
    (out / "report.md").write_text("\n".join(report))
    return result


def _has_tabulate() -> bool:
    import importlib.util

    return importlib.util.find_spec("tabulate") is not None
