"""Serving runtimes for classifiers: eager PyTorch, or a TorchScript trace of the same weights.

A small student spends most of a batch-1 request in Python: the Hugging Face forward walks its modules,
builds masks and output objects, and each step costs microseconds that a 2-layer model does not
amortise. A TorchScript trace records the tensor operations once and replays them without the
Python, so small models gain most. The trace is checked against the eager model on a padded batch
of inputs of several lengths before it is used; if the outputs differ, the eager model is kept.
The tracing itself is ``distill.traced`` (torch only), which the served pyfunc ships and runs too.
"""

from __future__ import annotations

import logging
from typing import Literal

from torch import nn

from distill.models import Classifier, encode
from distill.traced import TracedClassifier, TracedOutput, trace_model

__all__ = ["Runtime", "TracedClassifier", "TracedOutput", "eager_model", "trace_classifier", "with_runtime"]

Runtime = Literal["eager", "torchscript"]
log = logging.getLogger(__name__)


def trace_classifier(clf: Classifier, texts: list[str], max_length: int, atol: float = 1e-4) -> Classifier:
    """A TorchScript copy of ``clf`` (CPU), or ``clf`` itself when tracing fails or changes the outputs.

    Args:
        texts: sample inputs; the first traces, a padded batch of up to 16 checks the trace.
        atol: largest logit difference from the eager model that is accepted.
    """
    traced, why = trace_model(clf.model, dict(encode(clf.tokenizer, texts[:1], max_length)),
                              dict(encode(clf.tokenizer, texts[:16], max_length)), atol)
    if traced is None:
        log.warning("%s", why)
        return clf
    return Classifier(traced, clf.tokenizer, clf.labels)


def with_runtime(clf: Classifier, runtime: Runtime, texts: list[str], max_length: int) -> Classifier:
    """``clf`` in the requested runtime (TorchScript on CPU only; the eager model elsewhere)."""
    if runtime == "torchscript":
        return trace_classifier(clf, texts, max_length)
    return clf


def eager_model(model: nn.Module) -> nn.Module:
    """The eager module behind a traced one (or the module itself)."""
    return model.eager if isinstance(model, TracedClassifier) else model
