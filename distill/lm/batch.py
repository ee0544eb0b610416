"""Token batches of prompt + completion, logits on completion positions only, and Parquet helpers.

A sequence is ``prompt_ids + completion_ids``, right-padded. The logit at position j predicts the
token at j + 1, so the positions that predict completion tokens are ``P - 1 .. P + C - 2``
(``target_mask``). Heads are applied only to those positions: an LM head over a 49k vocabulary at
every prompt position would cost far more memory than the rest of the step.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from distill.io import atomic_file

META_KEY = b"distill"


@dataclass
class TokenBatch:
    """A right-padded batch; ``target_mask`` marks positions that predict a completion token."""

    input_ids: torch.Tensor       # (B, L)
    attention_mask: torch.Tensor  # (B, L)
    target_mask: torch.Tensor     # (B, L) bool: position j predicts completion token input_ids[:, j + 1]
    rationale_mask: torch.Tensor  # (B, L) bool: the subset of target_mask that predicts rationale tokens
    targets: torch.Tensor         # (N,) the predicted tokens, in row-major order of target_mask

    def to(self, device: torch.device) -> "TokenBatch":
        return TokenBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.target_mask,
                                                   self.rationale_mask, self.targets)))


def make_batch(prompts: list[list[int]], completions: list[list[int]], rationale_tokens: list[int],
               pad_id: int, max_length: int, extra_padding: int = 0) -> TokenBatch:
    """Collate prompt / completion id lists; over-long prompts lose their left end to fit ``max_length``.

    ``extra_padding`` adds padding columns (tests use it to show padding changes nothing).
    """
    rows = []
    for prompt, completion in zip(prompts, completions):
        completion = list(completion)[:max_length - 1]
        prompt = list(prompt)[-(max_length - len(completion)):]
        rows.append((prompt, completion))
    width = max(len(p) + len(c) for p, c in rows) + extra_padding
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    target = torch.zeros((len(rows), width), dtype=torch.bool)
    rationale = torch.zeros((len(rows), width), dtype=torch.bool)
    for b, ((prompt, completion), n_rationale) in enumerate(zip(rows, rationale_tokens)):
        p, c = len(prompt), len(completion)
        if p == 0:
            raise ValueError(f"row {b}: empty prompt; the first completion token has no position to predict it")
        ids[b, :p + c] = torch.tensor(prompt + completion, dtype=torch.long)
        attention[b, :p + c] = 1
        target[b, p - 1:p + c - 1] = True
        rationale[b, p - 1:p - 1 + min(n_rationale, c)] = True
    shifted = torch.roll(ids, -1, dims=1)
    return TokenBatch(ids, attention, target, rationale, shifted[target])


def selected_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    select: torch.Tensor) -> torch.Tensor:
    """Logits (N, V) of a causal LM at the positions ``select`` (B, L) keeps, row-major order."""
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    logits = model.get_output_embeddings()(hidden[select])
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def write_parquet(path: Path, table: pa.Table, meta: dict, blobs: dict[str, bytes] | None = None, **options) -> None:
    """Write ``table`` with ``meta`` as JSON in its schema metadata, atomically, with page checksums.

    ``blobs`` are binary values stored once each in the file's footer (key-value metadata, not
    repeated in the embedded Arrow schema), read back with :func:`read_blobs`. ``options`` go to
    ``pyarrow.parquet.ParquetWriter`` (compression, dictionary encoding).
    """
    with atomic_file(Path(path), "wb") as handle:
        _write(handle, table, meta, blobs, options)


def parquet_size(table: pa.Table, meta: dict, blobs: dict[str, bytes] | None = None, **options) -> int:
    """The bytes :func:`write_parquet` would write for the same arguments, computed in memory."""
    buffer = io.BytesIO()
    _write(buffer, table, meta, blobs, options)
    return buffer.tell()


def _write(handle, table: pa.Table, meta: dict, blobs: dict[str, bytes] | None, options: dict) -> None:
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True).encode()})
    with pq.ParquetWriter(handle, table.schema, write_page_checksum=True, **options) as writer:
        writer.write_table(table)
        if blobs:
            writer.add_key_value_metadata({key.encode(): value for key, value in blobs.items()})


def read_parquet(path: Path, what: str, remedy: str, error: type[Exception]) -> tuple[pa.Table, dict]:
    """Read a table written by :func:`write_parquet`; a missing or damaged file raises ``error``."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} not found; {remedy}")
    try:
        table = pq.read_table(path, page_checksum_verification=True)
        meta = json.loads((table.schema.metadata or {})[META_KEY])
    except (pa.ArrowException, OSError, KeyError, ValueError) as exc:
        raise error(f"{path}: not a readable {what} ({exc}); {remedy}") from None
    return table, meta


def read_blobs(path: Path, keys: tuple[str, ...]) -> dict[str, bytes | None]:
    """The footer blobs :func:`write_parquet` stored under ``keys`` (None for a key it did not store)."""
    stored = pq.read_metadata(path).metadata or {}
    return {key: stored.get(key.encode()) for key in keys}


def hash_arrays(*columns) -> str:
    """SHA-256 over columns of strings or integer / float arrays (ragged lists allowed)."""
    digest = hashlib.sha256()
    for column in columns:
        for value in column:
            if isinstance(value, str):
                digest.update(value.encode() + b"\0")
            else:
                array = np.ascontiguousarray(value)
                digest.update(str(array.dtype).encode() + str(array.shape).encode() + array.tobytes())
        digest.update(b"\1")
    return digest.hexdigest()
