"""Serving runtimes for classifiers: eager PyTorch, or a TorchScript trace of the same weights.

A small student spends most of a batch-1 request in Python: the Hugging Face forward walks its modules,
builds masks and output objects, and each step costs microseconds that a 2-layer model does not
amortise. A TorchScript trace records the tensor operations once and replays them without the
Python, so small models gain most. The trace is checked against the eager model on a padded batch
of inputs of several lengths before it is used; if the outputs differ, the eager model is kept.
"""

from __future__ import annotations

import logging
import warnings
from typing import Literal, NamedTuple

import torch
from torch import nn

from distill.models import Classifier, encode

Runtime = Literal["eager", "torchscript"]
log = logging.getLogger(__name__)


class TracedClassifier(nn.Module):
    """A traced sequence classifier called like the Hugging Face one: ``model(**encoded).logits``."""

    def __init__(self, traced: torch.jit.ScriptModule, input_names: list[str], eager: nn.Module):
        super().__init__()
        self.traced = traced
        self.input_names = input_names
        self._names = frozenset(input_names)
        self.config = eager.config
        self._eager = [eager]  # kept out of the module tree: its weights are already inside the trace

    @property
    def eager(self) -> nn.Module:
        return self._eager[0]

    def forward(self, **inputs: torch.Tensor) -> "TracedOutput":
        if not inputs.keys() <= self._names:
            raise TypeError(f"the trace takes {self.input_names}, not {sorted(set(inputs) - self._names)}")
        out = self.traced(**inputs)
        return TracedOutput(out["logits"] if isinstance(out, dict) else out[0])


class TracedOutput(NamedTuple):
    """What a traced classifier returns: ``.logits`` like the Hugging Face output (without its per-call cost)."""

    logits: torch.Tensor


def trace_classifier(clf: Classifier, texts: list[str], max_length: int, atol: float = 1e-4) -> Classifier:
    """A TorchScript copy of ``clf`` (CPU), or ``clf`` itself when tracing fails or changes the outputs.

    Args:
        texts: sample inputs; the first traces, a padded batch of up to 16 checks the trace.
        atol: largest logit difference from the eager model that is accepted.
    """
    model = clf.model.to("cpu").eval()
    example = dict(encode(clf.tokenizer, texts[:1], max_length))
    check = dict(encode(clf.tokenizer, texts[:16], max_length))
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about shape checks the trace fixes in place
            traced = torch.jit.trace(model, example_kwarg_inputs=example, strict=False, check_trace=False)
            traced = torch.jit.freeze(traced)
            wrapped = TracedClassifier(traced, list(example), model)
            diff = (wrapped(**check).logits - model(**check).logits).abs().max().item()
    except (RuntimeError, TypeError, ValueError) as exc:
        log.warning("TorchScript trace failed (%s); keeping the eager model", exc)
        return clf
    if not diff <= atol:
        log.warning("TorchScript trace differs from the eager model by %.2g (> %.0g); keeping the eager model",
                    diff, atol)
        return clf
    return Classifier(wrapped, clf.tokenizer, clf.labels)


def with_runtime(clf: Classifier, runtime: Runtime, texts: list[str], max_length: int) -> Classifier:
    """``clf`` in the requested runtime (TorchScript on CPU only; the eager model elsewhere)."""
    if runtime == "torchscript":
        return trace_classifier(clf, texts, max_length)
    return clf


def eager_model(model: nn.Module) -> nn.Module:
    """The eager module behind a traced one (or the module itself)."""
    return model.eager if isinstance(model, TracedClassifier) else model
