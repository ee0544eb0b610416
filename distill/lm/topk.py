"""The teacher's top-k next-token log-probabilities over each completion, in a compact cache.

Per completion position (the teacher reads prompt + completion once, teacher-forced) the cache keeps
the k most likely next tokens: their ids (uint16 when the vocabulary fits in 65536, else int32),
their log-probabilities as float16, and the leftover probability mass of every other token as
float16. That is ``k * 4 + 2`` bytes per token at uint16 ids (130 B at k = 32). Token-level losses
turn each position into k + 1 buckets, the top-k tokens and one tail bucket
(:func:`distill.losses.topk_divergence`). :func:`cache_stats` reports bytes per token and the
average kept mass, the two figures that choose k.

The file binds itself to its completions: its metadata holds their content hash and teacher
fingerprint, and a student is never trained on a cache that belongs to other completions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from distill.config import PipelineConfig
from distill.lm.batch import hash_arrays, make_batch, read_parquet, selected_logits, write_parquet
from distill.lm.generate import read_completions
from distill.lm.prompts import LMDataError
from distill.lm.teacher import CausalLM, fingerprint_of, load_causal_lm
from distill.models import pick_device

RECACHE = "rerun the lm_topk stage (dvc repro lm_topk)"


@dataclass
class TopK:
    """One completion's cache: ``indices`` (C, k), ``logprobs`` (C, k) float16, ``tail`` (C,) float16."""

    indices: np.ndarray
    logprobs: np.ndarray
    tail: np.ndarray


@dataclass
class TopKStats:
    k: int
    positions: int
    bytes_per_token: float       # payload: ids + float16 log-probs + float16 tail
    file_bytes_per_token: float | None  # the Parquet file (compressed, with its metadata)
    kept_mass_mean: float
    kept_mass_p05: float
    index_dtype: str


@dataclass
class TopKResult:
    path: Path
    rows: int
    stats: TopKStats
    seconds: float


def index_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every token id fits, else int32."""
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.int32)


def topk_from_logits(logits: torch.Tensor, k: int, vocab_size: int | None = None) -> TopK:
    """Top-k of (C, V) logits as log-probabilities, with the leftover mass of the other tokens."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    values, indices = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
    # The leftover mass as a logsumexp over the other tokens: 1 - sum(top-k) would cancel to 0 when small.
    rest = logprobs.scatter(-1, indices, float("-inf")).logsumexp(-1) if values.shape[-1] < logprobs.shape[-1] \
        else torch.full(values.shape[:-1], float("-inf"))
    tail = rest.exp()
    dtype = index_dtype(vocab_size or logits.shape[-1])
    return TopK(indices.cpu().numpy().astype(dtype), values.cpu().numpy().astype(np.float16),
                tail.cpu().numpy().astype(np.float16))


@torch.inference_mode()
def teacher_topk(lm: CausalLM, prompt_ids: list[list[int]], completion_ids: list[list[int]], k: int,
                 batch_size: int, device: torch.device, max_length: int = 100_000) -> list[TopK]:
    """The teacher's top-k cache of each completion, teacher-forced on prompt + completion."""
    model = lm.model.to(device).eval()
    vocab = model.get_output_embeddings().weight.shape[0]
    out: list[TopK] = []
    for start in range(0, len(prompt_ids), batch_size):
        prompts, completions = prompt_ids[start:start + batch_size], completion_ids[start:start + batch_size]
        batch = make_batch(prompts, completions, [0] * len(prompts), lm.tokenizer.pad_token_id, max_length).to(device)
        logits = selected_logits(model, batch.input_ids, batch.attention_mask, batch.target_mask)
        cut = np.cumsum([0] + [len(c) for c in completions])
        out += [topk_from_logits(logits[a:b], k, vocab) for a, b in zip(cut[:-1], cut[1:])]
    return out


def cache_stats(caches: list[TopK], file_bytes: int | None = None) -> TopKStats:
    """Bytes per cached token and the kept mass (mean and 5th percentile) of a top-k cache."""
    positions = sum(len(c.tail) for c in caches)
    if not positions:
        raise LMDataError("the top-k cache holds no positions (every completion is empty)")
    first = caches[next(i for i, c in enumerate(caches) if len(c.tail))]
    k = first.indices.shape[1]
    payload = k * (first.indices.itemsize + first.logprobs.itemsize) + first.tail.itemsize
    kept = 1.0 - np.concatenate([c.tail.astype(np.float64) for c in caches])
    return TopKStats(k, positions, float(payload), round(file_bytes / positions, 1) if file_bytes else None,
                     round(float(kept.mean()), 4), round(float(np.quantile(kept, 0.05)), 4),
                     str(first.indices.dtype))


def write_topk(path: Path, prompt_ids: list[str], caches: list[TopK], meta: dict) -> None:
    """Write the caches as flat lists per completion (positions x k, row-major), atomically."""
    index_type = pa.uint16() if caches and caches[0].indices.dtype == np.uint16 else pa.int32()
    table = pa.table({
        "prompt_id": pa.array(prompt_ids, pa.string()),
        "positions": pa.array([len(c.tail) for c in caches], pa.int32()),
        "indices": pa.array([c.indices.ravel() for c in caches], pa.list_(index_type)),
        "logprobs": pa.array([c.logprobs.ravel() for c in caches], pa.list_(pa.float16())),
        "tail": pa.array([c.tail for c in caches], pa.list_(pa.float16())),
    })
    digest = hash_arrays(prompt_ids, [c.indices for c in caches], [c.logprobs for c in caches],
                         [c.tail for c in caches])
    write_parquet(path, table, {**meta, "topk_hash": digest})


def read_topk(path: Path, completions_meta: dict | None = None) -> tuple[dict[str, TopK], dict]:
    """The caches by prompt id and the metadata; refuses a cache made for other completions."""
    table, meta = read_parquet(path, "top-k cache", RECACHE, LMDataError)
    if meta.get("unavailable"):
        raise LMDataError(f"{path}: no top-k cache: {meta['unavailable']}")
    if completions_meta and meta.get("completions_hash") != completions_meta.get("completions_hash"):
        raise LMDataError(f"{path}: cached for other teacher completions (completions hash "
                          f"{str(meta.get('completions_hash'))[:12]}, now "
                          f"{completions_meta['completions_hash'][:12]}); "
                          f"{RECACHE}")
    k = int(meta["k"])
    caches = {}
    columns = {c: table.column(c).to_pylist() if c in ("prompt_id", "positions") else table.column(c)
               for c in table.column_names}
    for i, (pid, n) in enumerate(zip(columns["prompt_id"], columns["positions"])):
        def values(name: str, row: int = i) -> np.ndarray:
            return columns[name][row].values.to_numpy(zero_copy_only=False)
        caches[pid] = TopK(values("indices").reshape(n, k), values("logprobs").reshape(n, k), values("tail"))
    digest = hash_arrays(columns["prompt_id"], [c.indices for c in caches.values()],
                         [c.logprobs for c in caches.values()], [c.tail for c in caches.values()])
    if digest != meta.get("topk_hash"):
        raise LMDataError(f"{path}: content does not match its recorded hash; {RECACHE}")
    return caches, meta


def run(cfg: PipelineConfig, completions_path: Path, teacher_dir: Path, out_path: Path) -> TopKResult:
    """Cache the teacher's top-k over every completion (the lm_topk stage).

    A black-box teacher (``lm.api``) has no logits: the cache is written empty, marked unavailable, so
    the DVC graph stays one shape; reading it for token-level training is refused with the reason.
    """
    if cfg.lm.api is not None:
        return write_unavailable(cfg, completions_path, out_path)
    fingerprint = fingerprint_of(teacher_dir)
    frame, completions_meta = read_completions(completions_path, fingerprint)
    lm = load_causal_lm(teacher_dir)
    started = time.perf_counter()
    caches = teacher_topk(lm, [list(v) for v in frame["prompt_ids"]], [list(v) for v in frame["completion_ids"]],
                          cfg.lm.topk.k, cfg.lm.topk.batch_size, pick_device(cfg.lm.train.device))
    seconds = time.perf_counter() - started
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    meta = {"k": cfg.lm.topk.k, "vocab_size": int(vocab), "teacher_fingerprint": fingerprint,
            "completions_hash": completions_meta["completions_hash"]}
    write_topk(out_path, frame["prompt_id"].tolist(), caches, meta)
    stats = cache_stats(caches, Path(out_path).stat().st_size)
    return TopKResult(Path(out_path), len(frame), stats, round(seconds, 2))


def write_unavailable(cfg: PipelineConfig, completions_path: Path, out_path: Path) -> TopKResult:
    """An empty cache that says why there is none (a black-box teacher returns text, not logits)."""
    from distill.lm.generate import api_fingerprint

    frame, completions_meta = read_completions(completions_path, api_fingerprint(cfg.lm.api))
    reason = (f"the teacher is the black-box endpoint lm.api ({cfg.lm.api.model}), which returns text only; "
              f"token-level KD needs a local teacher (lm.api: null)")
    meta = {"k": cfg.lm.topk.k, "unavailable": reason, "teacher_fingerprint": api_fingerprint(cfg.lm.api),
            "completions_hash": completions_meta["completions_hash"]}
    write_topk(out_path, [], [], meta)
    return TopKResult(Path(out_path), 0, TopKStats(cfg.lm.topk.k, 0, 0.0, None, 0.0, 0.0, "none"), 0.0)


def stats_frame(caches: dict[str, TopK]) -> pd.DataFrame:
    """Kept mass per completion (mean over its positions), for reports."""
    return pd.DataFrame({"prompt_id": list(caches),
                         "kept_mass": [float(1 - c.tail.astype(np.float64).mean()) if len(c.tail) else np.nan
                                       for c in caches.values()]})


def kept_mass_by_k(logits: torch.Tensor, ks: list[int]) -> dict[int, float]:
    """Mean probability mass the top k tokens keep, per k, over (N, V) logits: the curve that chooses k."""
    cumulative = torch.softmax(logits.float(), dim=-1).sort(dim=-1, descending=True).values.cumsum(-1)
    return {k: round(float(cumulative[:, min(k, cumulative.shape[-1]) - 1].mean()), 4) for k in ks}


# Variable k under a byte budget. A fixed k spends the same bytes on a confident position (one token
# holds 0.99 of the mass) as on an uncertain one. Keeping instead the largest probabilities across
# all positions, down to one global threshold, maximises the mean kept mass for a total byte budget:
# each position keeps a prefix of its sorted top tokens, so the cache stays a top-k per position,
# with k varying. Each position then pays a 2-byte count besides its tail; each kept token 4 bytes.
VARIABLE_K_POSITION_BYTES = 4  # uint16 count + float16 leftover mass


@dataclass
class VariableKStats:
    budget_bytes_per_token: float
    bytes_per_token: float
    kept_mass_mean: float
    kept_mass_p05: float
    k_mean: float
    k_max: int
    k_cap: int             # the depth of the deep cache it was chosen from: no position keeps more
    threshold: float       # the smallest kept probability


def kept_mass_curve(caches: list[TopK], ks: list[int]) -> dict[int, float]:
    """Mean kept mass at each fixed k, read from a deeper top-k cache (k up to its depth)."""
    probs = np.concatenate([np.exp(c.logprobs.astype(np.float64)) for c in caches if len(c.tail)])
    cumulative = probs.cumsum(-1)
    return {k: round(float(cumulative[:, min(k, probs.shape[1]) - 1].mean()), 4) for k in ks}


def variable_k_at_budget(caches: list[TopK], bytes_per_token: float, index_bytes: int = 2) -> VariableKStats:
    """The kept mass of a global-threshold variable-k cache whose payload fits ``bytes_per_token`` on average.

    Chosen from ``caches``, a fixed-k cache of larger depth (its k caps every position's k).
    """
    probs = np.concatenate([np.exp(c.logprobs.astype(np.float64)) for c in caches if len(c.tail)])  # (N, K)
    positions, depth = probs.shape
    entry = index_bytes + 2  # id + float16 log-probability
    keep = int(max(0.0, bytes_per_token - VARIABLE_K_POSITION_BYTES) * positions // entry)
    keep = min(max(keep, positions), probs.size)  # at least the top-1 of every position
    # Rows are sorted, so the globally largest ``keep`` entries are a prefix of every row; a stable
    # sort breaks ties by position, which keeps that true for equal probabilities too.
    order = np.argsort(-probs.ravel(), kind="stable")[:keep]
    chosen = np.zeros(probs.size, bool)
    chosen[order] = True
    chosen = chosen.reshape(probs.shape)
    chosen[:, 0] = True
    threshold = float(probs[chosen].min())
    k = chosen.sum(1)
    kept = (probs * chosen).sum(1)
    used = VARIABLE_K_POSITION_BYTES + entry * k.mean()
    return VariableKStats(float(bytes_per_token), round(float(used), 1), round(float(kept.mean()), 4),
                          round(float(np.quantile(kept, 0.05)), 4), round(float(k.mean()), 1), int(k.max()),
                          depth, threshold)
