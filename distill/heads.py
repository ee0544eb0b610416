"""Attention-head pruning: each layer keeps its most important heads; the model computes only those.

transformers 5 dropped ``prune_heads``, and a BERT config cannot describe heads narrower than
``hidden_size / num_attention_heads``. So a cut model lives two ways:

- **in memory** a cut layer's query, key and value projections keep only the rows of the heads it kept, and
  the attention's output projection only their columns: the model computes no cut head, and its ONNX export
  (what the evaluation times and the pyfunc serves) and that export's INT8 model are smaller and faster;
- **on disk** (:func:`full_width`, used by :func:`distill.models.save_classifier`) the weights are saved at
  the config's width with the cut heads' rows and columns zero, and ``config.json`` lists the cut heads
  (``distill_cut_heads``). A zero head adds exactly nothing (its values and its share of the output
  projection are zero), so plain transformers loads the folder as an ordinary model that computes the same
  function, and :func:`distill.models.load_classifier` cuts the listed heads again (:func:`restore`).

A zero head also stays zero while it trains (every gradient through it is zero, and AdamW's decay keeps a
zero weight zero), so a full-width copy can be distilled further.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

CONFIG_KEY = "distill_cut_heads"  # config.json: per encoder layer, the heads (original indices) cut away


def _layers(model: nn.Module) -> nn.ModuleList:
    return model.base_model.encoder.layer  # a BERT-style encoder (distill.compress.encoder_layers checks)


def cut_heads_of(model: nn.Module) -> list[list[int]]:
    """Per encoder layer, the heads cut away (original indices; empty lists for an uncut model)."""
    cut = getattr(model.config, CONFIG_KEY, None) or []
    return [sorted(int(h) for h in heads) for heads in cut] + [[]] * (model.config.num_hidden_layers - len(cut))


def _columns(heads: list[int], width: int) -> torch.Tensor:
    return torch.cat([torch.arange(head * width, (head + 1) * width) for head in heads])


def prune_heads(model: nn.Module, keep: int, importance: list[torch.Tensor]) -> list[list[int]]:
    """Keep the ``keep`` most important heads of every layer (in place); returns the heads cut per layer."""
    cut = [sorted(set(range(len(score))) - set(score.topk(keep).indices.tolist())) for score in importance]
    cut_heads(model, cut)
    return cut


def cut_heads(model: nn.Module, cut: list[list[int]]) -> None:
    """Remove the heads ``cut[i]`` (original indices) from layer ``i`` of an uncut model, in place, and record
    them in its config (``distill_cut_heads``)."""
    if any(cut_heads_of(model)):
        raise ValueError("the model's heads are cut already; cut an uncut model")
    for layer, heads in zip(_layers(model), cut):
        if not heads:
            continue
        attention = layer.attention.self
        kept = [h for h in range(attention.num_attention_heads) if h not in heads]
        if not kept:
            raise ValueError(f"cutting heads {heads} would leave a layer with no attention head")
        rows = _columns(kept, attention.attention_head_size)
        for name in ("query", "key", "value"):
            setattr(attention, name, sliced_linear(getattr(attention, name), rows=rows))
        attention.num_attention_heads, attention.all_head_size = len(kept), len(rows)
        layer.attention.output.dense = sliced_linear(layer.attention.output.dense, columns=rows)
    setattr(model.config, CONFIG_KEY, [list(heads) for heads in cut])


def sliced_linear(linear: nn.Linear, rows: torch.Tensor | None = None,
                  columns: torch.Tensor | None = None) -> nn.Linear:
    """A new linear layer with only the given output ``rows`` and input ``columns`` of ``linear``'s weights."""
    weight = linear.weight.detach()
    weight = weight[rows] if rows is not None else weight
    weight = weight[:, columns] if columns is not None else weight
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None)
    with torch.no_grad():
        out.weight.copy_(weight)
        if linear.bias is not None:
            out.bias.copy_(linear.bias.detach()[rows] if rows is not None else linear.bias.detach())
    return out


def _padded(linear: nn.Linear, size: int, index: torch.Tensor, rows: bool) -> nn.Linear:
    """``linear`` at ``size`` output rows (``rows``) or input columns, its weights at ``index``, zero elsewhere."""
    weight = linear.weight.detach()
    out = nn.Linear(weight.shape[1] if rows else size, size if rows else weight.shape[0],
                    bias=linear.bias is not None).to(weight.device, weight.dtype)
    with torch.no_grad():
        out.weight.zero_()
        if rows:
            out.weight[index] = weight
        else:
            out.weight[:, index] = weight
        if linear.bias is not None:
            out.bias.zero_()
            out.bias[index if rows else slice(None)] = linear.bias.detach()
    return out


@contextmanager
def full_width(model: nn.Module):
    """Within the block, the cut layers are back at the config's width with their cut heads zero (to save an
    ordinary folder); afterwards they are cut again (the same modules)."""
    config, saved = model.config, []
    cut = cut_heads_of(model)
    for layer, heads in zip(_layers(model) if any(cut) else [], cut):
        attention = layer.attention.self
        if not heads or attention.all_head_size == config.hidden_size:
            continue  # uncut, or a full-width copy (loaded by plain transformers) already
        width = config.hidden_size // config.num_attention_heads
        kept = _columns([h for h in range(config.num_attention_heads) if h not in heads], width)
        modules = {name: getattr(attention, name) for name in ("query", "key", "value")}
        modules["output"] = layer.attention.output.dense
        saved.append((layer, modules, attention.num_attention_heads, attention.all_head_size))
        for name in ("query", "key", "value"):
            setattr(attention, name, _padded(modules[name], config.hidden_size, kept, rows=True))
        layer.attention.output.dense = _padded(modules["output"], config.hidden_size, kept, rows=False)
        attention.num_attention_heads, attention.all_head_size = config.num_attention_heads, config.hidden_size
    try:
        yield model
    finally:
        for layer, modules, heads, size in saved:
            for name in ("query", "key", "value"):
                setattr(layer.attention.self, name, modules[name])
            layer.attention.output.dense = modules["output"]
            layer.attention.self.num_attention_heads, layer.attention.self.all_head_size = heads, size


def restore(model: nn.Module) -> None:
    """Cut again the heads a loaded full-width model's config lists (in place). Their saved weights must be zero:
    a nonzero cut head means the folder was not written by distill's pruning, and cutting it would change what
    the model computes."""
    cut = cut_heads_of(model)
    if not any(cut):
        return
    width = model.config.hidden_size // model.config.num_attention_heads
    for i, (layer, heads) in enumerate(zip(_layers(model), cut)):
        columns = _columns(heads, width) if heads else None
        if columns is not None and layer.attention.output.dense.weight[:, columns].abs().max() > 0:
            raise ValueError(f"config.json lists attention heads {heads} of layer {i} as cut "
                             f"({CONFIG_KEY}) but their weights are not zero; remove {CONFIG_KEY} from config.json "
                             "or re-export the model with distill")
    setattr(model.config, CONFIG_KEY, None)
    cut_heads(model, cut)
