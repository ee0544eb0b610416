"""LM student training: sequence-level, token-level on the cached top-k, or online with the live teacher.

- ``sequence``: cross-entropy on the teacher's completion tokens, prompt tokens masked (data
  distillation, Kim & Rush 2016). Works with any student tokenizer: the teacher's text is retokenized.
- ``token``: ``alpha * divergence + (1 - alpha) * cross-entropy``, the divergence between the student
  and the cached teacher top-k plus the tail bucket (:func:`distill.losses.topk_divergence`).
- ``online``: the same mix, with the teacher run inside the step on the same batch and the divergence
  taken over the full vocabulary (the reference the cached top-k is compared against).

Chain of thought (Hsieh et al. 2023, "Distilling Step-by-Step"): completions whose leading tokens are
a rationale are trained on both parts, each term as ``answer + rationale_weight * rationale`` (means
over answer and rationale tokens apart). Losses only ever see completion positions: the heads run
on those positions alone, so padding and prompt positions cannot change the loss.

Every ``lm.train.checkpoint_every`` steps the loop writes a checkpoint (``distill.checkpoint``: model,
optimizer, scheduler, RNG and the batch stream's position); a killed run resumes from the last one and
ends with the weights an uninterrupted run ends with. Checkpoints go once the output is written.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from distill import checkpoint, losses
from distill.config import LMTrainConfig, PipelineConfig
from distill.lm.batch import TokenBatch, make_batch, selected_logits
from distill.lm.generate import read_completions, teacher_identity
from distill.lm.prompts import LMDataError, PromptTemplate, read_prompts, render_prompt
from distill.lm.student import check_same_tokenizer, save_lm, student_for
from distill.lm.teacher import CausalLM, describe_source, load_causal_lm, tokenizer_fingerprint
from distill.lm.topk import TopK, read_topk
from distill.models import pick_device
from distill.trainer import Batches

log = logging.getLogger("distill")


@dataclass
class LMData:
    """Token ids of prompts and completions, rationale lengths, and (token mode) the teacher's top-k."""

    prompts: list[list[int]]
    completions: list[list[int]]
    rationale_tokens: list[int]
    topk: list[TopK] | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, idx) -> "LMData":
        pick = [int(i) for i in idx]
        return LMData([self.prompts[i] for i in pick], [self.completions[i] for i in pick],
                      [self.rationale_tokens[i] for i in pick],
                      None if self.topk is None else [self.topk[i] for i in pick])


@dataclass
class TeacherTargets:
    """The cached top-k of a batch's completion positions, row-major: (N, k), (N, k), (N,).

    The cache keeps a different number of tokens per position; rows are padded to the widest one and
    ``valid`` (N, k) marks the real entries (None: every entry is real).
    """

    indices: torch.Tensor
    logprobs: torch.Tensor
    tail: torch.Tensor
    valid: torch.Tensor | None = None

    @classmethod
    def from_caches(cls, caches: list[TopK], max_length: int, lengths: list[int]) -> "TeacherTargets":
        parts = [c.head(n) for c, n in zip(caches, lengths)]
        counts = np.concatenate([p.counts for p in parts]).astype(np.int64)
        ids = np.concatenate([p.indices for p in parts]).astype(np.int64)
        starts = np.cumsum(counts) - counts
        row = np.repeat(np.arange(len(counts)), counts)
        col = np.arange(len(ids)) - starts[row]
        shape = (len(counts), int(counts.max(initial=1)))
        indices = np.repeat(ids[starts][:, None], shape[1], axis=1)  # padding repeats the row's top token id
        logprobs, valid = np.zeros(shape, np.float32), np.zeros(shape, bool)
        indices[row, col], valid[row, col] = ids, True
        logprobs[row, col] = np.concatenate([p.logprobs for p in parts])
        return cls(torch.from_numpy(indices), torch.from_numpy(logprobs),
                   torch.from_numpy(np.concatenate([p.tail for p in parts]).astype(np.float32)),
                   None if valid.all() else torch.from_numpy(valid))

    def to(self, device: torch.device) -> "TeacherTargets":
        return TeacherTargets(self.indices.to(device), self.logprobs.to(device), self.tail.to(device),
                              None if self.valid is None else self.valid.to(device))


EMPTY_BUCKET = -1e4  # a padding bucket's log-probability on both sides: its mass underflows to exactly 0


def cached_divergence(logits: torch.Tensor, targets: TeacherTargets, divergence: str, temperature: float = 1.0,
                      mask: torch.Tensor | None = None, **options) -> torch.Tensor:
    """:func:`distill.losses.topk_divergence` between (N, V) logits and a batch of the cached top-k.

    A row padded past its own k gets padding buckets that are empty on both sides, so each row is
    compared over its own kept tokens plus the tail bucket, exactly as alone.
    """
    if targets.valid is None:
        return losses.topk_divergence(logits, targets.indices, targets.logprobs, targets.tail,
                                      divergence=divergence, temperature=temperature, mask=mask, **options)
    keep = torch.ones(len(logits), dtype=torch.bool, device=logits.device) if mask is None else mask
    student, teacher = losses.topk_tail_buckets(logits[keep], targets.indices[keep], targets.logprobs[keep],
                                                targets.tail[keep])
    padding = torch.nn.functional.pad(~targets.valid[keep], (0, 1))  # the tail bucket is always real
    return losses.DIVERGENCES[divergence](student.masked_fill(padding, EMPTY_BUCKET),
                                          teacher.masked_fill(padding, EMPTY_BUCKET), temperature=temperature,
                                          **options)


@dataclass
class LMTrainResult:
    path: Path | None
    mode: str
    loss: str
    steps: int
    seconds: float
    train_loss_first: float
    train_loss_last: float
    heldout_before: dict
    heldout_after: dict
    student_parameters: int
    history: list[dict] = field(default_factory=list)


def divergence_options(cfg: LMTrainConfig) -> dict:
    """The options the configured divergence takes (beta for gjsd, skew for the skew variants)."""
    if cfg.loss == "gjsd":
        return {"beta": cfg.beta}
    return {"skew": cfg.skew} if cfg.loss.startswith("skew") else {}


def _split_terms(term: Callable[[torch.Tensor], torch.Tensor], rationale: torch.Tensor,
                 weight: float) -> torch.Tensor:
    """``term(answer rows) + weight * term(rationale rows)``; a part with no rows adds a connected zero."""
    answer_part = term(~rationale)
    return answer_part + weight * term(rationale) if rationale.any() else answer_part


def lm_objective(student: torch.nn.Module, batch: TokenBatch, cfg: LMTrainConfig,
                 targets: TeacherTargets | None = None, teacher: torch.nn.Module | None = None) -> tuple[
                     torch.Tensor, dict[str, float]]:
    """The training loss of one batch and its parts.

    Args:
        student: a causal LM.
        batch: the batch; only its completion positions enter the loss.
        cfg: mode, divergence, alpha, temperature, rationale weight.
        targets: the cached teacher top-k of the batch (token mode).
        teacher: the live teacher (online mode), sharing the student's tokenizer.
    """
    logits = selected_logits(student, batch.input_ids, batch.attention_mask, batch.target_mask)  # (N, V)
    rationale = batch.rationale_mask[batch.target_mask]  # (N,)
    ce = _split_terms(lambda keep: losses.cross_entropy(logits, batch.targets.masked_fill(~keep, -100)),
                      rationale, cfg.rationale_weight)
    if cfg.mode == "sequence" or cfg.alpha == 0:
        return ce, {"ce": float(ce.detach())}
    options = divergence_options(cfg)
    if cfg.mode == "token":
        if targets is None:
            raise ValueError("token mode needs the cached teacher top-k of the batch")
        kd = _split_terms(lambda keep: cached_divergence(
            logits, targets, cfg.loss, temperature=cfg.kd_temperature, mask=keep, **options),
            rationale, cfg.rationale_weight)
    else:
        if teacher is None:
            raise ValueError("online mode needs the teacher model")
        with torch.inference_mode():
            teacher_logits = selected_logits(teacher, batch.input_ids, batch.attention_mask, batch.target_mask)
        teacher_logits = teacher_logits.clone()  # an inference tensor cannot enter autograd
        kd = _split_terms(lambda keep: losses.DIVERGENCES[cfg.loss](
            logits, teacher_logits, temperature=cfg.kd_temperature, mask=keep, **options),
            rationale, cfg.rationale_weight)
    loss = cfg.alpha * kd + (1 - cfg.alpha) * ce
    return loss, {"ce": float(ce.detach()), "kd": float(kd.detach())}


def _batch(data: LMData, idx, pad_id: int, cfg: LMTrainConfig, device: torch.device) -> tuple[
        TokenBatch, TeacherTargets | None]:
    part = data.subset(idx)
    batch = make_batch(part.prompts, part.completions, part.rationale_tokens, pad_id, cfg.max_length)
    targets = None
    if part.topk is not None:
        lengths = batch.target_mask.sum(1).tolist()
        targets = TeacherTargets.from_caches(part.topk, cfg.max_length, lengths).to(device)
    return batch.to(device), targets


@torch.no_grad()
def heldout_metrics(model: torch.nn.Module, data: LMData, pad_id: int, cfg: LMTrainConfig,
                    device: torch.device) -> dict[str, float]:
    """Token-weighted cross-entropy (and perplexity) on held-out teacher completions; top-k KL when cached."""
    if not len(data):
        return {}
    model.eval()
    ce_sum, kl_sum, tokens = 0.0, 0.0, 0
    for start in range(0, len(data), cfg.batch_size):
        batch, targets = _batch(data, range(start, min(start + cfg.batch_size, len(data))), pad_id, cfg, device)
        logits = selected_logits(model, batch.input_ids, batch.attention_mask, batch.target_mask)
        n = len(batch.targets)
        ce_sum += float(torch.nn.functional.cross_entropy(logits.float(), batch.targets, reduction="sum"))
        if targets is not None:
            kl_sum += n * float(cached_divergence(logits.float(), targets, "forward_kl"))
        tokens += n
    ce = ce_sum / max(tokens, 1)
    out = {"ce": round(ce, 4), "perplexity": round(math.exp(min(ce, 50.0)), 2), "tokens": tokens}
    if data.topk is not None:
        out["topk_forward_kl"] = round(kl_sum / max(tokens, 1), 4)
    return out


CHECKPOINT_PARTS = ("model", "optimizer", "rng")  # no best-so-far weights, no learned objective


def _data_digest(data: LMData) -> str:
    """SHA-256 of the training data: token ids, rationale lengths and the cached top-k."""
    digest = hashlib.sha256()
    for prompt, completion, rationale in zip(data.prompts, data.completions, data.rationale_tokens):
        digest.update(np.asarray(prompt, dtype=np.int64).tobytes() + b"|")
        digest.update(np.asarray(completion, dtype=np.int64).tobytes() + b"|")
        digest.update(str(rationale).encode() + b"\n")
    for cache in data.topk or []:  # every array the cache holds (counts, indices, log-probs, tail)
        for name, array in vars(cache).items():
            if isinstance(array, np.ndarray):
                digest.update(name.encode() + np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _run_key(model: torch.nn.Module, data: LMData, cfg: LMTrainConfig, seed: int,
             teacher: torch.nn.Module | None) -> str:
    """What makes an LM checkpoint belong to this run: settings, seed, data, initial weights, live teacher."""
    return checkpoint.run_key({
        "settings": cfg.model_dump(mode="json", exclude={"checkpoint_every", "checkpoint_dir", "device"}),
        "seed": seed, "data": _data_digest(data), "student": checkpoint.hash_state(model.state_dict()),
        "teacher": None if teacher is None else checkpoint.hash_state(teacher.state_dict())})


def train_lm(student: CausalLM, data: LMData, cfg: LMTrainConfig, seed: int, device: torch.device,
             teacher: torch.nn.Module | None = None, on_log: Callable[[int, dict], None] | None = None,
             checkpoint_dir: Path | None = None) -> list[dict]:
    """Train ``student`` in place; returns the per-step history (loss and its parts).

    With ``checkpoint_dir`` and ``cfg.checkpoint_every`` set, a checkpoint of this run found there is
    resumed, and a new one is written every ``checkpoint_every`` steps.
    """
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    if not len(data):
        raise LMDataError("no training completions: the completions file has no rows of split 'train'")
    checkpointing = bool(cfg.checkpoint_every and checkpoint_dir is not None)
    key = _run_key(student.model, data, cfg, seed, teacher) if checkpointing else ""
    model = student.model.to(device).train()
    teacher = teacher.to(device).eval() if teacher is not None else None
    steps = cfg.epochs * math.ceil(len(data) / cfg.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, max(1, steps // 10), steps)
    # The same order as one permutation per epoch cut into batches, but a stream that can say where it is.
    stream, history = Batches(len(data), cfg.batch_size, np.random.default_rng(seed)), []
    torch.manual_seed(seed)
    ckpt = checkpoint.load(checkpoint_dir, key, CHECKPOINT_PARTS) if checkpointing else None
    if ckpt is not None:
        checkpoint.restore(ckpt, model, None, optimizer, scheduler)
        stream.restore(ckpt["batches"])
        history = ckpt["history"]
        log.info("resuming the LM student (%s) from the checkpoint at step %d of %d", cfg.mode, len(history), steps)
    progress = tqdm(total=steps, initial=len(history), desc=f"LM student ({cfg.mode})", unit="step")
    while len(history) < steps:
        idx = next(stream)
        batch, targets = _batch(data, idx, student.tokenizer.pad_token_id, cfg, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss, parts = lm_objective(model, batch, cfg, targets, teacher)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        record = {"step": len(history) + 1, "epoch": stream.epoch, "loss": float(loss.detach()), **parts}
        history.append(record)
        if on_log:
            on_log(record["step"], record)
        progress.update()
        progress.set_postfix(loss=f"{record['loss']:.3f}")
        if checkpointing and record["step"] % cfg.checkpoint_every == 0 and record["step"] < steps:
            checkpoint.save(checkpoint_dir, key=key, model=model, optimizer=optimizer, scheduler=scheduler,
                            progress={"history": history, "batches": stream.state()})
    progress.close()
    model.eval()
    return history


def retokenize(frame: pd.DataFrame, template: PromptTemplate, tokenizer, finished_eos: bool = True) -> LMData:
    """The teacher's text as the student's tokens (sequence-level KD with another tokenizer)."""
    prompts, completions, rationale = [], [], []
    for row in frame.itertuples():
        prompts.append(tokenizer(render_prompt(tokenizer, template, row.request), add_special_tokens=False)["input_ids"])
        ids = tokenizer(row.completion, add_special_tokens=False)["input_ids"]
        if finished_eos and row.finished and tokenizer.eos_token_id is not None:
            ids = ids + [tokenizer.eos_token_id]
        completions.append(ids)
        rationale.append(len(tokenizer(row.rationale, add_special_tokens=False)["input_ids"]) if row.rationale else 0)
    return LMData(prompts, completions, rationale)


def teacher_data(frame: pd.DataFrame, caches: dict[str, TopK] | None) -> LMData:
    """The completions file's own token ids (the teacher's tokenizer), with the top-k caches when given."""
    if caches is not None:
        missing = sorted(set(frame["prompt_id"]) - set(caches))
        if missing:
            raise LMDataError(f"the top-k cache lacks {len(missing)} completions (e.g. prompt_id {missing[0]}); "
                              f"rerun the lm_topk stage (dvc repro lm_topk)")
    return LMData([list(map(int, v)) for v in frame["prompt_ids"]],
                  [list(map(int, v)) for v in frame["completion_ids"]],
                  [int(v) for v in frame["rationale_tokens"]],
                  None if caches is None else [caches[p] for p in frame["prompt_id"]])


def run(cfg: PipelineConfig, completions_path: Path, teacher_dir: Path, out_dir: Path | None,
        topk_path: Path | None = None, on_log: Callable[[int, dict], None] | None = None) -> LMTrainResult:
    """Train the LM student on the teacher's completions (the lm_train stage); ``out_dir`` None skips saving."""
    tcfg = cfg.lm.train
    fingerprint = teacher_identity(cfg, teacher_dir)
    frame, meta = read_completions(completions_path, fingerprint)
    teacher = load_causal_lm(teacher_dir)
    student, source = student_for(cfg.lm.student, teacher, cfg.seed, cfg.lm.api is not None)
    same_tokenizer = tokenizer_fingerprint(student.tokenizer) == tokenizer_fingerprint(teacher.tokenizer)
    if tcfg.mode != "sequence":
        check_same_tokenizer(student.tokenizer, teacher.tokenizer, f"lm.train.mode={tcfg.mode}", source,
                             str(teacher_dir))
    caches, topk_meta = None, {}
    if tcfg.mode == "token":
        if topk_path is None:
            raise LMDataError("lm.train.mode=token needs the top-k cache (--topk); run the lm_topk stage")
        caches, topk_meta = read_topk(topk_path, meta)
    if same_tokenizer:
        data = teacher_data(frame, caches)
    else:
        data = retokenize(frame, PromptTemplate.of(meta), student.tokenizer)
    train_idx, held_idx = np.flatnonzero(frame["split"] == "train"), np.flatnonzero(frame["split"] == "heldout")
    epochs = cfg.lm.select.train_epochs(tcfg.epochs, len(train_idx), meta.get("train_pool"))
    if epochs != tcfg.epochs:  # a selection of the pool (lm_select) trains as many steps as all of it
        log.info("lm.select.keep_steps: %d of %d training prompts, %d epochs", len(train_idx),
                 meta["train_pool"], epochs)
        tcfg = tcfg.model_copy(update={"epochs": epochs})
    device, pad_id = pick_device(tcfg.device), student.tokenizer.pad_token_id
    before = heldout_metrics(student.model.to(device), data.subset(held_idx), pad_id, tcfg, device)
    started = time.perf_counter()
    ckpt_dir = checkpoint.checkpoint_dir_for(out_dir, tcfg.checkpoint_dir) if out_dir is not None else None
    history = train_lm(student, data.subset(train_idx), tcfg, cfg.seed, device,
                       teacher.model if tcfg.mode == "online" else None, on_log, ckpt_dir)
    seconds = time.perf_counter() - started
    after = heldout_metrics(student.model, data.subset(held_idx), pad_id, tcfg, device)
    if out_dir is not None:
        save_lm(student, Path(out_dir), {
            "kind": "lm_student", "source": source, "mode": tcfg.mode, "loss": tcfg.loss,
            "teacher_fingerprint": fingerprint, "teacher_source": describe_source(str(teacher_dir), teacher_dir),
            "completions_hash": meta["completions_hash"], "topk_hash": topk_meta.get("topk_hash"),
            "generation": meta.get("settings"), "lm": cfg.lm.model_dump(), "seed": cfg.seed,
            "heldout": after})
        checkpoint.clear(ckpt_dir)
    first = float(np.mean([h["loss"] for h in history[:max(1, len(history) // 10)]]))
    last = float(np.mean([h["loss"] for h in history[-max(1, len(history) // 10):]]))
    return LMTrainResult(Path(out_dir) if out_dir else None, tcfg.mode, tcfg.loss, len(history), round(seconds, 2),
                         round(first, 4), round(last, 4), before, after, student.num_parameters)


def reference_data(prompts: pd.DataFrame, template: PromptTemplate, tokenizer) -> LMData:
    """The prompts with their reference answers (the gold labels, or the names a rewrite keeps) as completions,
    ended by EOS."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return LMData([tokenizer(render_prompt(tokenizer, template, r), add_special_tokens=False)["input_ids"]
                   for r in prompts["request"]],
                  [tokenizer(str(ref), add_special_tokens=False)["input_ids"] + eos for ref in prompts["reference"]],
                  [0] * len(prompts))


def run_baseline(cfg: PipelineConfig, prompts_path: Path, teacher_dir: Path, out_dir: Path | None,
                 on_log: Callable[[int, dict], None] | None = None) -> LMTrainResult:
    """The undistilled LM baseline (the lm_baseline stage): the student's architecture, seed and budget
    (``lm.student``, ``lm.train`` epochs / batch size / learning rate), trained with cross-entropy on the
    prompts' reference answers only; no teacher output is read. ``teacher_dir`` lends the tokenizer.
    """
    tcfg = cfg.lm.train.model_copy(update={"mode": "sequence", "alpha": 0.0})
    prompts, meta = read_prompts(prompts_path)
    teacher = load_causal_lm(teacher_dir)
    student, source = student_for(cfg.lm.student, teacher, cfg.seed, cfg.lm.api is not None)
    data = reference_data(prompts, PromptTemplate.of(meta), student.tokenizer)
    train_idx, held_idx = np.flatnonzero(prompts["split"] == "train"), np.flatnonzero(prompts["split"] == "heldout")
    device, pad_id = pick_device(tcfg.device), student.tokenizer.pad_token_id
    before = heldout_metrics(student.model.to(device), data.subset(held_idx), pad_id, tcfg, device)
    started = time.perf_counter()
    ckpt_dir = checkpoint.checkpoint_dir_for(out_dir, tcfg.checkpoint_dir) if out_dir is not None else None
    history = train_lm(student, data.subset(train_idx), tcfg, cfg.seed, device, None, on_log, ckpt_dir)
    seconds = time.perf_counter() - started
    after = heldout_metrics(student.model, data.subset(held_idx), pad_id, tcfg, device)
    if out_dir is not None:
        save_lm(student, Path(out_dir), {
            "kind": "lm_baseline", "source": source, "mode": "reference", "trained_on": "prompts' reference answers",
            "prompts_hash": meta.get("prompts_hash"), "lm": cfg.lm.model_dump(mode="json"), "seed": cfg.seed,
            "heldout_reference": after})
        checkpoint.clear(ckpt_dir)
    first = float(np.mean([h["loss"] for h in history[:max(1, len(history) // 10)]]))
    last = float(np.mean([h["loss"] for h in history[-max(1, len(history) // 10):]]))
    return LMTrainResult(Path(out_dir) if out_dir else None, "reference", "cross_entropy", len(history),
                         round(seconds, 2), round(first, 4), round(last, 4), before, after, student.num_parameters)
