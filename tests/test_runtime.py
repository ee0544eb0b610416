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


ODD_TEXTS = ["", "   ", "Turn ON the Kitchen-Lights!!", "café crème à 7h ? ", "🙂 lights 🙂 off", "日本語のテキスト",
             "tab\tand\nnewline", "word " * 200, "x" * 500]


def test_a_batch_1_request_gets_the_tokenizers_own_tensors():
    from transformers import AutoTokenizer

    from distill.models import _single_text_encoder, encode, packaged_encoder_path

    tokenizer = AutoTokenizer.from_pretrained(packaged_encoder_path())
    for max_length in (8, 64):
        assert _single_text_encoder(tokenizer, max_length, TEXTS[0]) is not None  # the fast path is taken
        for text in TEXTS + ODD_TEXTS:
            expected = tokenizer([text], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            got = encode(tokenizer, [text], max_length)
            assert set(got) == set(expected)
            for key in expected:
                assert got[key].dtype == expected[key].dtype
                assert torch.equal(got[key], expected[key]), (text, max_length, key)
        assert encode(tokenizer, [ODD_TEXTS[-2]], max_length)["input_ids"].shape == (1, max_length)
    # a batch call in between does not change what the batch-1 path truncates to (it owns its backend)
    tokenizer(TEXTS, padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    assert encode(tokenizer, ["word " * 100], 64)["input_ids"].shape == (1, 64)


def test_a_tokenizer_whose_call_does_more_than_its_backend_keeps_the_ordinary_path():
    from transformers import AutoTokenizer

    from distill.models import _single_text_encoder, encode, packaged_encoder_path

    tokenizer = AutoTokenizer.from_pretrained(packaged_encoder_path())
    real_call = type(tokenizer).__call__

    class Shouting(type(tokenizer)):  # Python-side preprocessing the Rust backend never sees
        def __call__(self, text, *args, **kwargs):
            return real_call(self, [t.upper() + " !" for t in text], *args, **kwargs)

    tokenizer.__class__ = Shouting
    assert _single_text_encoder(tokenizer, 32, "turn on the lights") is None
    got = encode(tokenizer, ["turn on the lights"], 32)
    assert torch.equal(got["input_ids"], real_call(tokenizer, ["TURN ON THE LIGHTS !"], truncation=True,
                                                   max_length=32, return_tensors="pt")["input_ids"])
