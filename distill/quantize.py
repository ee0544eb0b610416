"""INT8 of a distilled classifier: ONNX Runtime's dynamic or static quantization, and quantization-aware
distillation before the static one.

- **dynamic**: int8 weights; each request's activations are scaled by their own range when it runs.
- **static**: int8 weights and fixed activation scales, calibrated (min / max) on distillation texts run
  one at a time, as requests come; the graph has QuantizeLinear / DequantizeLinear pairs around every
  matrix product with a weight and every embedding lookup, which ONNX Runtime runs as integer kernels.
- **qat**: before the static quantization the student distils again from the cached teacher outputs
  while its weights and the inputs of its linear layers are rounded the way that quantization rounds
  them (fake quantization with a straight-through gradient), so it learns weights that survive the
  rounding. The same calibration then makes the INT8 file from the trained weights.

The fake quantization mirrors :func:`quantize_static_onnx`: weights symmetric per tensor in 7 bits,
embedding tables and the inputs of products asymmetric unsigned over their range (calibrated, for inputs)
including 0; outputs and the products of two activations stay float. Only
torch's own fake-quantize operators are used (no ``torch.ao``), so nothing here is deprecated.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from distill.models import Classifier, encode

WEIGHT_LEVELS = 64  # 7-bit weights: reduce_range (see quantize_static_onnx), symmetric in [-64, 64]
TABLE_LEVELS = 127  # ... and embedding tables in [0, 127]
QUANTIZED_OPS = ["MatMul", "Gemm", "Gather"]  # products with a weight, and embedding lookups


def calibration_feeds(clf: Classifier, texts: list[str], count: int, max_length: int,
                      seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``count`` of ``texts`` (a seeded sample, in their order), each encoded alone (batch 1, no padding), as a
    served request is."""
    chosen = np.sort(np.random.default_rng(seed).permutation(len(texts))[:count])
    return [{k: v.numpy().astype(np.int64) for k, v in encode(clf.tokenizer, [texts[i]], max_length).items()}
            for i in chosen]


class _SkippedTensors(logging.Filter):
    """ONNX Runtime's quantizer logs, on the root logger, every tensor it leaves in float (index and shape
    tensors) with the tensor's whole type: pages of protobuf text in a stage's log that ask nothing of anyone."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Inference failed or unsupported type to quantize")


@contextmanager
def quiet_quantizer():
    """Leave out ONNX Runtime's quantizer's notes on the tensors it does not quantize (see _SkippedTensors)."""
    notes = _SkippedTensors()
    root = logging.getLogger()
    root.addFilter(notes)
    try:
        yield
    finally:
        root.removeFilter(notes)


@contextmanager
def prepared_graph(source: Path | str, target: Path | str) -> Iterator[Path]:
    """``source`` after ONNX Runtime's recommended pre-processing for quantization (shape inference, graph
    optimisation), in a scratch file beside ``target``, with the quantizer's notes left out."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(dir=Path(target).parent) as scratch, quiet_quantizer():
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        yield prepared


def quantize_onnx(source: Path | str, target: Path | str) -> None:
    """ONNX Runtime's dynamic INT8 quantization of ``source`` (int8 weights of MatMul / Gemm, activations
    quantized per batch), after its recommended pre-processing."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with prepared_graph(source, target) as prepared:
        quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8)


def quantize_static_onnx(source: Path | str, target: Path | str, feeds: list[dict[str, np.ndarray]]) -> None:
    """ONNX Runtime's static INT8 quantization of ``source`` (QDQ format: uint8 activations with scales
    calibrated on ``feeds`` by min / max, symmetric weights), after its recommended pre-processing.

    The weights use 7 of their 8 bits (``reduce_range``): on x86 CPUs without VNNI, ONNX Runtime's integer
    kernels add pairs of uint8 x int8 products in 16 bits, which full-range weights overflow. Measured on
    this project's CPU: with 8-bit weights the fused model's logits moved 10x further from the same
    graph run unfused than with 7 bits, where the two agree exactly. The file must serve right on any CPU."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    if not feeds:
        raise ValueError("static INT8 needs calibration texts; none were given")

    class Reader(CalibrationDataReader):
        def __init__(self, names: list[str]):
            self.feeds = iter([{name: feed[name] for name in names} for feed in feeds])

        def get_next(self):
            return next(self.feeds, None)

    with prepared_graph(source, target) as prepared:
        names, nodes = weight_nodes(prepared)
        quantize_static(str(prepared), str(target), Reader(names), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=QUANTIZED_OPS, nodes_to_quantize=nodes,
                        per_channel=False, reduce_range=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8,
                        extra_options={"OpTypesToExcludeOutputQuantization": QUANTIZED_OPS})


def weight_nodes(path: Path | str) -> tuple[list[str], list[str]]:
    """The graph's input names, and its products with a weight and its embedding lookups: the nodes that static
    INT8 quantizes, their weight and (for products) their input; the products of two activations (attention's
    scores and mixing) and every node's output stay float, as the fake quantization assumes."""
    import onnx

    graph = onnx.load(str(path)).graph
    weights = {init.name for init in graph.initializer}
    weight_input = {"MatMul": 1, "Gemm": 1, "Gather": 0}
    return ([i.name for i in graph.input if i.name not in weights],
            [node.name for node in graph.node
             if node.op_type in weight_input and node.input[weight_input[node.op_type]] in weights])


class FakeQuantWeight(nn.Module):
    """A weight parametrization: the weight as static INT8 stores it. A product's weight: symmetric 7-bit in
    [-64, 64] (``reduce_range``, see :func:`quantize_static_onnx`), scale max |w| / 64. An embedding table
    (``table``): ONNX Runtime quantizes a lookup's data as an activation, asymmetric over the table's range,
    in [0, 127]."""

    def __init__(self, table: bool = False):
        super().__init__()
        self.table = table
        self.enabled = True  # off while calibrating: ONNX Runtime calibrates the float model

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return weight
        if self.table:
            scale, zero = uint8_qparams(float(weight.detach().min()), float(weight.detach().max()), TABLE_LEVELS)
            return torch.fake_quantize_per_tensor_affine(weight, scale, zero, 0, TABLE_LEVELS)
        with torch.no_grad():
            scale = (weight.abs().max() / WEIGHT_LEVELS).clamp_min(1e-12).float()
        return torch.fake_quantize_per_tensor_affine(weight, scale, torch.zeros((), dtype=torch.int32),
                                                     -WEIGHT_LEVELS, WEIGHT_LEVELS)


def uint8_qparams(low: float, high: float, levels: int = 255) -> tuple[float, int]:
    """Scale and zero point of asymmetric uint8 in [0, levels] over [low, high] widened to hold 0 (ONNX
    Runtime's rule)."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max((high - low) / levels, 1e-12)
    return scale, int(np.clip(round(-low / scale), 0, levels))


class InputQuantizer:
    """Forward pre-hooks on linear layers: record their inputs' min / max over the calibration feeds, or
    fake-quantize the inputs with the scales of those ranges (``ranges``: layer id -> [min, max])."""

    def __init__(self, model: nn.Module, layers: list[nn.Linear], weights: list[FakeQuantWeight],
                 feeds: list[dict[str, np.ndarray]]):
        self.model, self.layers, self.weights, self.feeds = model, layers, weights, feeds
        self.ranges: dict[int, list[float]] = {}
        self.qparams: dict[int, tuple[float, int]] = {}  # from the ranges, once per calibration
        self.quantize = False
        self.hooks = [layer.register_forward_pre_hook(self._hook) for layer in layers]

    def _hook(self, module: nn.Module, args: tuple) -> tuple | None:
        x = args[0]
        key = id(module)
        if not self.quantize:
            low, high = float(x.detach().min()), float(x.detach().max())
            seen = self.ranges.setdefault(key, [low, high])
            seen[0], seen[1] = min(seen[0], low), max(seen[1], high)
            return None
        scale, zero = self.qparams[key]
        return (torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255), *args[1:])

    @torch.no_grad()
    def calibrate(self) -> None:
        """Min / max of every layer's input over the feeds, on the float model (as ONNX Runtime calibrates)."""
        model, feeds = self.model, self.feeds
        was_training, self.quantize, self.ranges = model.training, False, {}
        device = next(model.parameters()).device
        model.eval()
        for weight in self.weights:
            weight.enabled = False
        try:
            for feed in feeds:
                model(**{k: torch.from_numpy(v).to(device) for k, v in feed.items()})
        finally:
            model.train(was_training)
            self.qparams = {key: uint8_qparams(*bounds) for key, bounds in self.ranges.items()}
            self.quantize = True
            for weight in self.weights:
                weight.enabled = True

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()


@contextmanager
def quantization_aware(model: nn.Module, feeds: list[dict[str, np.ndarray]]) -> Iterator[InputQuantizer]:
    """Inside, ``model`` computes as its static INT8 version would: weights of its linear and embedding
    layers and the inputs of its linear layers are fake-quantized (activation ranges calibrated on
    ``feeds``). Yields the inputs' quantizer: its ``calibrate()`` measures the ranges again (the weights move
    while training). On exit the model has its float weights (the trained ones) and no hooks."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    weights = [FakeQuantWeight() for _ in linears] + [FakeQuantWeight(table=True) for _ in embeddings]
    inputs = InputQuantizer(model, linears, weights, feeds)
    try:
        for layer, weight in zip(linears + embeddings, weights):
            parametrize.register_parametrization(layer, "weight", weight)
        inputs.calibrate()
        yield inputs
    finally:
        inputs.remove()
        for layer in linears + embeddings:
            if parametrize.is_parametrized(layer, "weight"):
                parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
