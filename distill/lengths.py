"""Input length from the data: how many tokens the models read, chosen once and recorded.

The teacher stage measures the gold training and validation texts with the teacher's own tokenizer and
chooses the length (``choose_length``) unless ``teacher.max_length`` is set. The choice and
the share of texts it cuts are written into the teacher's card, so every later stage (labelling,
training, evaluation, audit, scoring the champion) reads the same length from the folder it
already depends on (``with_lengths``), and DVC reruns them when it changes.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from distill.config import PipelineConfig

FALLBACK_LENGTH = 64  # a teacher folder written before lengths were recorded
SAMPLE = 4000  # texts measured: enough for a stable 99th percentile, quick to tokenize


@dataclass
class LengthProfile:
    """Token lengths of the distillation texts and the chosen input length."""

    max_length: int
    chosen: bool            # chosen from the data (False: set in params)
    quantile: float
    measured: int           # texts measured
    p50: int
    p90: int
    p99: int
    truncated_share: float  # texts longer than max_length
    unknown_share: float = 0.0  # tokens the tokenizer does not know ([UNK])
    padded_batch: float = 0.0   # mean padded length of a shuffled teacher batch: what a text costs to train on

    def to_dict(self) -> dict:
        return asdict(self)


def token_lengths(tokenizer, texts: list[str], seed: int = 0) -> tuple[np.ndarray, float]:
    """Tokens per text (special tokens included) for up to ``SAMPLE`` texts, sampled with ``seed``, and the
    share of those tokens that are the tokenizer's unknown token."""
    if len(texts) > SAMPLE:
        pick = np.random.default_rng(seed).choice(len(texts), SAMPLE, replace=False)
        texts = [texts[i] for i in sorted(pick)]
    # A copy: a call changes a fast tokenizer's truncation state, which save_pretrained writes into
    # tokenizer.json, and so into the model's fingerprint.
    encoded = copy.deepcopy(tokenizer)(list(texts), truncation=False, add_special_tokens=True)["input_ids"]
    total = sum(len(ids) for ids in encoded)
    unk = getattr(tokenizer, "unk_token_id", None)
    unknown = sum(ids.count(unk) for ids in encoded) / total if unk is not None and total else 0.0
    return np.array([len(ids) for ids in encoded], dtype=np.int64), unknown


def padded_batch_length(lengths: np.ndarray, max_length: int, batch_size: int, seed: int = 0,
                        draws: int = 256) -> float:
    """Mean padded length of a shuffled training batch: dynamic padding pads each batch to its longest
    text (cut at ``max_length``). Estimated over ``draws`` seeded random batches of the measured lengths."""
    if not len(lengths):
        return float(max_length)
    cut = np.minimum(lengths, max_length)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(cut), size=(draws, min(batch_size, len(cut))))
    return float(cut[picks].max(axis=1).mean())


def choose_length(lengths: np.ndarray, quantile: float, cap: int, floor: int = 32) -> int:
    """The ``quantile`` of the token lengths, rounded up to a multiple of 8, within [floor, cap]."""
    if not len(lengths):
        return min(max(floor, 8), cap)
    wanted = int(np.ceil(np.quantile(lengths, quantile) / 8) * 8)
    return int(min(max(wanted, floor), cap))


def profile(tokenizer, texts: list[str], cfg: PipelineConfig, model_limit: int | None = None) -> LengthProfile:
    """Measure ``texts`` and settle the input length: ``teacher.max_length`` when set, else from the data."""
    t = cfg.teacher
    lengths, unknown = token_lengths(tokenizer, texts, cfg.seed)
    cap = min(t.max_length_cap, model_limit) if model_limit else t.max_length_cap
    length = t.max_length if t.max_length is not None else choose_length(lengths, t.length_quantile, cap)
    pct = (lambda q: int(np.quantile(lengths, q))) if len(lengths) else (lambda q: 0)
    return LengthProfile(length, t.max_length is None, t.length_quantile, len(lengths), pct(0.5), pct(0.9),
                         pct(0.99), float(np.mean(lengths > length)) if len(lengths) else 0.0, unknown,
                         padded_batch_length(lengths, length, t.batch_size, cfg.seed))


def with_lengths(cfg: PipelineConfig, teacher_card: dict) -> PipelineConfig:
    """``cfg`` with null ``teacher.max_length`` / ``train.max_length`` filled from the teacher's card."""
    recorded = (teacher_card.get("length") or {}).get("max_length", FALLBACK_LENGTH)
    teacher_length = cfg.teacher.max_length or recorded
    train_length = cfg.train.max_length or teacher_length
    if (teacher_length, train_length) == (cfg.teacher.max_length, cfg.train.max_length):
        return cfg
    return cfg.model_copy(update={
        "teacher": cfg.teacher.model_copy(update={"max_length": teacher_length}),
        "train": cfg.train.model_copy(update={"max_length": train_length})})


def with_teacher_lengths(cfg: PipelineConfig, teacher_dir: Path | None) -> PipelineConfig:
    """``with_lengths`` from a teacher folder (``cfg`` unchanged without one)."""
    from distill.models import MODEL_CARD, read_card  # here: model_card reads lengths and stays free of torch

    if teacher_dir is None or not (Path(teacher_dir) / MODEL_CARD).is_file():
        return with_lengths(cfg, {})
    return with_lengths(cfg, read_card(Path(teacher_dir)))


def model_length(card: dict, fallback: int = FALLBACK_LENGTH) -> int:
    """The input length a model folder was evaluated with: a teacher's chosen length, a student's training one."""
    return int((card.get("length") or {}).get("max_length") or (card.get("train") or {}).get("max_length")
               or fallback)
