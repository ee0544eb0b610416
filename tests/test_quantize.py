"""INT8 after distillation: static quantization, the fake quantization that mirrors it, and the compress
stage's INT8 model (dynamic, static, quantization-aware) that the evaluation serves."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from distill import compress, evaluate, model_card, students
from distill.config import config_from_dict
from distill.models import encode, load_classifier, read_card
from distill.quantize import TABLE_LEVELS, calibration_feeds, quantization_aware, quantize_static_onnx, uint8_qparams
from distill.served import INT8_FILE, ONNX_FILE, OnnxClassifier

TEXTS = ["turn on the kitchen lights", "what is the temperature in the bedroom", "pause the music please",
         "set a timer for ten minutes", "is the front door locked", "play jazz in the living room",
         "turn off the fan", "open the garage door"]


def _ops(path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def _dequantized_initializers(path) -> tuple[list[np.ndarray], set[tuple[float, int]]]:
    """The INT8 file's stored weights and tables, dequantized, and the (scale, zero point) of its activations."""
    graph = onnx.load(str(path)).graph
    inits = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    weights, activations = [], set()
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits and inits[node.input[0]].ndim == 2:
            zero = inits[node.input[2]].astype(np.float64) if len(node.input) > 2 else 0.0
            weights.append((inits[node.input[0]].astype(np.float64) - zero) * inits[node.input[1]])
        elif node.op_type == "QuantizeLinear" and node.input[0] not in inits:
            activations.add((round(float(inits[node.input[1]]), 7), int(inits[node.input[2]])))
    return weights, activations


def test_fake_quantization_rounds_as_the_static_int8_model_stores(tiny_teacher, tmp_path):
    clf = load_classifier(tiny_teacher)
    feeds = calibration_feeds(clf, TEXTS, len(TEXTS), 32)
    quantize_static_onnx(tiny_teacher / ONNX_FILE, tmp_path / "int8.onnx", feeds)
    ops = _ops(tmp_path / "int8.onnx")
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "DynamicQuantizeLinear" not in ops  # fixed scales
    stored, scales = _dequantized_initializers(tmp_path / "int8.onnx")
    model = clf.model.eval()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    tables = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    assert len(stored) == len(linears) + len(tables)  # every product with a weight, every lookup; nothing else
    with quantization_aware(model, feeds) as inputs:
        fake = [m.weight.detach().double().numpy() for m in linears + tables]
        ranges = list(inputs.ranges.values())
    # each stored weight is one of the model's weights exactly as the fake quantization rounds it
    for weight in stored:
        assert any(w.shape == weight.shape and np.allclose(w, weight, atol=1e-7) or
                   w.T.shape == weight.shape and np.allclose(w.T, weight, atol=1e-7) for w in fake)
    # the inputs' scales and zero points are the calibrated ones (lookups' outputs keep their table's)
    bounds = [(float(t.weight.detach().min()), float(t.weight.detach().max())) for t in tables]
    table_scales = {(round(s, 7), z) for s, z in (uint8_qparams(low, high, TABLE_LEVELS) for low, high in bounds)}
    assert {(round(s, 7), z) for s, z in (uint8_qparams(*r) for r in ranges)} | table_scales == scales
    batch = dict(encode(clf.tokenizer, TEXTS, 32))
    with torch.inference_mode():
        float_logits = model(**batch).logits
    with quantization_aware(model, feeds), torch.inference_mode():
        assert not torch.equal(model(**batch).logits, float_logits)
    with torch.inference_mode():
        assert torch.equal(model(**batch).logits, float_logits)  # back to float, weights untouched


def test_quantization_aware_training_leaves_float_weights_and_no_hooks(tiny_teacher):
    clf = load_classifier(tiny_teacher)
    before = {k: v.clone() for k, v in clf.model.state_dict().items()}
    feeds = calibration_feeds(clf, TEXTS, 4, 32)
    batch = dict(encode(clf.tokenizer, TEXTS, 32))
    optimizer = torch.optim.SGD(clf.model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # no torch.ao: nothing deprecated is called
        with quantization_aware(clf.model.train(), feeds) as inputs:
            loss = clf.model(**batch).logits.logsumexp(dim=1).mean()
            loss.backward()  # the straight-through gradient reaches the float weights
            optimizer.step()
            inputs.calibrate()
    after = clf.model.state_dict()
    assert set(after) == set(before)  # plain weights again, no parametrization keys
    assert not clf.model._forward_pre_hooks and not any(m._forward_pre_hooks for m in clf.model.modules())
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.endswith("query.weight") for k in moved) and any("word_embeddings" in k for k in moved)


@pytest.fixture
def served_cfg(tiny_cfg):
    """The tiny project with ONNX exports (the stages export what they save) and one compression step."""
    params = tiny_cfg.model_dump(mode="json")
    return lambda **compress_section: config_from_dict({
        **params, "evaluate": {**params["evaluate"], "runtime": "onnxruntime",
                               "candidates": ["teacher", "student", "compressed", "compressed_int8"]},
        "compress": {**params["compress"], "recovery_epochs": 1, **compress_section}})


@pytest.mark.parametrize("mode, kernel", [("dynamic", "DynamicQuantizeLinear"), ("qat", "QuantizeLinear")])
def test_the_compress_stage_writes_the_int8_model_the_evaluation_serves(served_cfg, labelled, tmp_path, mode,
                                                                        kernel):
    cfg = served_cfg(int8=mode, qat_epochs=1, calibration_texts=8)
    prepared, teacher_dir, outputs = labelled
    students.run_student(cfg, prepared, teacher_dir, outputs, tmp_path / "student")
    result = compress.run(cfg, prepared, teacher_dir, tmp_path / "student", outputs, tmp_path / "compressed")
    names = [s.step for s in result.steps]
    assert result.int8.step == f"INT8 ({mode})" and result.int8.step not in names  # the fp32 model is registered
    assert ("quantization-aware distillation" in names) == (mode == "qat")
    int8 = tmp_path / "compressed" / INT8_FILE
    assert kernel in _ops(int8)
    card = read_card(tmp_path / "compressed")
    assert [s["step"] for s in card["compression"]["steps"]] == names
    assert card["compression"]["int8"]["size_mb"] == pytest.approx(int8.stat().st_size / 2**20, abs=1e-3)
    assert f"INT8 ({mode})" in model_card.compression_section(card, None)

    scored = evaluate.run(cfg, prepared, teacher_dir, tmp_path / "student", None, tmp_path / "eval",
                          tmp_path / "compressed")
    # the evaluation's compressed_int8 is the stage's file, not a quantization of its own
    assert scored.metrics["compressed_int8"]["size_mb"] == pytest.approx(int8.stat().st_size / 2**20, abs=1e-3)
    candidate = evaluate.load_candidates({"compressed": tmp_path / "compressed"}, ["compressed_int8"])[0]
    assert candidate.clf.model.path == str(int8)


def test_without_an_export_the_stage_says_the_evaluation_quantizes(served_cfg, labelled, tmp_path):
    cfg = served_cfg(int8="static")
    cfg = config_from_dict({**cfg.model_dump(mode="json"), "evaluate": {
        **cfg.evaluate.model_dump(mode="json"), "runtime": "eager"}})
    prepared, teacher_dir, outputs = labelled
    students.run_student(cfg, prepared, teacher_dir, outputs, tmp_path / "student")
    result = compress.run(cfg, prepared, teacher_dir, tmp_path / "student", outputs, tmp_path / "compressed")
    assert not (tmp_path / "compressed" / INT8_FILE).exists()
    assert any(s.startswith("INT8 (static): no ONNX export") for s in result.skipped)
    assert read_card(tmp_path / "compressed")["compression"]["skipped"] == result.skipped


def test_static_quantization_needs_calibration_texts(tiny_teacher, tmp_path):
    with pytest.raises(ValueError, match="calibration texts"):
        quantize_static_onnx(tiny_teacher / ONNX_FILE, tmp_path / "int8.onnx", [])
    assert not (tmp_path / "int8.onnx").exists()
