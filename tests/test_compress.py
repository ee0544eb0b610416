"""The compression stack: vocabulary and feed-forward pruning, recovery, the stage, its gate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill import audit, compress, evaluate, students
from distill.config import CompressConfig, config_from_dict
from distill.gates import check_compression, choose_compressed
from distill.io import read_json
from distill.models import Classifier, load_classifier, predict_logits, read_card, save_classifier
from distill.served import INT8_FILE

SEEN = ["turn on the kitchen lights", "what is the temperature in the bedroom", "pause the music please",
        "set a timer for ten minutes"]


def _copy(folder) -> Classifier:
    return load_classifier(folder)


def test_vocabulary_pruning_keeps_seen_texts_exact_and_reads_unseen_words_as_letters(tiny_teacher, tmp_path):
    clf = _copy(tiny_teacher)
    before = predict_logits(clf, SEEN, 8, 32)
    rows = clf.model.get_input_embeddings().num_embeddings
    pruned, why = compress.prune_vocabulary(_copy(tiny_teacher), SEEN)
    assert why is None
    kept = pruned.model.get_input_embeddings().num_embeddings
    assert kept < rows / 10, (kept, rows)
    # a text made of seen words is the same tokens (renumbered): the same logits
    np.testing.assert_allclose(predict_logits(pruned, SEEN, 8, 32), before, atol=1e-5)
    unk = pruned.tokenizer.unk_token_id
    unseen = pruned.tokenizer("zygote quokka")["input_ids"]
    assert unk not in unseen and len(unseen) > 4, "an unseen word reads as its letters, not [UNK]"
    # the smaller tokenizer survives a save and a load (the served pyfunc and the registry read the folder)
    save_classifier(pruned, tmp_path / "m", {"role": "compressed"})
    again = load_classifier(tmp_path / "m")
    assert again.tokenizer(SEEN)["input_ids"] == pruned.tokenizer(SEEN)["input_ids"]
    assert again.tokenizer.cls_token_id == pruned.tokenizer.cls_token_id < kept
    np.testing.assert_allclose(predict_logits(again, SEEN, 8, 32), before, atol=1e-5)


def test_feed_forward_pruning_removes_the_least_important_neurons(tiny_teacher):
    clf = _copy(tiny_teacher)
    layers = clf.model.base_model.encoder.layer
    width = layers[0].intermediate.dense.out_features
    with torch.no_grad():  # every odd neuron writes nothing into the residual stream: it is unimportant
        for layer in layers:
            layer.output.dense.weight[:, 1::2] = 0
    before = predict_logits(clf, SEEN, 8, 32)
    importance = compress.ffn_importance(clf, SEEN, 32)
    assert all(float(score[1::2].max()) == 0 < float(score[0::2].min()) for score in importance)
    compress.prune_ffn(clf, width // 2, importance)
    assert [layer.intermediate.dense.out_features for layer in layers] == [width // 2] * len(layers)
    assert [layer.output.dense.in_features for layer in layers] == [width // 2] * len(layers)
    assert clf.model.config.intermediate_size == width // 2
    np.testing.assert_allclose(predict_logits(clf, SEEN, 8, 32), before, atol=1e-5)


def test_head_pruning_computes_only_the_kept_heads_and_saves_an_ordinary_folder(tiny_teacher, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    from distill.compress import head_importance
    from distill.heads import CONFIG_KEY, prune_heads
    from distill.models import ModelError, encode

    clf = _copy(tiny_teacher)
    layers = clf.model.base_model.encoder.layer
    width = layers[0].attention.self.attention_head_size
    with torch.no_grad():  # head 0 of every layer writes nothing through the output projection: unimportant
        for layer in layers:
            layer.attention.output.dense.weight[:, :width] = 0
    before = predict_logits(clf, SEEN, 8, 32)
    importance = head_importance(clf, SEEN, 32)
    assert all(float(score[0]) == 0 < float(score[1]) for score in importance)
    assert prune_heads(clf.model, 1, importance) == [[0]] * len(layers)
    assert [layer.attention.self.query.out_features for layer in layers] == [width] * len(layers)
    assert [layer.attention.output.dense.in_features for layer in layers] == [width] * len(layers)
    np.testing.assert_allclose(predict_logits(clf, SEEN, 8, 32), before, atol=1e-5)

    save_classifier(clf, tmp_path / "m", {"role": "compressed"}, export=True)
    # on disk: the config's full width, the cut head zero, and the cut listed; in memory still cut
    weights = load_file(tmp_path / "m" / "model.safetensors")
    query = next(v for k, v in weights.items() if k.endswith("layer.0.attention.self.query.weight"))
    assert query.shape[0] == 2 * width and float(query[:width].abs().max()) == 0 < float(query[width:].abs().max())
    assert read_json(tmp_path / "m" / "config.json")[CONFIG_KEY] == [[0]] * len(layers)
    assert layers[0].attention.self.query.out_features == width
    # plain transformers loads it as an ordinary model computing the same function
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        logits = plain(**encode(clf.tokenizer, SEEN, 32)).logits.numpy()
    np.testing.assert_allclose(logits, before, atol=1e-5)
    # distill loads it cut, and its ONNX export (what is served) holds only the kept heads
    again = load_classifier(tmp_path / "m")
    assert again.model.base_model.encoder.layer[1].attention.self.value.out_features == width
    assert again.num_parameters == clf.num_parameters < _copy(tiny_teacher).num_parameters
    np.testing.assert_allclose(predict_logits(again, SEEN, 8, 32), before, atol=1e-5)
    full = _copy(tiny_teacher)
    save_classifier(full, tmp_path / "full", {"role": "student"}, export=True)
    assert (tmp_path / "m" / "model.onnx").stat().st_size < (tmp_path / "full" / "model.onnx").stat().st_size
    # a folder whose listed heads are not zero (written by something else) is refused, not silently changed
    with torch.no_grad():
        plain.base_model.encoder.layer[0].attention.output.dense.weight[:, :width] = 0.5
    plain.save_pretrained(tmp_path / "edited")
    clf.tokenizer.save_pretrained(tmp_path / "edited")
    with pytest.raises(ModelError, match=r"heads \[0\] of layer 0 as cut .*not zero"):
        load_classifier(tmp_path / "edited")


def test_layer_pruning_keeps_the_layers_that_matter(tiny_teacher):
    from distill.trainer import TrainData

    from tests.conftest import make_examples

    clf = _copy(tiny_teacher)
    with torch.no_grad():  # layer 1 adds nothing (zero outputs; its layer norms see normalised inputs)
        second = clf.model.base_model.encoder.layer[1]
        for linear in (second.attention.output.dense, second.output.dense):
            linear.weight.zero_()
            linear.bias.zero_()
    texts = make_examples(per_label=25, seed=1)["text"].tolist()
    val = TrainData(texts, predict_logits(clf, texts, 32, 32).argmax(axis=1))  # what the whole model answers
    kept = compress.prune_layers(clf, 1, val, 32)
    assert kept == [0] and clf.model.config.num_hidden_layers == 1


@pytest.fixture
def distilled(tiny_cfg, labelled, tmp_path):
    prepared, teacher_dir, outputs = labelled
    students.run_student(tiny_cfg, prepared, teacher_dir, outputs, tmp_path / "student")
    return tiny_cfg, prepared, teacher_dir, outputs


def test_compress_stage_writes_a_smaller_student_that_the_evaluation_scores(distilled, tmp_path):
    cfg, prepared, teacher_dir, outputs = distilled
    cfg = config_from_dict({**cfg.model_dump(mode="json"), "compress": {"vocabulary": True, "heads_keep": 0.5}})
    result = compress.run(cfg, prepared, teacher_dir, tmp_path / "student", outputs, tmp_path / "compressed")
    assert [s.step for s in result.steps] == ["student", "vocabulary", "attention heads", "feed-forward", "recovery"]
    card = read_card(tmp_path / "compressed")
    assert card["student_fingerprint"] == read_card(tmp_path / "student")["fingerprint"]
    assert card["compression"]["steps"][0]["parameters"] > 3 * card["parameters"]
    assert card["student"]["intermediate_size"] == 16 < cfg.student.intermediate_size
    assert card["student"]["heads_kept"] == 1 < cfg.student.num_heads
    assert card["method"] == read_card(tmp_path / "student")["method"]
    weights = lambda folder: (folder / "model.safetensors").stat().st_size
    assert weights(tmp_path / "compressed") < weights(tmp_path / "student") / 3
    # the recovery trained: its curve is saved beside the weights (a DVC plot with the other curves)
    from distill.models import read_history

    assert read_history(tmp_path / "compressed") and result.steps[-1].detail.split()[0] != "0"

    four = config_from_dict({**cfg.model_dump(mode="json"), "evaluate": {
        **cfg.evaluate.model_dump(mode="json"), "candidates": ["teacher", "student", "compressed", "compressed_int8"]}})
    scored = evaluate.run(four, prepared, teacher_dir, tmp_path / "student", None, tmp_path / "eval",
                          tmp_path / "compressed")
    assert list(scored.metrics) == ["teacher", "student", "compressed", "compressed_int8"]
    assert scored.metrics["compressed"]["parameters"] == card["parameters"]
    assert scored.metrics["compressed_int8"]["size_mb"] < scored.metrics["compressed"]["size_mb"]
    # the audit audits the compressed student too, against the same teacher, as its own verdict
    report = audit.run(cfg, tmp_path / "eval" / "predictions.parquet", tmp_path / "audit", teacher_dir,
                       tmp_path / "student", None, tmp_path / "compressed")
    assert set(report.compressed) == {"passed", "reasons", "worst"} and report.compressed["reasons"]
    assert read_json(tmp_path / "audit" / "audit.json")["compressed"] == report.compressed


def test_a_heads_share_that_rounds_to_every_head_cuts_none_and_says_so(distilled, tmp_path):
    cfg, prepared, teacher_dir, outputs = distilled
    cfg = config_from_dict({**cfg.model_dump(mode="json"), "compress": {"heads_keep": 0.9, "ffn_keep": 1.0}})
    result = compress.run(cfg, prepared, teacher_dir, tmp_path / "student", outputs, tmp_path / "compressed")
    assert [s.step for s in result.steps] == ["student"]
    assert any("heads_keep 0.9 of 2 heads is 2, so none is cut" in why for why in result.skipped), result.skipped


def test_the_audit_asks_the_teacher_once_per_text():
    asked = []

    def predict(texts):
        asked.extend(texts)
        return np.array([[len(t), 1.0] for t in texts])

    remembered = audit.remembered(predict)
    first, again = remembered(["a", "bb", "a"]), remembered(["bb", "ccc"])
    assert asked == ["a", "bb", "ccc"]
    np.testing.assert_array_equal(first, [[1, 1], [2, 1], [1, 1]])
    np.testing.assert_array_equal(again, [[2, 1], [3, 1]])


def test_switched_off_the_stage_leaves_a_card_and_the_evaluation_leaves_it_out(distilled, tmp_path):
    cfg, prepared, teacher_dir, outputs = distilled
    off = config_from_dict({**cfg.model_dump(mode="json"), "compress": {"enabled": False}})
    result = compress.run(off, prepared, teacher_dir, tmp_path / "student", outputs, tmp_path / "compressed")
    assert not result.enabled and read_card(tmp_path / "compressed") == {
        "role": "compressed", "enabled": False, "why": "compress.enabled is false"}
    scored = evaluate.run(off, prepared, teacher_dir, tmp_path / "student", tmp_path / "student", tmp_path / "eval",
                          tmp_path / "compressed")
    assert "compressed" not in scored.metrics and "compressed_int8" not in scored.metrics


def _figures(accuracy: float, latency: float, size: float) -> dict:
    return {"accuracy": accuracy, "latency_p50_ms": latency, "size_mb": size}


@pytest.mark.parametrize("compressed, audit, passed, says", [
    (_figures(0.948, 0.2, 1.0), {"passed": True, "reasons": []}, True, "compressed audit passed"),
    (_figures(0.940, 0.2, 1.0), {"passed": True, "reasons": []}, False, "drop 0.010 (over the limit 0.005)"),
    (_figures(0.955, 0.2, 1.0), {"passed": True, "reasons": []}, True, "gain 0.005 (no drop; at most 0.005 allowed)"),
    (_figures(0.950, 0.5, 1.0), {"passed": True, "reasons": []}, False, "not an improvement"),
    (_figures(0.950, 0.2, 1.0), {"passed": False, "reasons": ["slice x drops"]}, False, "audit failed: slice x"),
    (_figures(0.950, 0.2, 1.0), None, False, "was not audited"),
])
def test_compression_gate(compressed, audit, passed, says):
    metrics = {"student": _figures(0.950, 0.4, 16.0), "compressed": compressed,
               "compressed_int8": _figures(0.949, 0.15, 0.3)}
    report = check_compression(metrics, audit, CompressConfig(max_accuracy_drop=0.005))
    assert report.passed is passed
    assert any(says in reason for reason in report.reasons), report.reasons


def test_compression_gate_without_a_compressed_student():
    registered, report = choose_compressed({"student": _figures(0.9, 1, 1)}, {}, CompressConfig())
    assert registered == "student" and not report.passed and "no compressed student" in report.reasons[0]


PASSED, FAILED = {"passed": True, "reasons": []}, {"passed": False, "reasons": ["slice label=x drops 0.2"]}


@pytest.mark.parametrize("int8, int8_audit, register_int8, registered, says", [
    # the INT8 model passes: it is registered, before the fp32 compressed student
    (_figures(0.949, 0.15, 0.3), PASSED, True, "compressed_int8", "its INT8 model (compressed_int8) is registered"),
    # it loses too much accuracy, or its own audit fails: the fp32 compressed student is the fallback
    (_figures(0.940, 0.15, 0.3), PASSED, True, "compressed", "compressed_int8 accuracy 0.940 vs student 0.950: drop"),
    (_figures(0.949, 0.15, 0.3), FAILED, True, "compressed", "compressed_int8 audit failed: slice label=x"),
    (_figures(0.949, 0.15, 0.3), None, True, "compressed", "its INT8 model was not audited"),
    # slower than the student: not an improvement, whatever its size
    (_figures(0.950, 0.45, 0.3), PASSED, True, "compressed", "compressed_int8 p50 latency 0.45 ms vs student 0.40 ms"),
    # switched off: reported, never registered
    (_figures(0.950, 0.15, 0.3), PASSED, False, "compressed", "evaluated, not registered: compress.register_int8"),
])
def test_the_compression_gate_chooses_the_int8_model_only_when_it_passes(int8, int8_audit, register_int8,
                                                                        registered, says):
    metrics = {"student": _figures(0.950, 0.4, 16.0), "compressed": _figures(0.948, 0.2, 4.0),
               "compressed_int8": int8}
    chosen, report = choose_compressed(metrics, {"compressed": PASSED, "compressed_int8": int8_audit},
                                       CompressConfig(max_accuracy_drop=0.005, register_int8=register_int8))
    assert chosen == registered and report.passed
    assert any(says in reason for reason in report.reasons), report.reasons
    assert report.reasons[-1].endswith(f"({registered}) is registered in the student's place")


def test_when_neither_compressed_model_passes_the_student_is_registered():
    metrics = {"student": _figures(0.950, 0.4, 16.0), "compressed": _figures(0.930, 0.2, 4.0),
               "compressed_int8": _figures(0.931, 0.15, 0.3)}
    chosen, report = choose_compressed(metrics, {"compressed": PASSED, "compressed_int8": PASSED}, CompressConfig())
    assert chosen == "student" and not report.passed
    assert report.reasons[-1] == "the student is registered (uncompressed)"
    assert sum("over the limit 0.005" in reason for reason in report.reasons) == 2


def test_a_student_continuing_from_a_compressed_model_is_not_pruned_again_but_gets_its_int8_model(distilled,
                                                                                                 tmp_path):
    from distill import sizing

    cfg, prepared, teacher_dir, outputs = distilled
    vocab = config_from_dict({**cfg.model_dump(mode="json"), "compress": {"vocabulary": True, "heads_keep": 0.5}})
    compress.run(vocab, prepared, teacher_dir, tmp_path / "student", outputs, tmp_path / "compressed")
    warm = config_from_dict({**cfg.model_dump(mode="json"), "student": {
        **cfg.student.model_dump(mode="json"), "warm_start": str(tmp_path / "compressed")},
        "evaluate": {**cfg.evaluate.model_dump(mode="json"), "runtime": "onnxruntime"}})  # INT8 needs the export
    sizing.run(warm, prepared, teacher_dir, outputs, tmp_path / "shape.json")
    students.run_student(warm, prepared, teacher_dir, outputs, tmp_path / "again", shape_file=tmp_path / "shape.json")
    card = read_card(tmp_path / "again")
    assert card["warm_start"]["compressed"] is True and card["parameters"] == read_card(tmp_path / "compressed")[
        "parameters"]
    result = compress.run(warm, prepared, teacher_dir, tmp_path / "again", outputs, tmp_path / "compressed_again")
    again = read_card(tmp_path / "compressed_again")
    assert result.enabled and [s.step for s in result.steps] == ["student"] and "pruned already" in result.skipped[0]
    assert again["parameters"] == card["parameters"] and again["compression"]["int8"]["step"] == "INT8 (dynamic)"
    assert (tmp_path / "compressed_again" / INT8_FILE).is_file()
    # its cut attention heads stayed cut through the warm start, the training and both saves
    assert again["student"]["heads_kept"] == 1 and load_classifier(tmp_path / "compressed_again").model.base_model.\
        encoder.layer[0].attention.self.all_head_size == cfg.student.hidden_size // 2
