"""Building a student from its teacher: the shape, the layers and embeddings it starts from, a smaller
vocabulary, or an earlier student to continue from."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from distill.config import StudentConfig
from distill.cut import cut_of, set_cut
from distill.models import Classifier, ModelError, quiet_transformers, load_classifier


def _encoder_parts(model: nn.Module, folder: str) -> tuple[nn.Module, nn.ModuleList]:
    """The embeddings module and the list of transformer layers of a BERT-style encoder."""
    base = model.base_model
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not hasattr(base, "embeddings") or layers is None:
        raise ModelError(
            f"{folder}: {type(base).__name__} is not a BERT-style encoder (embeddings + encoder.layer); "
            "copying teacher layers needs one: set student.init: random")
    return base.embeddings, layers


def evenly_spaced_layers(n_student: int, n_teacher: int) -> list[int]:
    """Teacher layers (0-based) for a student of ``n_student`` layers: every other one at half depth."""
    return [i * n_teacher // n_student for i in range(n_student)]


def warm_start_student(folder: Path, teacher: Classifier, cfg: StudentConfig) -> Classifier:
    """An earlier student to continue training from (``student.warm_start``): checked to have the
    configured shape and the teacher's labels, and sharing the teacher's tokenizer object when their
    vocabularies are the same (token-level feature losses need that)."""
    clf = load_classifier(folder)
    if clf.labels != list(teacher.labels):
        raise ModelError(
            f"student.warm_start {folder}: it predicts {len(clf.labels)} labels ({clf.labels[:4]}...) but the "
            f"teacher {len(teacher.labels)} ({list(teacher.labels)[:4]}...); a warm start needs the same labels in "
            "the same order. Set student.warm_start: null (monitor.warm_start: false) to distil a fresh student")
    if not cfg.path:
        teacher_shape = shape_of(teacher.model.config)
        wanted = {key: getattr(cfg, key) or teacher_shape[key] for key in teacher_shape}
        found = shape_of(clf.model.config)
        if found != wanted:
            differ = {k: (found[k], wanted[k]) for k in wanted if found[k] != wanted[k]}
            raise ModelError(f"student.warm_start {folder}: its shape differs from the configured student's "
                             f"(found, configured): {differ}; set student.warm_start: null to distil the new "
                             "shape from scratch")
    if not cfg.vocab_size and clf.tokenizer.get_vocab() == teacher.tokenizer.get_vocab():
        clf = Classifier(clf.model, teacher.tokenizer, clf.labels)
    return clf


def shape_of(config) -> dict[str, int]:
    """The shape fields a student config can set."""
    return {"num_layers": config.num_hidden_layers, "hidden_size": config.hidden_size,
            "num_heads": config.num_attention_heads, "intermediate_size": config.intermediate_size}


def reduced_tokenizer(tokenizer, texts: list[str], vocab_size: int):
    """A WordPiece vocabulary of ``vocab_size`` trained on ``texts`` with the teacher's normaliser and specials."""
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError("student.vocab_size needs a fast (Rust) teacher tokenizer to train a smaller vocabulary")
    if not texts:
        raise ModelError("student.vocab_size: no texts to train the smaller vocabulary on")
    return tokenizer.train_new_from_iterator(iter(texts), vocab_size=vocab_size)


def build_student(teacher: Classifier, cfg: StudentConfig, seed: int, texts: list[str] | None = None) -> Classifier:
    """The student: a model folder with a fresh head, or a smaller copy of the teacher's architecture.

    From the teacher's config, shape values left None keep the teacher's. The
    word embeddings start from the teacher's (PCA-projected when narrower). With
    ``init`` teacher (or auto and a matching width) the student copies the
    teacher's embeddings and an evenly spaced subset of its layers, as
    DistilBERT did. ``vocab_size`` trains a smaller vocabulary on ``texts``.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    quiet_transformers()
    torch.manual_seed(seed)
    labels = list(teacher.labels)
    head = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)}}
    if cfg.path:
        folder = Path(cfg.path)
        if not (folder / "config.json").is_file():
            raise ModelError(f"student.path {folder}: not a Hugging Face model folder (no config.json)")
        model = AutoModelForSequenceClassification.from_pretrained(
            folder, **head, ignore_mismatched_sizes=True, use_safetensors=True, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        set_cut(tokenizer, cut_of(teacher.tokenizer))  # the student reads what its teacher read
        return Classifier(model, tokenizer, labels)

    t_config = teacher.model.config
    teacher_shape = shape_of(t_config)
    shape = {key: getattr(cfg, key) or teacher_shape[key] for key in teacher_shape}
    if shape["hidden_size"] % shape["num_heads"]:
        raise ModelError(f"student width {shape['hidden_size']} is not a multiple of its {shape['num_heads']} "
                         "heads (a null shape value takes the teacher's); set student.num_heads")
    config = t_config.__class__.from_dict(t_config.to_dict())
    config.num_hidden_layers = shape["num_layers"]
    config.hidden_size = shape["hidden_size"]
    config.num_attention_heads = shape["num_heads"]
    config.intermediate_size = shape["intermediate_size"]
    config.update(head)
    tokenizer = teacher.tokenizer
    if cfg.vocab_size:
        tokenizer = reduced_tokenizer(teacher.tokenizer, texts or [], cfg.vocab_size)
        set_cut(tokenizer, cut_of(teacher.tokenizer))
        config.vocab_size = len(tokenizer)
    model = AutoModelForSequenceClassification.from_config(config)

    same_layer_shape = all(shape[k] == teacher_shape[k] for k in ("hidden_size", "num_heads", "intermediate_size"))
    init = cfg.init
    if init == "auto":
        init = "teacher" if same_layer_shape and not cfg.vocab_size else "random"
    if init == "teacher":
        if not same_layer_shape:
            differ = {k: (shape[k], teacher_shape[k]) for k in ("hidden_size", "num_heads", "intermediate_size")
                      if shape[k] != teacher_shape[k]}
            raise ModelError(f"student.init teacher copies teacher layers, so the layer shape must match the "
                             f"teacher's; (student, teacher) differ in {differ}. Use student.init: random, or "
                             "leave those shape values null")
        if cfg.vocab_size:
            raise ModelError("student.init teacher copies the teacher's embeddings, which needs the teacher's "
                             "vocabulary: set student.vocab_size: null, or student.init: random")
        copy_teacher_layers(teacher.model, model, cfg.teacher_layers)
    else:
        init_word_embeddings(teacher, model, tokenizer)
    return Classifier(model, tokenizer, labels)


def copy_teacher_layers(teacher: nn.Module, student: nn.Module, teacher_layers: list[int] | None) -> list[int]:
    """Copy the embeddings and the chosen layers (0-based) of the teacher into the student."""
    t_embeddings, t_layers = _encoder_parts(teacher, "teacher")
    s_embeddings, s_layers = _encoder_parts(student, "student")
    chosen = teacher_layers if teacher_layers is not None else evenly_spaced_layers(len(s_layers), len(t_layers))
    bad = [i for i in chosen if not 0 <= i < len(t_layers)]
    if bad:
        raise ModelError(f"student.teacher_layers {bad} point past the teacher's depth "
                         f"({len(t_layers)} layers, numbered 0..{len(t_layers) - 1})")
    with torch.no_grad():
        s_embeddings.load_state_dict(t_embeddings.state_dict())
        for target, source in zip(s_layers, chosen):
            target.load_state_dict(t_layers[source].state_dict())
        t_pooler, s_pooler = getattr(teacher.base_model, "pooler", None), getattr(student.base_model, "pooler", None)
        if t_pooler is not None and s_pooler is not None:
            s_pooler.load_state_dict(t_pooler.state_dict())
    return list(chosen)


def init_word_embeddings(teacher: Classifier, model: nn.Module, tokenizer) -> None:
    """Start the student's word embeddings from the teacher's, projected to its width, token by token."""
    teacher_words = teacher.model.get_input_embeddings().weight.detach()
    width = model.get_input_embeddings().weight.shape[1]
    projected = project_embeddings(teacher_words, width)
    target = model.get_input_embeddings().weight
    with torch.no_grad():
        if tokenizer is teacher.tokenizer and teacher_words.shape[0] == target.shape[0]:
            target.copy_(projected)
            return
        teacher_vocab = teacher.tokenizer.get_vocab()
        for token, index in tokenizer.get_vocab().items():
            source = teacher_vocab.get(token)
            if source is not None and index < target.shape[0]:
                target[index] = projected[source]


def project_embeddings(weights: torch.Tensor, width: int) -> torch.Tensor:
    """PCA-project embedding rows (V, D) to (V, width), rescaled to the input's spread."""
    centered = weights - weights.mean(dim=0, keepdim=True)
    if width >= weights.shape[1]:
        return torch.nn.functional.pad(centered, (0, width - weights.shape[1]))
    _, _, v = torch.pca_lowrank(centered, q=width, center=False, niter=4)
    projected = centered @ v[:, :width]  # (V, width)
    return projected * (weights.std() / projected.std())
