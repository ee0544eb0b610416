"""The teacher's most likely next tokens over each completion, in a compact ragged cache (format 3).

The writer, the reader and the checks of the format live in this one (long) file on purpose: the
byte layout below must be written and read by the same code.

Per completion position (the teacher reads prompt + completion once, teacher-forced) the cache keeps
a prefix of the teacher's next tokens, most likely first, and the leftover probability mass of every
other token. How long each prefix is comes from one byte budget for the whole file
(``lm.topk.bytes_per_token``): the cache keeps the (position, token) entries of highest probability
across all positions, down to one probability threshold (water-filling), the allocation that
maximises the mean kept mass for a number of entries. Every position keeps at least its top token
and at most ``lm.topk.k``; a confident position keeps one token, an uncertain one many. The budget
is met by the file itself, measured on disk; without a budget every position keeps k tokens.

Stored per position: the count (uint8 while k <= 255, else uint16) and the leftover mass (float16,
computed as a log-sum-exp over the other tokens, never as 1 minus the kept mass, which would cancel
to 0); per kept token: its id (uint16 when the vocabulary fits, else int32) and its log-probability,
uint8 on a log grid of ``lm.topk.logprob_levels`` levels (code c stands for ``c / (levels - 1) *
logprob_min``, ``logprob_min`` the smallest kept log-probability floored at log 1e-8, so the error is
at most half a step) or float16. Token ids are stored as their rank in the file's token order (the
tokens the cache keeps, most often kept first; one table per file, in the Parquet footer), and each
position's entries in that order, as gaps from the previous one: the tokens most positions keep get
small ranks, so the gaps are small and compress to about three quarters of the bytes of gaps between
raw ids (and half of the ids in probability order). Reading restores the ids and the most-likely-first
order. Each column is one byte string per completion (multi-byte values byte-planar), in
zstd-compressed Parquet.

Token-level losses read a position as its kept tokens plus one tail bucket
(:func:`distill.losses.topk_divergence`; a batch pads the ragged rows with empty buckets,
:func:`distill.lm.train.cached_divergence`). The file binds itself to its completions and format:
its metadata holds their content hash, the teacher fingerprint and the format version, and a student
is never trained on a cache made for other completions or written in another format.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from distill.config import LMTopKConfig, PipelineConfig
from distill.lm.batch import (hash_arrays, make_batch, parquet_size, read_blobs, read_parquet, selected_logits,
                              write_parquet)
from distill.lm.generate import read_completions
from distill.lm.prompts import LMDataError
from distill.lm.teacher import CausalLM, fingerprint_of, load_causal_lm
from distill.models import pick_device

FORMAT = 3  # 1: fixed k, float16 list columns; 2: ids in raw id order (both refused: rerun lm_topk)
RECACHE = "rerun the lm_topk stage (dvc repro lm_topk)"
LOGPROB_FLOOR = math.log(1e-8)  # the lowest log-probability the uint8 grid reaches
PARQUET_OPTIONS = {"compression": "zstd", "compression_level": 19, "use_dictionary": False}
COLUMNS = ("counts", "indices", "logprobs", "tail")
ORDER_KEY = "distill.token_order"  # footer blob: the kept token ids, most often kept first (zstd, byte-planar)
ORDER_CODEC = pa.Codec("zstd", compression_level=19)


@dataclass
class TopK:
    """One completion's cache: position i keeps ``counts[i]`` tokens, most likely first.

    ``indices`` and ``logprobs`` are flat, position after position (``counts.sum()`` entries);
    ``tail`` is each position's probability mass outside the tokens it keeps.
    """

    counts: np.ndarray    # (C,) >= 1
    indices: np.ndarray   # (E,)
    logprobs: np.ndarray  # (E,)
    tail: np.ndarray      # (C,)

    @property
    def positions(self) -> int:
        return len(self.counts)

    def offsets(self) -> np.ndarray:
        """(C + 1,) where each position's entries start, then the end."""
        return np.concatenate([[0], np.cumsum(self.counts, dtype=np.int64)])

    def head(self, n: int) -> "TopK":
        """The first ``n`` positions (a completion cut to the training length)."""
        n = min(n, self.positions)
        end = int(self.offsets()[n])
        return TopK(self.counts[:n], self.indices[:end], self.logprobs[:end], self.tail[:n])

    def truncate(self, counts: np.ndarray) -> "TopK":
        """Keep the first ``counts[i]`` tokens of position i; the tail takes the mass of the rest."""
        counts = np.asarray(counts, dtype=np.int64)
        if counts.shape != self.counts.shape or (counts < 1).any() or (counts > self.counts).any():
            raise ValueError("each position keeps between 1 and the tokens it has")
        position = np.repeat(np.arange(self.positions), self.counts)
        keep = np.arange(len(self.indices)) - self.offsets()[position] < counts[position]
        dropped = np.bincount(position[~keep], np.exp(self.logprobs[~keep].astype(np.float64)),
                              minlength=self.positions)
        return TopK(counts.astype(self.counts.dtype), self.indices[keep], self.logprobs[keep],
                    self.tail.astype(np.float64) + dropped)


@dataclass(frozen=True)
class Layout:
    """How a cache is stored: the dtypes of counts, ids and log-probabilities, and the uint8 grid."""

    count_dtype: str
    index_dtype: str
    logprob_dtype: str                # "uint8" (log grid) or "float16"
    logprob_min: float | None = None  # uint8: code c stands for c / (levels - 1) * logprob_min
    logprob_levels: int = 256         # uint8: codes 0 .. levels - 1

    @property
    def entry_bytes(self) -> int:
        return np.dtype(self.index_dtype).itemsize + np.dtype(self.logprob_dtype).itemsize

    @property
    def position_bytes(self) -> int:
        return np.dtype(self.count_dtype).itemsize + 2  # + the float16 tail

    @property
    def logprob_step(self) -> float | None:
        """The uint8 grid's step in nats; the largest rounding error is half of it."""
        return -self.logprob_min / (self.logprob_levels - 1) if self.logprob_dtype == "uint8" else None

    def encode_logprobs(self, logprobs: np.ndarray) -> np.ndarray:
        if self.logprob_dtype == "float16":
            return logprobs.astype(np.float16)
        top = self.logprob_levels - 1
        scaled = np.clip(logprobs.astype(np.float64), self.logprob_min, 0.0) / self.logprob_min * top
        return np.rint(scaled).astype(np.uint8)

    def decode_logprobs(self, stored: np.ndarray) -> np.ndarray:
        if self.logprob_dtype == "float16":
            return stored.astype(np.float32)
        return (stored.astype(np.float64) * (self.logprob_min / (self.logprob_levels - 1))).astype(np.float32)


def count_dtype(k: int) -> np.dtype:
    """uint8 counts while no position may keep more than 255 tokens, else uint16."""
    return np.dtype(np.uint8) if k <= np.iinfo(np.uint8).max else np.dtype(np.uint16)


def index_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every token id fits, else int32."""
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.int32)


def make_layout(caches: list[TopK], k: int, vocab_size: int, logprob_dtype: str = "uint8",
                levels: int = 256) -> Layout:
    """The layout of ``caches``: a grid of ``levels`` down to their smallest kept log-probability (>= log 1e-8)."""
    if logprob_dtype not in ("uint8", "float16") or not 2 <= levels <= 256:
        raise ValueError(f"logprob_dtype must be uint8 or float16 and levels in [2, 256], got {logprob_dtype!r}, "
                         f"{levels}")
    low = None
    if logprob_dtype == "uint8":
        finite = [c.logprobs[np.isfinite(c.logprobs)] for c in caches]
        smallest = min((float(f.min()) for f in finite if f.size), default=-1.0)
        low = min(max(smallest, LOGPROB_FLOOR), -1e-3)  # a grid of width 0 cannot be decoded
    return Layout(str(count_dtype(k)), str(index_dtype(vocab_size)), logprob_dtype, low, levels)


@dataclass
class TopKStats:
    k: int                               # the most tokens a position may keep
    positions: int
    bytes_per_token: float               # payload: counts, ids, log-probabilities and tails
    file_bytes_per_token: float | None   # the file on disk (compressed, with its metadata)
    kept_mass_mean: float
    kept_mass_p05: float
    kept_mass_p10: float
    k_mean: float
    k_max: int
    min_prob: float | None               # every kept token but a position's first is at least this likely
    index_dtype: str
    logprob_dtype: str
    logprob_step: float | None           # uint8 grid step (nats); half of it bounds the rounding error


@dataclass
class TopKResult:
    path: Path
    rows: int
    stats: TopKStats
    seconds: float


def topk_from_logits(logits: torch.Tensor, k: int, vocab_size: int | None = None) -> TopK:
    """The k most likely tokens of (C, V) logits as log-probabilities, with the leftover mass of the others."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    width = min(k, logprobs.shape[-1])
    values, indices = logprobs.topk(width, dim=-1)
    # The leftover mass as a logsumexp over the other tokens: 1 - sum(top-k) would cancel to 0 when small.
    if width < logprobs.shape[-1]:
        tail = logprobs.scatter(-1, indices, float("-inf")).logsumexp(-1).exp()
    else:
        tail = torch.zeros(values.shape[:-1])
    return TopK(np.full(len(values), width, count_dtype(k)),
                indices.cpu().numpy().ravel().astype(index_dtype(vocab_size or logits.shape[-1])),
                values.cpu().numpy().ravel().astype(np.float32), tail.cpu().numpy().astype(np.float64))


@torch.inference_mode()
def teacher_topk(lm: CausalLM, prompt_ids: list[list[int]], completion_ids: list[list[int]], k: int,
                 batch_size: int, device: torch.device, max_length: int = 100_000) -> list[TopK]:
    """The teacher's top-k of each completion, teacher-forced on prompt + completion."""
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


def water_fill(caches: list[TopK], entries: int) -> tuple[list[TopK], float | None]:
    """Keep ``entries`` (position, token) entries in all: every position's top token, then the most
    likely of the others across all positions, down to one threshold.

    For a number of entries this maximises the mean kept mass (the largest probabilities win), and
    since each position's tokens are sorted, what it keeps is a prefix. Returns the truncated caches
    and the threshold probability (None when every entry is kept).
    """
    counts = np.concatenate([c.counts for c in caches]).astype(np.int64)
    logprobs = np.concatenate([c.logprobs for c in caches]).astype(np.float32)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    if entries >= len(logprobs) or not len(counts):
        return caches, None
    optional = np.ones(len(logprobs), bool)
    optional[starts] = False
    extra = max(entries - len(counts), 0)
    keep = ~optional
    threshold = None
    if extra:
        values = logprobs[optional]
        threshold = float(np.partition(values, len(values) - extra)[len(values) - extra])
        keep = keep | (optional & (logprobs > threshold))
        ties = np.flatnonzero(optional & (logprobs == threshold))  # in position order: prefixes stay prefixes
        keep[ties[:extra - int((keep & optional).sum())]] = True
    kept = np.add.reduceat(keep.astype(np.int64), starts)
    cut = np.cumsum([0] + [c.positions for c in caches])
    out = [c.truncate(kept[a:b]) for c, a, b in zip(caches, cut[:-1], cut[1:])]
    return out, None if threshold is None else math.exp(threshold)


def _planar(values: np.ndarray, dtype: np.dtype) -> bytes:
    """Little-endian values byte-planar (every first byte, then every second byte ...): compresses better."""
    dtype = np.dtype(dtype).newbyteorder("<")
    raw = np.ascontiguousarray(values, dtype=dtype).view(np.uint8).reshape(-1, dtype.itemsize)
    return np.ascontiguousarray(raw.T).tobytes()


def _unplanar(data: bytes, dtype: np.dtype) -> np.ndarray:
    dtype = np.dtype(dtype).newbyteorder("<")
    if len(data) % dtype.itemsize:
        raise ValueError(f"{len(data)} bytes do not hold whole {dtype} values")
    raw = np.frombuffer(data, np.uint8).reshape(dtype.itemsize, -1)
    return np.ascontiguousarray(raw.T).view(dtype).ravel().astype(dtype.newbyteorder("="))


def token_order(caches: list[TopK]) -> np.ndarray:
    """The token ids the caches keep, most often kept first (ties by id): small ranks for common tokens."""
    ids = np.concatenate([c.indices.astype(np.int64) for c in caches]) if caches else np.zeros(0, np.int64)
    kept = np.bincount(ids, minlength=1)
    return np.argsort(-kept, kind="stable")[:int((kept > 0).sum())]


def _ranked_gaps(cache: TopK, rank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each position's entries in token-order rank: the rank gaps (each position's first rank whole) and the values."""
    position = np.repeat(np.arange(cache.positions), cache.counts)
    ranks = rank[cache.indices.astype(np.int64)]
    order = np.lexsort((ranks, position))
    ranks = ranks[order]
    gaps = np.diff(ranks, prepend=0)
    starts = cache.offsets()[:-1]
    gaps[starts] = ranks[starts]
    return gaps, cache.logprobs[order]


def _from_gaps(counts: np.ndarray, gaps: np.ndarray, logprobs: np.ndarray,
               order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of :func:`_ranked_gaps`: ids and values, each position's most likely first."""
    offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    position = np.repeat(np.arange(len(counts)), counts)
    total = np.cumsum(gaps.astype(np.int64))
    ranks = total - (total[offsets[:-1]] - gaps[offsets[:-1]].astype(np.int64))[position]
    if len(ranks) and (ranks.min() < 0 or ranks.max() >= len(order)):
        raise ValueError(f"token ranks outside the file's token order of {len(order)}")
    ids = order[ranks]
    by_probability = np.lexsort((ids, -logprobs, position))
    return ids[by_probability].astype(gaps.dtype), logprobs[by_probability]


def _encode(prompt_ids: list[str], caches: list[TopK], layout: Layout) -> tuple[pa.Table, dict, dict[str, bytes]]:
    """The Parquet table of ``caches`` in ``layout``, what the metadata records of it (the hash of its
    stored bytes, the token order's size) and the footer blob (the token order)."""
    for cache in caches:
        entries = int(cache.counts.sum(dtype=np.int64))
        if len(cache.tail) != cache.positions or len(cache.indices) != entries or len(cache.logprobs) != entries:
            raise ValueError(f"inconsistent cache: {cache.positions} positions keeping {entries} tokens, "
                             f"{len(cache.indices)} ids, {len(cache.logprobs)} values, {len(cache.tail)} tails")
        if cache.positions and (cache.counts.max() > np.iinfo(layout.count_dtype).max
                                or cache.indices.max(initial=0) > np.iinfo(layout.index_dtype).max):
            raise ValueError(f"counts or token ids do not fit {layout.count_dtype} / {layout.index_dtype}")
    order = token_order(caches)
    rank = np.zeros(int(order.max(initial=0)) + 1, np.int64)
    rank[order] = np.arange(len(order))
    ranked = [_ranked_gaps(c, rank) for c in caches]
    stored = {"counts": [_planar(c.counts, layout.count_dtype) for c in caches],
              "indices": [_planar(gaps, layout.index_dtype) for gaps, _ in ranked],
              "logprobs": [_planar(layout.encode_logprobs(values), layout.logprob_dtype) for _, values in ranked],
              "tail": [_planar(c.tail.astype(np.float16), np.float16) for c in caches]}
    order_bytes = _planar(order, layout.index_dtype)
    digest = hash_arrays(prompt_ids, *([np.frombuffer(b, np.uint8) for b in column] for column in stored.values()),
                         [np.frombuffer(order_bytes, np.uint8)])
    table = pa.table({"prompt_id": pa.array(prompt_ids, pa.string()),
                      "positions": pa.array([c.positions for c in caches], pa.int32()),
                      **{name: pa.array(column, pa.binary()) for name, column in stored.items()}})
    recorded = {"topk_hash": digest, "token_order_bytes": len(order_bytes)}
    return table, recorded, {ORDER_KEY: ORDER_CODEC.compress(order_bytes, asbytes=True)}


def _file_meta(meta: dict, layout: Layout, recorded: dict) -> dict:
    return {**meta, "format": FORMAT, "layout": asdict(layout), **recorded}


def encoded_size(prompt_ids: list[str], caches: list[TopK], layout: Layout, meta: dict) -> int:
    """Bytes the file :func:`write_topk` writes would take, without writing it."""
    table, recorded, blobs = _encode(prompt_ids, caches, layout)
    return parquet_size(table, _file_meta(meta, layout, recorded), blobs, **PARQUET_OPTIONS)


def write_topk(path: Path, prompt_ids: list[str], caches: list[TopK], meta: dict, layout: Layout) -> None:
    """Write the caches (one row per completion, one byte string per column), atomically."""
    table, recorded, blobs = _encode(prompt_ids, caches, layout)
    write_parquet(path, table, _file_meta(meta, layout, recorded), blobs, **PARQUET_OPTIONS)


def read_topk(path: Path, completions_meta: dict | None = None) -> tuple[dict[str, TopK], dict]:
    """The caches by prompt id (log-probabilities decoded) and the metadata.

    Refuses a cache of another format, one made for other completions and a damaged one.
    """
    table, meta = read_parquet(path, "top-k cache", RECACHE, LMDataError)
    if meta.get("unavailable"):
        raise LMDataError(f"{path}: no top-k cache: {meta['unavailable']}")
    if meta.get("format") != FORMAT:
        raise LMDataError(f"{path}: top-k cache format {meta.get('format', 1)}, written by an older version; this "
                          f"version reads format {FORMAT} (per-position k, quantised log-probabilities, ranked token "
                          f"ids); {RECACHE}")
    if completions_meta and meta.get("completions_hash") != completions_meta.get("completions_hash"):
        raise LMDataError(f"{path}: cached for other teacher completions (completions hash "
                          f"{str(meta.get('completions_hash'))[:12]}, now "
                          f"{completions_meta['completions_hash'][:12]}); {RECACHE}")
    try:
        layout = Layout(**meta["layout"])
        columns = {name: table.column(name).to_pylist() for name in ("prompt_id", "positions", *COLUMNS)}
        packed = read_blobs(path, (ORDER_KEY,))[ORDER_KEY]
        if packed is None:
            raise KeyError(ORDER_KEY)
        order_bytes = ORDER_CODEC.decompress(packed, int(meta["token_order_bytes"]), asbytes=True)
        order = _unplanar(order_bytes, layout.index_dtype).astype(np.int64)
    except (KeyError, TypeError) as exc:
        raise LMDataError(f"{path}: not a top-k cache of format {FORMAT} (missing {exc}); {RECACHE}") from None
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise LMDataError(f"{path}: the token order is damaged ({exc}); {RECACHE}") from None
    digest = hash_arrays(columns["prompt_id"], *([np.frombuffer(b, np.uint8) for b in columns[name]]
                                                 for name in COLUMNS), [np.frombuffer(order_bytes, np.uint8)])
    if digest != meta.get("topk_hash"):
        raise LMDataError(f"{path}: content does not match its recorded hash; {RECACHE}")
    caches = {}
    for i, pid in enumerate(columns["prompt_id"]):
        try:
            counts, gaps, values, tail = (_unplanar(columns[name][i], dtype) for name, dtype in zip(COLUMNS, (
                layout.count_dtype, layout.index_dtype, layout.logprob_dtype, np.float16)))
        except ValueError as exc:
            raise LMDataError(f"{path}: row {pid} is damaged ({exc}); {RECACHE}") from None
        entries = int(counts.sum(dtype=np.int64))
        if len(counts) != columns["positions"][i] or len(tail) != len(counts) or len(gaps) != entries \
                or len(values) != entries or (counts < 1).any():
            raise LMDataError(f"{path}: row {pid} has inconsistent counts and entries; {RECACHE}")
        try:
            indices, logprobs = _from_gaps(counts, gaps, layout.decode_logprobs(values), order)
        except ValueError as exc:
            raise LMDataError(f"{path}: row {pid} is damaged ({exc}); {RECACHE}") from None
        caches[pid] = TopK(counts, indices, logprobs, tail.astype(np.float32))
    return caches, meta


def cache_stats(caches: list[TopK], layout: Layout, k: int, file_bytes: int | None = None,
                min_prob: float | None = None) -> TopKStats:
    """Bytes per cached token, kept mass (mean, 5th and 10th percentiles) and tokens per position."""
    positions = sum(c.positions for c in caches)
    if not positions:
        raise LMDataError("the top-k cache holds no positions (every completion is empty)")
    counts = np.concatenate([c.counts for c in caches]).astype(np.int64)
    kept = 1.0 - np.concatenate([c.tail for c in caches]).astype(np.float64)
    payload = layout.position_bytes + layout.entry_bytes * counts.mean()
    return TopKStats(k, positions, round(float(payload), 1),
                     round(file_bytes / positions, 1) if file_bytes else None,
                     round(float(kept.mean()), 4), round(float(np.quantile(kept, 0.05)), 4),
                     round(float(np.quantile(kept, 0.10)), 4), round(float(counts.mean()), 1), int(counts.max()),
                     min_prob, layout.index_dtype, layout.logprob_dtype,
                     None if layout.logprob_step is None else round(layout.logprob_step, 5))


def fit_budget(prompt_ids: list[str], deep: list[TopK], cfg: LMTopKConfig, vocab_size: int,
               meta: dict) -> tuple[list[TopK], Layout, float | None]:
    """The water-filled caches with the most entries whose file fits ``cfg.bytes_per_token`` on disk.

    Every position keeps at least its top token, even past the budget. ``meta`` is what
    :func:`write_topk` will be given besides ``min_prob`` (the threshold, added here), so the file it
    writes has exactly the size measured. Returns the caches, their layout and the threshold.
    """
    def fill(entries: int) -> tuple[list[TopK], Layout, float | None, int]:
        caches, threshold = water_fill(deep, entries)
        layout = make_layout(caches, cfg.k, vocab_size, cfg.logprob_dtype, cfg.logprob_levels)
        return caches, layout, threshold, encoded_size(prompt_ids, caches, layout, {**meta, "min_prob": threshold})

    total, positions = sum(len(c.indices) for c in deep), sum(c.positions for c in deep)
    if cfg.bytes_per_token is None or not positions:
        return deep, make_layout(deep, cfg.k, vocab_size, cfg.logprob_dtype, cfg.logprob_levels), None
    budget = cfg.bytes_per_token * positions
    high = fill(total)
    if high[3] <= budget:
        return high[:3]
    low, low_n, high_n = fill(positions), positions, total  # ``low`` fits, or nothing smaller is allowed
    # The size is close to linear in the entries: interpolate, but at least 1/8 of the bracket away
    # from either end, so it shrinks fast when the guess is good and by 1/8 when it is not.
    while high_n - low_n > max(1, low_n // 1000):
        guess = low_n + (budget - low[3]) / max(high[3] - low[3], 1) * (high_n - low_n)
        margin = max(1, (high_n - low_n) // 8)
        middle = int(min(max(guess, low_n + margin), high_n - margin))
        trial = fill(middle)
        if trial[3] <= budget:
            low, low_n = trial, middle
        else:
            high, high_n = trial, middle
    return low[:3]


def run(cfg: PipelineConfig, completions_path: Path, teacher_dir: Path, out_path: Path) -> TopKResult:
    """Cache the teacher's top tokens over every completion, within the byte budget (the lm_topk stage).

    A black-box teacher (``lm.api``) has no logits: the cache is written empty, marked unavailable, so
    the DVC graph stays one shape; reading it for token-level training is refused with the reason.
    """
    if cfg.lm.api is not None:
        return write_unavailable(cfg, completions_path, out_path)
    tcfg = cfg.lm.topk
    fingerprint = fingerprint_of(teacher_dir)
    frame, completions_meta = read_completions(completions_path, fingerprint)
    lm = load_causal_lm(teacher_dir)
    started = time.perf_counter()
    deep = teacher_topk(lm, [list(v) for v in frame["prompt_ids"]], [list(v) for v in frame["completion_ids"]],
                        tcfg.k, tcfg.batch_size, pick_device(cfg.lm.train.device))
    vocab = int(lm.model.get_output_embeddings().weight.shape[0])
    prompt_ids = frame["prompt_id"].tolist()
    meta = {"k": tcfg.k, "bytes_per_token": tcfg.bytes_per_token, "vocab_size": vocab,
            "teacher_fingerprint": fingerprint, "completions_hash": completions_meta["completions_hash"]}
    caches, layout, threshold = fit_budget(prompt_ids, deep, tcfg, vocab, meta)
    write_topk(out_path, prompt_ids, caches, {**meta, "min_prob": threshold}, layout)
    seconds = time.perf_counter() - started
    stats = cache_stats(caches, layout, tcfg.k, Path(out_path).stat().st_size, threshold)
    return TopKResult(Path(out_path), len(frame), stats, round(seconds, 2))


def write_unavailable(cfg: PipelineConfig, completions_path: Path, out_path: Path) -> TopKResult:
    """An empty cache that says why there is none (a black-box teacher returns text, not logits)."""
    from distill.lm.generate import api_fingerprint

    frame, completions_meta = read_completions(completions_path, api_fingerprint(cfg.lm.api))
    reason = (f"the teacher is the black-box endpoint lm.api ({cfg.lm.api.model}), which returns text only; "
              f"token-level KD needs a local teacher (lm.api: null)")
    meta = {"k": cfg.lm.topk.k, "unavailable": reason, "teacher_fingerprint": api_fingerprint(cfg.lm.api),
            "completions_hash": completions_meta["completions_hash"]}
    layout = make_layout([], cfg.lm.topk.k, 2, cfg.lm.topk.logprob_dtype)
    write_topk(out_path, [], [], meta, layout)
    empty = TopKStats(cfg.lm.topk.k, 0, 0.0, None, 0.0, 0.0, 0.0, 0.0, 0, None, "none", layout.logprob_dtype, None)
    return TopKResult(Path(out_path), 0, empty, 0.0)


def stats_frame(caches: dict[str, TopK]) -> pd.DataFrame:
    """Kept mass per completion (mean over its positions), for reports."""
    return pd.DataFrame({"prompt_id": list(caches),
                         "kept_mass": [float(1 - c.tail.astype(np.float64).mean()) if c.positions else np.nan
                                       for c in caches.values()]})


def kept_mass_by_k(logits: torch.Tensor, ks: list[int]) -> dict[int, float]:
    """Mean probability mass the top k tokens keep, per k, over (N, V) logits: the curve that chooses k."""
    cumulative = torch.softmax(logits.float(), dim=-1).sort(dim=-1, descending=True).values.cumsum(-1)
    return {k: round(float(cumulative[:, min(k, cumulative.shape[-1]) - 1].mean()), 4) for k in ks}


def kept_mass_curve(caches: list[TopK], ks: list[int]) -> dict[int, float]:
    """Mean kept mass at each fixed k, read from a deeper cache (a position keeps at most what it has)."""
    caches = [c for c in caches if c.positions]
    return {k: round(float(np.mean(np.concatenate([1 - c.truncate(np.minimum(c.counts, k)).tail for c in caches]))), 4)
            for k in ks}
