"""The serving runtime: a model's ONNX export (fp32 and INT8) gives its logits, or the eager model is kept."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch

from distill.models import Classifier, load_classifier, model_fingerprint, predict_logits, read_card
from distill.runtime import OnnxClassifier, eager_model, onnx_classifier, quantized_classifier
from distill.served import ONNX_FILE

TEXTS = ["turn on the kitchen lights", "what's the weather", "set a timer for five minutes please and thanks",
         "play some jazz in the living room", "hi", "is the front door locked right now or not"]
LONGER = TEXTS + ["a much longer request than any text the export was recorded with, to be sure of it " * 3]


def test_a_saved_model_carries_its_checked_export_and_an_edited_export_is_refused(tiny_teacher, tmp_path):
    from distill.io import hash_files
    from distill.models import ModelError

    card = read_card(tiny_teacher)
    assert (tiny_teacher / ONNX_FILE).is_file() and card["serving"]["onnx"] == ONNX_FILE
    assert card["serving"]["sha256"] == hash_files(tiny_teacher, (ONNX_FILE,))
    assert model_fingerprint(tiny_teacher, card["cut"]) == card["fingerprint"]  # the weights' name, as before
    edited = tmp_path / "edited"
    shutil.copytree(tiny_teacher, edited)
    with open(edited / ONNX_FILE, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelError, match="model.onnx differs from the export distill wrote"):
        load_classifier(edited)


def test_the_export_gives_the_eager_logits_for_any_length_and_padding(tiny_teacher):
    clf = load_classifier(tiny_teacher)
    served = onnx_classifier(clf, tiny_teacher, 1, TEXTS, 32)
    assert isinstance(served.model, OnnxClassifier) and served.model.path == str(tiny_teacher / ONNX_FILE)
    assert eager_model(served.model) is clf.model
    for batch_size in (1, 3, 7):  # batch-1 requests, and padded batches of mixed lengths
        np.testing.assert_allclose(predict_logits(served, LONGER, batch_size, 32),
                                   predict_logits(clf, LONGER, batch_size, 32), atol=1e-5)


def test_a_folder_without_an_export_is_exported_when_served(tiny_teacher, tmp_path):
    folder = tmp_path / "teacher"
    shutil.copytree(tiny_teacher, folder)
    (folder / ONNX_FILE).unlink()  # a teacher given by teacher.path, or a model saved before exports
    card = read_card(folder)
    card.pop("serving")
    (folder / "distill.json").write_text(json.dumps(card))
    clf = load_classifier(folder)
    served = onnx_classifier(clf, folder, 1, TEXTS, 32)
    assert isinstance(served.model, OnnxClassifier) and not (folder / ONNX_FILE).exists()  # a scratch export
    np.testing.assert_allclose(predict_logits(served, LONGER, 3, 32), predict_logits(clf, LONGER, 3, 32), atol=1e-5)


def test_int8_is_onnx_runtime_quantization_smaller_and_close(tiny_teacher):
    clf = load_classifier(tiny_teacher)
    quantized, size = quantized_classifier(clf, tiny_teacher, 1, TEXTS, 32)
    assert isinstance(quantized.model, OnnxClassifier)
    fp32 = (tiny_teacher / ONNX_FILE).stat().st_size
    assert size < 0.5 * fp32, (size, fp32)  # int8 weights: about a quarter of the linear layers' bytes
    got, want = predict_logits(quantized, LONGER, 3, 32), predict_logits(clf, LONGER, 3, 32)
    assert not np.allclose(got, want, atol=1e-6)  # it is quantized ...
    np.testing.assert_allclose(got, want, atol=0.1)  # ... and close


def test_export_int8_and_serving_raise_no_deprecation_warning(tiny_teacher, tmp_path):
    clf = load_classifier(tiny_teacher)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", PendingDeprecationWarning)
        from distill.models import export_into

        assert export_into(clf, tmp_path)[1] == ""
        served = OnnxClassifier(tmp_path / ONNX_FILE, 1, eager=clf.model)
        quantized, _ = quantized_classifier(clf, tmp_path, 1, TEXTS, 32)
        for model in (served, quantized.model):
            predict_logits(Classifier(model, clf.tokenizer, clf.labels), TEXTS, 2, 32)


def test_an_export_that_changes_the_outputs_is_refused(tiny_teacher, tmp_path, monkeypatch, caplog):
    import distill.served as served_module

    real_export = served_module.export_onnx

    def wrong_export(model, example, path):  # an export of other weights: its logits differ
        other = load_classifier(tiny_teacher).model
        with torch.no_grad():
            other.classifier.bias.add_(1.0)
        real_export(other, example, path)

    monkeypatch.setattr(served_module, "export_onnx", wrong_export)
    clf = load_classifier(tiny_teacher)
    folder = tmp_path / "no-export"
    folder.mkdir()
    kept = onnx_classifier(clf, folder, 1, TEXTS, 32)
    assert kept is clf
    assert "differs from the eager model" in caplog.text
    assert not any(folder.iterdir())  # no export left behind


def test_the_old_runtime_name_is_refused_with_what_to_set(tmp_path):
    from distill.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="torchscript was replaced by onnxruntime"):
        load_config(tmp_path / "params.yaml", ["evaluate.runtime=torchscript"], missing_ok=True)


ODD_TEXTS = ["", "   ", "Turn ON the Kitchen-Lights!!", "café crème à 7h ? ", "🙂 lights 🙂 off", "日本語のテキスト",
             "tab\tand\nnewline", "word " * 200, "x" * 500]


def test_a_batch_1_request_gets_the_tokenizers_own_tensors():
    from transformers import AutoTokenizer

    from distill.models import encode, packaged_encoder_path
    from distill.served import single_text_encoder

    tokenizer = AutoTokenizer.from_pretrained(packaged_encoder_path())
    for max_length in (8, 64):
        assert single_text_encoder(tokenizer, max_length, TEXTS[0]) is not None  # the fast path is taken
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

    from distill.models import encode, packaged_encoder_path
    from distill.served import single_text_encoder

    tokenizer = AutoTokenizer.from_pretrained(packaged_encoder_path())
    real_call = type(tokenizer).__call__

    class Shouting(type(tokenizer)):  # Python-side preprocessing the Rust backend never sees
        def __call__(self, text, *args, **kwargs):
            return real_call(self, [t.upper() + " !" for t in text], *args, **kwargs)

    tokenizer.__class__ = Shouting
    assert single_text_encoder(tokenizer, 32, "turn on the lights") is None
    got = encode(tokenizer, ["turn on the lights"], 32)
    assert torch.equal(got["input_ids"], real_call(tokenizer, ["TURN ON THE LIGHTS !"], truncation=True,
                                                   max_length=32, return_tensors="pt")["input_ids"])


def test_other_architectures_export_too(tmp_path):
    """A RoBERTa (byte-level BPE, no token types, offset positions) and a DistilBERT (no token types)."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import (AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification,
                              PreTrainedTokenizerFast, RobertaConfig, RobertaForSequenceClassification)

    from distill.models import export_into, packaged_encoder_path

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(LONGER * 5, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    backend = bpe._tokenizer
    backend.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0))
    bpe_tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                            unk_token="<unk>", pad_token="<pad>", cls_token="<s>", sep_token="</s>")
    torch.manual_seed(0)
    roberta = RobertaForSequenceClassification(RobertaConfig(
        vocab_size=len(bpe_tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=130, pad_token_id=1, type_vocab_size=1, num_labels=3))
    wordpiece = AutoTokenizer.from_pretrained(packaged_encoder_path())
    distilbert = DistilBertForSequenceClassification(DistilBertConfig(
        vocab_size=wordpiece.vocab_size, dim=32, n_layers=1, n_heads=2, hidden_dim=64, num_labels=3))
    for name, model, tokenizer in (("roberta", roberta, bpe_tokenizer), ("distilbert", distilbert, wordpiece)):
        clf = Classifier(model.eval(), tokenizer, ["a", "b", "c"])
        folder = tmp_path / name
        folder.mkdir()
        assert export_into(clf, folder)[1] == "", name
        served = onnx_classifier(clf, folder, 1, TEXTS, 32)
        assert isinstance(served.model, OnnxClassifier)
        np.testing.assert_allclose(predict_logits(served, LONGER, 3, 32), predict_logits(clf, LONGER, 3, 32),
                                   atol=1e-5, err_msg=name)
