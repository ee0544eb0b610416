"""The LM student: a small Llama-style causal LM on the teacher's tokenizer, or any causal-LM folder."""

from __future__ import annotations

from pathlib import Path

import torch

from distill.config import LMStudentConfig
from distill.io import atomic_dir, hash_files, write_json
from distill.lm.teacher import CausalLM, load_causal_lm, tokenizer_fingerprint
from distill.models import MODEL_CARD, ModelError, quiet_transformers


class TokenizerMismatchError(ModelError):
    """Token-level distillation needs student and teacher to share one vocabulary."""


def build_lm_student(cfg: LMStudentConfig, tokenizer, seed: int) -> CausalLM:
    """A fresh Llama-style causal LM with the shape of ``cfg`` on ``tokenizer``'s vocabulary (tied embeddings)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    quiet_transformers()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads, max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return CausalLM(model=model, tokenizer=tokenizer)


def student_for(cfg: LMStudentConfig, teacher_tokenizer, seed: int) -> tuple[CausalLM, str]:
    """The configured student (``lm.student.path``) or a fresh one on the teacher's tokenizer; and its source."""
    if cfg.path:
        return load_causal_lm(Path(cfg.path)), str(cfg.path)
    return build_lm_student(cfg, teacher_tokenizer, seed), "built"


def check_same_tokenizer(student_tokenizer, teacher_tokenizer, what: str = "token-level distillation",
                         student_source: str = "the student", teacher_source: str = "the teacher") -> None:
    """Refuse a student whose tokenizer is not the teacher's: token ids must mean the same tokens."""
    if tokenizer_fingerprint(student_tokenizer) == tokenizer_fingerprint(teacher_tokenizer):
        return
    raise TokenizerMismatchError(
        f"{what} needs the student to share the teacher's tokenizer, but {student_source} has a different "
        f"vocabulary ({len(student_tokenizer)} tokens) from {teacher_source} ({len(teacher_tokenizer)} tokens); "
        f"set lm.train.mode=sequence (trains on the teacher's text, retokenized), or use a student built on "
        f"the teacher's tokenizer (lm.student.path: null)")


def save_lm(lm: CausalLM, folder: Path, card: dict) -> str:
    """Save weights (safetensors), tokenizer and a card atomically; return the content fingerprint."""
    with atomic_dir(Path(folder)) as tmp:
        lm.model.save_pretrained(tmp, safe_serialization=True)
        lm.tokenizer.save_pretrained(tmp)
        fingerprint = hash_files(tmp, ("*.safetensors", "config.json", "tokenizer.json"))
        write_json(tmp / MODEL_CARD, {**card, "fingerprint": fingerprint, "parameters": lm.num_parameters})
    return fingerprint
