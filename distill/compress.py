"""The compress_student stage: distil, then prune, then quantize, each step measured.

The guide's production order, after distillation: structured pruning of what the data never uses,
a short distillation from the cached teacher outputs to recover, then INT8 (ONNX Runtime's dynamic
quantization, applied where the evaluation serves the model: the ``compressed_int8`` candidate).
The steps, each optional (``compress`` section):

- **vocabulary**: the word-embedding rows of tokens the distillation data never produces are removed
  (with the teacher's WordPiece vocabulary of 30 k tokens they are most of a narrow student's
  weights). The single characters stay, so an unseen word still reads as its characters rather than
  ``[UNK]``; a text made of seen words tokenizes exactly as before.
- **feed-forward neurons**: each layer keeps the ``ffn_keep`` share of its intermediate neurons with
  the largest importance (mean absolute activation on the distillation texts times the norm of the
  neuron's output weights); the layers stay one shape, so the model is an ordinary Hugging Face
  folder that is smaller on disk and faster, not a sparse copy.
- **attention heads** (``heads_keep``, off by default): each layer keeps that share of its heads, the most
  important (how much each head's context writes through the attention's output projection on the
  distillation texts); the model computes only the heads it keeps (``distill.heads``: the saved folder is an
  ordinary one with the cut heads zero, the ONNX export and its INT8 model are smaller and faster).
- **layers** (``keep_layers``, off by default): the layers whose removal costs the least validation
  accuracy go.
- **recovery**: the pruned student distils again from the cached teacher outputs (the response terms
  of ``train.losses``); the weights of its best validation check are kept.
- **INT8** (``int8``): the stage writes the compressed student's INT8 model (``model-int8.onnx``, which the
  ``compressed_int8`` candidate serves): ONNX Runtime's dynamic or static quantization, or first a
  quantization-aware distillation (``qat``: the same distillation with weights and layer inputs rounded
  as static INT8 rounds them), then static (``distill.quantize``).

The folder (``models/student_compressed``) holds the compressed student with its ONNX export and a
card whose ``compression`` lists each step with its parameters, size and validation accuracy after
it. The evaluation scores it beside the student (``compressed``, ``compressed_int8``) and
:func:`distill.gates.choose_compressed` says which of them, if any, is registered in the student's
place. A student that continues from a compressed champion is not pruned again (it would compound),
but it gets its INT8 model. Disabled, the folder holds only a card saying so.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from distill.config import RESPONSE_LOSSES, PipelineConfig
from distill.heads import cut_heads_of, prune_heads, sliced_linear
from distill.io import atomic_dir, write_json
from distill.lengths import with_teacher_lengths
from distill.models import MODEL_CARD, Classifier, ModelError, load_classifier, predict_logits, read_card, save_classifier
from distill.objective import ModelShape, Objective
from distill.quantize import calibration_feeds, quantization_aware, quantize_onnx, quantize_static_onnx
from distill.served import INT8_FILE, ONNX_FILE, OnnxClassifier
from distill.students import distillation_set, settings_for
from distill.teacher import gold_data
from distill.trainer import TrainData, train

ROLE = "compressed"


@dataclass
class Step:
    """One compression step: what it did and where the student stood after it."""

    step: str
    detail: str
    parameters: int
    size_mb: float
    val_accuracy: float


@dataclass
class CompressResult:
    out_dir: Path
    enabled: bool
    steps: list[Step] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    fingerprint: str | None = None
    int8: Step | None = None  # the INT8 model beside it (compressed_int8): reported, the fp32 one is registered


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    layers = getattr(getattr(model.base_model, "encoder", None), "layer", None)
    if layers is None or not all(hasattr(layer, "intermediate") and hasattr(layer, "output") for layer in layers):
        raise ModelError(f"{type(model.base_model).__name__} is not a BERT-style encoder (encoder.layer with "
                         "intermediate and output): set compress.ffn_keep: 1.0, compress.heads_keep: 1.0 and "
                         "compress.keep_layers: null")
    return layers


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's fp32 weights."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def prune_vocabulary(clf: Classifier, texts: list[str]) -> tuple[Classifier, str | None]:
    """``clf`` with only the embedding rows of tokens ``texts`` use, its specials and single characters; the
    tokenizer keeps its normaliser, pre-tokenizer and post-processor, with the ids renumbered. Returns
    (the same classifier, why not) when the tokenizer is not a fast WordPiece one or nothing would go."""
    from transformers import AutoTokenizer

    tokenizer = clf.tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    if (spec.get("model") or {}).get("type") != "WordPiece":
        kind = (spec.get("model") or {}).get("type", "slow (Python)")
        return clf, f"the tokenizer is {kind}; vocabulary pruning handles WordPiece tokenizers"
    vocab: dict[str, int] = spec["model"]["vocab"]
    used: set[int] = set()
    for start in range(0, len(texts), 1024):
        for ids in tokenizer(texts[start:start + 1024], truncation=False)["input_ids"]:
            used.update(ids)
    prefix = spec["model"].get("continuing_subword_prefix") or "##"
    characters = {i for token, i in vocab.items()
                  if len(token) == 1 or (token.startswith(prefix) and len(token) == len(prefix) + 1)}
    specials = {t["id"] for t in spec.get("added_tokens", [])} | set(tokenizer.all_special_ids)
    keep = sorted(used | characters | specials)
    rows = clf.model.get_input_embeddings().num_embeddings
    if len(keep) >= rows:
        return clf, f"the data uses every one of the {rows} tokens"
    new_id = {old: new for new, old in enumerate(keep)}
    token_of = {i: token for token, i in vocab.items()}
    spec["model"]["vocab"] = {token_of[old]: new for old, new in new_id.items() if old in token_of}
    for added in spec.get("added_tokens", []):
        added["id"] = new_id[added["id"]]
    renumber_ids(spec.get("post_processor"), new_id)
    if spec.get("padding"):
        spec["padding"]["pad_id"] = new_id[spec["padding"]["pad_id"]]
    with tempfile.TemporaryDirectory(prefix="distill-vocab-") as scratch:
        tokenizer.save_pretrained(scratch)
        Path(scratch, "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))
        Path(scratch, "vocab.txt").unlink(missing_ok=True)  # the vocabulary is the one in tokenizer.json
        smaller = AutoTokenizer.from_pretrained(scratch, trust_remote_code=False)
    from distill.cut import cut_of, set_cut

    set_cut(smaller, cut_of(tokenizer))
    model = clf.model
    old = model.get_input_embeddings()
    index = torch.tensor(keep)
    embeddings = nn.Embedding(len(keep), old.embedding_dim,
                              padding_idx=new_id.get(old.padding_idx) if old.padding_idx is not None else None)
    with torch.no_grad():
        embeddings.weight.copy_(old.weight[index])
    model.set_input_embeddings(embeddings)
    model.config.vocab_size = len(keep)
    if getattr(model.config, "pad_token_id", None) is not None and model.config.pad_token_id in new_id:
        model.config.pad_token_id = new_id[model.config.pad_token_id]
    return Classifier(model, smaller, clf.labels), None


def renumber_ids(node, new_id: dict[int, int]) -> None:
    """Renumber the special-token ids a post-processor (TemplateProcessing, BertProcessing, a Sequence) holds."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "ids" and isinstance(value, list):
                node[key] = [new_id[i] for i in value]
            elif key in ("sep", "cls") and isinstance(value, list) and len(value) == 2:
                node[key] = [value[0], new_id[value[1]]]
            else:
                renumber_ids(value, new_id)
    elif isinstance(node, list):
        for item in node:
            renumber_ids(item, new_id)


@torch.no_grad()
def ffn_importance(clf: Classifier, texts: list[str], max_length: int) -> list[torch.Tensor]:
    """Per layer, each feed-forward neuron's mean absolute activation on ``texts`` times the norm of its
    output weights: how much it writes into the residual stream."""
    layers = encoder_layers(clf.model)
    totals = [torch.zeros(layer.intermediate.dense.out_features) for layer in layers]
    hooks = [layer.intermediate.register_forward_hook(
        lambda _module, _inputs, out, i=i: totals[i].add_(out.detach().abs().sum(dim=(0, 1)).cpu()))
        for i, layer in enumerate(layers)]
    try:
        predict_logits(clf, texts, 64, max_length)
    finally:
        for hook in hooks:
            hook.remove()
    return [total * layer.output.dense.weight.detach().norm(dim=0).cpu() for total, layer in zip(totals, layers)]


@torch.no_grad()
def head_importance(clf, texts: list[str], max_length: int) -> list[torch.Tensor]:
    """Per layer, how much each attention head writes into the residual stream on ``texts``: the summed norm of
    its context vectors through its columns of the attention's output projection (the feed-forward
    pruning's score, for heads). An uncut model only."""
    layers = encoder_layers(clf.model)
    totals = [torch.zeros(layer.attention.self.num_attention_heads) for layer in layers]

    def score(i, layer):
        width, weight = layer.attention.self.attention_head_size, layer.attention.output.dense.weight.detach()

        def hook(_module, inputs):
            context = inputs[0].detach()
            for head in range(len(totals[i])):
                columns = slice(head * width, (head + 1) * width)
                totals[i][head] += (context[..., columns] @ weight[:, columns].T).norm(dim=-1).sum().cpu()
        return layer.attention.output.dense.register_forward_pre_hook(hook)

    hooks = [score(i, layer) for i, layer in enumerate(layers)]
    try:
        predict_logits(clf, texts, 64, max_length)
    finally:
        for hook in hooks:
            hook.remove()
    return totals


def prune_ffn(clf: Classifier, keep: int, importance: list[torch.Tensor]) -> None:
    """Keep the ``keep`` most important intermediate neurons of every layer (in place)."""
    for layer, score in zip(encoder_layers(clf.model), importance):
        index = score.topk(keep).indices.sort().values
        layer.intermediate.dense = sliced_linear(layer.intermediate.dense, rows=index)
        layer.output.dense = sliced_linear(layer.output.dense, columns=index)
    clf.model.config.intermediate_size = keep


def accuracy(clf: Classifier, data: TrainData, max_length: int) -> float:
    return float((predict_logits(clf, data.texts, 64, max_length).argmax(axis=1) == data.labels).mean())


def prune_layers(clf: Classifier, keep: int, val: TrainData, max_length: int) -> list[int]:
    """Drop layers one at a time, each time the one whose removal costs the least validation accuracy (of equal
    costs, the one that changes the logits least), until ``keep`` remain (in place); returns the kept layers'
    original indices."""
    layers = encoder_layers(clf.model)
    kept = list(range(len(layers)))
    reference = predict_logits(clf, val.texts, 64, max_length)
    while len(kept) > keep:
        trials = []
        for drop in range(len(kept)):
            clf.model.base_model.encoder.layer = nn.ModuleList(layers[i] for j, i in enumerate(kept) if j != drop)
            logits = predict_logits(clf, val.texts, 64, max_length)
            trials.append((float((logits.argmax(axis=1) == val.labels).mean()),
                           -float(np.abs(logits - reference).mean()), drop))
        kept.pop(max(trials)[2])
        clf.model.base_model.encoder.layer = nn.ModuleList(layers[i] for i in kept)
    clf.model.config.num_hidden_layers = len(kept)
    return kept


def recover(cfg: PipelineConfig, clf: Classifier, data: TrainData, val: TrainData, max_length: int,
            epochs: int | None = None, learning_rate: float | None = None,
            progress: str = "recovering compressed student", on_log=None):
    """Distil the pruned student again from the cached teacher outputs (the response terms of
    ``train.losses``; plain KD when there are none) for ``compress.recovery_epochs`` (or ``epochs``), early
    stopping on gold_val."""
    terms = [term for term in cfg.train.losses if term.name in RESPONSE_LOSSES]
    settings = settings_for(cfg, len(data), distilled=True, epochs=epochs or cfg.compress.recovery_epochs)
    # the pruned start is not a candidate: on a small validation set it ties with the recovered weights, which
    # match the teacher better (docs/compression.md has the measurements)
    settings = replace(settings, learning_rate=learning_rate or cfg.compress.learning_rate, max_length=max_length)
    objective = Objective(terms, settings.kd_temperature, settings.alpha, ModelShape.of(clf.model), None,
                          same_tokenizer=False)
    return train(clf, data, val, settings, on_log=on_log, progress=progress, objective=objective)


def quantization_aware_distillation(cfg: PipelineConfig, clf: Classifier, data: TrainData, val: TrainData,
                                    max_length: int, feeds: list[dict]):
    """``compress.qat_epochs`` of the recovery's distillation with the student computing as its static INT8
    version will (``distill.quantize.quantization_aware``; the activation ranges are recalibrated at each
    validation check, as the weights move); the model keeps the float weights of the best check."""
    with quantization_aware(clf.model, feeds) as inputs:
        return recover(cfg, clf, data, val, max_length, cfg.compress.qat_epochs, cfg.compress.qat_learning_rate,
                       progress="quantization-aware distillation", on_log=lambda _step, _metrics: inputs.calibrate())


def write_int8(clf: Classifier, folder: Path, mode: str, feeds: list[dict], val: TrainData,
               max_length: int) -> Step:
    """``folder/model-int8.onnx`` from ``folder/model.onnx`` (dynamic, or static calibrated on ``feeds``), and
    the step it makes: its size on disk and its validation accuracy as ONNX Runtime serves it."""
    if mode == "dynamic":
        quantize_onnx(folder / ONNX_FILE, folder / INT8_FILE)
    else:
        quantize_static_onnx(folder / ONNX_FILE, folder / INT8_FILE, feeds)
    served = Classifier(OnnxClassifier(folder / INT8_FILE, 1, eager=clf.model), clf.tokenizer, clf.labels)
    detail = {"dynamic": "ONNX Runtime's dynamic quantization (activation ranges per request)",
              "static": f"ONNX Runtime's static quantization, activations calibrated on {len(feeds)} texts",
              "qat": f"static quantization of the quantization-aware weights, calibrated on {len(feeds)} texts"}[mode]
    return Step(f"INT8 ({mode})", detail, clf.num_parameters, round((folder / INT8_FILE).stat().st_size / 2**20, 3),
                accuracy(served, val, max_length))


def run(cfg: PipelineConfig, prepared: Path, teacher_dir: Path, student_dir: Path, outputs: Path,
        out_dir: Path) -> CompressResult:
    """Compress the trained student (see the module docstring) into ``out_dir``."""
    student_card = read_card(student_dir)
    if not cfg.compress.enabled:
        why = "compress.enabled is false"
        with atomic_dir(out_dir) as tmp:
            write_json(tmp / MODEL_CARD, {"role": ROLE, "enabled": False, "why": why})
        print(f"compress: not applied: {why}", flush=True)
        return CompressResult(out_dir, False, skipped=[why])
    # a student that continues from a compressed champion is pruned already: pruning it again would compound
    # (a quarter of a quarter of the neurons); it still gets its INT8 model, which its champion may have served
    pruned_already = bool((student_card.get("warm_start") or {}).get("compressed"))
    cfg = with_teacher_lengths(cfg, teacher_dir)
    max_length = cfg.train.max_length
    labels = student_card["labels"]
    clf = load_classifier(student_dir, labels)
    data, meta = distillation_set(outputs, read_card(teacher_dir)["fingerprint"], labels)  # the teacher's outputs
    val = gold_data(prepared, "gold_val", labels)
    c = cfg.compress

    def record(step: str, detail: str) -> None:
        steps.append(Step(step, detail, clf.num_parameters, round(weight_bytes(clf.model) / 2**20, 3),
                          accuracy(clf, val, max_length)))
        print(f"compress: {step}: {detail}; {clf.num_parameters:,} parameters, val accuracy "
              f"{steps[-1].val_accuracy:.3f}", flush=True)

    steps: list[Step] = []
    skipped: list[str] = []
    record("student", f"the distilled student ({student_card['fingerprint'][:12]})")
    if pruned_already:
        skipped.append("pruning: the student continues from a compressed model (student.warm_start), so it is "
                       "pruned already")
    if c.vocabulary and not pruned_already:
        rows = clf.model.get_input_embeddings().num_embeddings
        clf, why = prune_vocabulary(clf, data.texts + val.texts)
        if why:
            skipped.append(f"vocabulary: {why}")
        else:
            record("vocabulary", f"{rows:,} -> {clf.model.get_input_embeddings().num_embeddings:,} embedding rows")
    if not pruned_already and c.keep_layers is not None and c.keep_layers < clf.model.config.num_hidden_layers:
        before = clf.model.config.num_hidden_layers
        kept = prune_layers(clf, c.keep_layers, val, max_length)
        record("layers", f"{before} -> {len(kept)} layers (kept {kept}, 0-based)")
    heads = clf.model.config.num_attention_heads
    keep_heads = max(1, int(np.floor(heads * c.heads_keep + 0.5)))  # the nearest count: 0.67 of 3 heads is 2
    if keep_heads < heads and not pruned_already:
        cut = prune_heads(clf.model, keep_heads, head_importance(clf, data.texts[:c.importance_texts], max_length))
        record("attention heads", f"{heads} -> {keep_heads} heads per layer, by importance (cut per layer, "
               f"0-based: {cut})")
    elif c.heads_keep < 1 and not pruned_already:
        skipped.append(f"attention heads: heads_keep {c.heads_keep:g} of {heads} heads is {keep_heads}, so none is cut")
    width = clf.model.config.intermediate_size
    keep = max(8, int(np.ceil(width * c.ffn_keep / 8) * 8)) if c.ffn_keep < 1 else width
    if keep < width and not pruned_already:
        prune_ffn(clf, keep, ffn_importance(clf, data.texts[:c.importance_texts], max_length))
        record("feed-forward", f"{width} -> {keep} neurons per layer, by importance")
    history = []
    if len(steps) > 1 and c.recovery_epochs:
        result = recover(cfg, clf, data, val, max_length)
        history = result.history
        record("recovery", f"{result.steps} distillation steps from the cached teacher outputs")
    feeds = calibration_feeds(clf, data.texts, c.calibration_texts, max_length, cfg.seed) if c.int8 != "dynamic" else []
    if c.int8 == "qat":
        result = quantization_aware_distillation(cfg, clf, data, val, max_length, feeds)
        offset = history[-1]["step"] if history else 0
        history = history + [{**row, "step": row["step"] + offset} for row in result.history]
        record("quantization-aware distillation", f"{result.steps} distillation steps with weights and layer "
               "inputs rounded as static INT8 rounds them (float weights kept)")
    # the student's card (method, losses, training settings, teacher) with the shape it has now
    card = {key: value for key, value in student_card.items() if key not in ("fingerprint", "serving", "parameters",
                                                                             "labels", "cut")}
    config = clf.model.config
    card |= {"role": ROLE, "enabled": True, "student_fingerprint": student_card["fingerprint"],
             "input_hash": meta["input_hash"],
             "student": {**card.get("student", {}), "num_layers": config.num_hidden_layers,
                         "intermediate_size": config.intermediate_size,
                         "heads_kept": config.num_attention_heads - max(map(len, cut_heads_of(clf.model))),
                         "vocab_size": config.vocab_size if any(s.step == "vocabulary" for s in steps)
                         else card.get("student", {}).get("vocab_size")},
             "compression": {"steps": [vars(s) for s in steps], "skipped": skipped}}
    with atomic_dir(out_dir) as tmp:
        fingerprint = save_classifier(clf, tmp, card, history or None, export=cfg.evaluate.runtime == "onnxruntime")
        int8 = None
        if (tmp / ONNX_FILE).is_file():  # else the evaluation quantizes an export it makes itself (dynamic)
            int8 = write_int8(clf, tmp, c.int8, feeds, val, max_length)
            print(f"compress: {int8.step}: {int8.size_mb:.2f} MB, val accuracy {int8.val_accuracy:.3f}", flush=True)
        else:
            skipped.append(f"INT8 ({c.int8}): no ONNX export to quantize (evaluate.runtime is eager or the export "
                           "failed); the evaluation quantizes dynamically")
        write_json(tmp / MODEL_CARD, read_card(tmp) | {"compression": {
            "steps": [vars(s) for s in steps], "skipped": skipped, "int8": vars(int8) if int8 else None}})
    return CompressResult(out_dir, True, steps, skipped, fingerprint, int8)
