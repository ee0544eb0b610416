"""The LM student: some of the teacher's own blocks, a small fresh Llama-style causal LM on the teacher's
tokenizer, or any causal-LM folder."""

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


def spaced_layers(keep: int, total: int) -> list[int]:
    """``keep`` block indices spread evenly over ``total``, the first and the last included."""
    if keep == 1:
        return [0]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


def _block_list(model: torch.nn.Module) -> tuple[str, str, torch.nn.ModuleList]:
    """The name of the module holding the decoder blocks, its attribute, and the blocks (one per hidden layer)."""
    total = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == total and name:
            parent_name, _, attr = name.rpartition(".")
            return parent_name, attr, module
    raise ModelError(f"{type(model).__name__}: no list of {total} decoder blocks found to copy layers from; "
                     f"set lm.student.init: random")


def teacher_layers_student(teacher: CausalLM, num_layers: int) -> tuple[CausalLM, list[int]]:
    """A student made of ``num_layers`` of the teacher's blocks (:func:`spaced_layers`) with its embeddings,
    final norm and head: copies, the teacher is not changed. Returns the student and the blocks kept."""
    import copy

    total = teacher.model.config.num_hidden_layers
    if num_layers >= total:
        raise ModelError(f"lm.student.num_layers={num_layers} keeps all of the teacher's {total} blocks; a student "
                         f"of its layers needs fewer (or set lm.student.init: random)")
    parent_name, attr, blocks = _block_list(teacher.model)
    keep = spaced_layers(num_layers, total)
    holder = teacher.model.get_submodule(parent_name)
    setattr(holder, attr, torch.nn.ModuleList([blocks[i] for i in keep]))  # copy only the blocks kept
    try:
        model = copy.deepcopy(teacher.model)
    finally:
        setattr(holder, attr, blocks)
    for position, block in enumerate(getattr(model.get_submodule(parent_name), attr)):
        for module in block.modules():  # the KV cache is indexed by each attention's layer_idx
            if hasattr(module, "layer_idx"):
                module.layer_idx = position
    model.config.num_hidden_layers = len(keep)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in keep]
    return CausalLM(model=model, tokenizer=teacher.tokenizer), keep


def student_for(cfg: LMStudentConfig, teacher: CausalLM, seed: int, black_box: bool = False) -> tuple[CausalLM, str]:
    """The configured student and its source: ``lm.student.path``, else the teacher's blocks (``init``
    teacher_layers, the default with a local teacher), else a fresh model on the teacher's tokenizer
    (``random``, the default with a black-box teacher, whose ``teacher`` folder only lends the tokenizer)."""
    if cfg.path:
        return load_causal_lm(Path(cfg.path)), str(cfg.path)
    init = cfg.init or ("random" if black_box else "teacher_layers")
    if init == "teacher_layers":
        student, keep = teacher_layers_student(teacher, cfg.num_layers)
        return student, f"teacher_layers {keep}"
    return build_lm_student(cfg, teacher.tokenizer, seed), "built"


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
