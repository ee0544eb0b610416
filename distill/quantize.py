"""Post-training INT8 quantization of a classifier's linear layers."""

from __future__ import annotations

import warnings

import torch


def quantize_dynamic_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Dynamic INT8 quantization (weights int8, activations quantized per batch) of nn.Linear layers.

    Returns a quantized copy for CPU inference; the input model is untouched.
    """
    with warnings.catch_warnings():
        # torch.ao's eager quantization warns that it will move to torchao; it still works
        # and needs no extra package.
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(
            model.to("cpu").eval(), {torch.nn.Linear}, dtype=torch.qint8, inplace=False)
