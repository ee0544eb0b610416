"""The TorchScript runtime: the same logits as the eager model, or the eager model kept."""

from __future__ import annotations

import numpy as np
import torch

from distill.models import Classifier, load_classifier, predict_logits
from distill.quantize import quantize_dynamic_int8
from distill.runtime import TracedClassifier, eager_model, trace_classifier

TEXTS = ["turn on the kitchen lights", "what's the weather", "set a timer for five minutes please and thanks",
         "play some jazz in the living room", "hi", "is the front door locked right now or not"]


def test_trace_gives_the_eager_logits_for_any_length_and_padding(tiny_teacher):
    clf = load_classifier(tiny_teacher)
    traced = trace_classifier(clf, TEXTS, 32)
    assert isinstance(traced.model, TracedClassifier)
    assert eager_model(traced.model) is clf.model
    longer = TEXTS + ["a much longer request than any text the trace was recorded with, to be sure of it"]
    for batch_size in (1, 3, 7):  # batch-1 requests, and padded batches of mixed lengths
        np.testing.assert_allclose(predict_logits(traced, longer, batch_size, 32),
                                   predict_logits(clf, longer, batch_size, 32), atol=1e-5)


def test_int8_models_trace_too(tiny_teacher):
    clf = load_classifier(tiny_teacher)
    quantized = Classifier(quantize_dynamic_int8(clf.model), clf.tokenizer, clf.labels)
    traced = trace_classifier(quantized, TEXTS, 32)
    assert isinstance(traced.model, TracedClassifier)
    np.testing.assert_allclose(predict_logits(traced, TEXTS, 2, 32), predict_logits(quantized, TEXTS, 2, 32),
                               atol=1e-5)


def test_a_trace_that_changes_the_outputs_is_refused(tiny_teacher, monkeypatch, caplog):
    clf = load_classifier(tiny_teacher)
    real_trace = torch.jit.trace

    def wrong_trace(model, *args, **kwargs):  # a trace of other weights: its logits differ
        other = load_classifier(tiny_teacher).model
        with torch.no_grad():
            other.classifier.bias.add_(1.0)
        return real_trace(other, *args, **kwargs)

    monkeypatch.setattr(torch.jit, "trace", wrong_trace)
    kept = trace_classifier(clf, TEXTS, 32)
    assert kept is clf
    assert "differs from the eager model" in caplog.text
