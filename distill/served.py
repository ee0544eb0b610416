"""The serving runtime of a classifier: its ONNX export, run by ONNX Runtime, fp32 or INT8.

A small student spends most of a batch-1 request outside its arithmetic: the Hugging Face forward walks
its modules in Python, builds masks and output objects. ONNX Runtime runs the exported graph (fused by
its optimizer) without them, so small models gain most. The export (``torch.onnx.export``, the
``torch.export`` based exporter) is checked against the eager model on a padded batch of several lengths
before it is kept; its INT8 versions are made by ``distill.quantize``.

Dependency-light (torch, numpy and onnxruntime; no distill, no transformers) because the served model
ships this file beside its pyfunc (``log_model(code_paths=...)``): ``mlflow models serve`` then runs the
very ``model.onnx`` the evaluation timed, whether or not distill is installed where it serves.
``distill.runtime`` builds on it.
"""

from __future__ import annotations

import copy
import inspect
import logging
import os
import warnings
import weakref
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

ONNX_FILE = "model.onnx"  # beside the weights in a model folder distill saved
INT8_FILE = "model-int8.onnx"  # beside it where the compress stage made the INT8 model (distill.quantize)
# the file a registered version serves, by its precision (the pyfunc's model_config ``onnx_file``)
SERVED_FILES = {"fp32": ONNX_FILE, "int8": INT8_FILE}
OPSET = 18
# torch's own exporter deep-copies its pytree specs inside ExportedProgram.run_decompositions, and the copy
# trips torch's own deprecation of the LeafSpec class (pytorch/pytorch#167470 removed the same message from
# another torch path). Nothing distill calls is deprecated; this one message, and only it, is not shown.
_TORCH_INTERNAL = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


class ServedOutput(NamedTuple):
    """What a served classifier returns: ``.logits`` like the Hugging Face output."""

    logits: torch.Tensor


class OnnxClassifier(nn.Module):
    """An ONNX Runtime session called like the Hugging Face classifier: ``model(**encoded).logits``.

    CPU only; the eager module it was exported from (if any) stays reachable as ``.eager`` for what
    needs torch (GPU timing, activation memory), outside the module tree.
    """

    def __init__(self, path: Path | str, threads: int | None = None, eager: nn.Module | None = None,
                 config=None):
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or 0)  # 0: ONNX Runtime's default (one per core)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: a graph ORT optimises further is not news to users
        self.path = str(path)
        self.size_bytes = Path(path).stat().st_size  # the file may be a scratch copy that goes once loaded
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self._eager = [eager]  # a list keeps it out of the module tree (and out of .parameters())
        self.config = config if config is not None else getattr(eager, "config", None)

    @property
    def eager(self) -> nn.Module | None:
        return self._eager[0]

    def forward(self, **inputs: torch.Tensor) -> ServedOutput:
        """Logits for the encoded batch; inputs the graph does not take (the eager model did not use them:
        the export was checked with them) are left out."""
        missing = set(self.input_names) - set(inputs)
        if missing:
            raise TypeError(f"{self.path} needs {self.input_names}; {sorted(missing)} not given")
        feed = {name: np.ascontiguousarray(inputs[name].detach().cpu().numpy(), dtype=np.int64)
                for name in self.input_names}
        return ServedOutput(torch.from_numpy(self.session.run(None, feed)[0]))


def export_onnx(model: nn.Module, example: dict[str, torch.Tensor], path: Path | str) -> None:
    """Export ``model`` (a CPU copy, eval) to ``path`` with dynamic batch and sequence axes."""
    # the exporter lists the torchvision operators it cannot register: nothing a text classifier uses
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    cpu = model if next(model.parameters()).device.type == "cpu" else copy.deepcopy(model).to("cpu")
    cpu.eval()
    # a tokenizer may give more than the model's forward names (token types to a DistilBERT, which takes
    # **kwargs and ignores them): the graph takes the named ones
    named = inspect.signature(cpu.forward).parameters
    example = {k: v.to("cpu") for k, v in example.items() if k in named}
    # the first input names the axes; the others share them (torch.export finds the equal sizes itself)
    names = {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")}
    shared = {0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_TORCH_INTERNAL, category=FutureWarning)
        program = torch.onnx.export(cpu, args=(), kwargs=example, dynamo=True, opset_version=OPSET,
                                    dynamic_shapes={k: names if i == 0 else shared for i, k in enumerate(example)},
                                    input_names=list(example), output_names=["logits"], verbose=False,
                                    optimize=False)  # ONNX Runtime optimises the graph when it loads it
    program.save(str(path))


def largest_difference(served: nn.Module, eager: nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """Largest absolute logit difference between two models on one (padded) batch."""
    with torch.inference_mode():
        return float((served(**batch).logits - eager.to("cpu").eval()(**batch).logits).abs().max())


def exported(model: nn.Module, example: dict[str, torch.Tensor], check: dict[str, torch.Tensor],
             path: Path | str, threads: int | None = None, atol: float = 1e-4) -> tuple[OnnxClassifier | None, str]:
    """Export ``model`` to ``path`` and check it on the padded ``check`` batch: (the served model, "") or
    (None, why the eager model should be kept); a failed or differing export leaves no file behind."""
    path = Path(path)
    try:
        export_onnx(model, example, path)
        served = OnnxClassifier(path, threads, eager=model)
        diff = largest_difference(served, model, check)
    except Exception as exc:  # the exporter raises many kinds (torch.export, onnxscript, onnxruntime)
        path.unlink(missing_ok=True)
        cause = exc
        while cause.__cause__ is not None:  # the exporter wraps the error that says what went wrong
            cause = cause.__cause__
        first = (str(cause).strip().splitlines() or [""])[0][:300]
        return None, f"ONNX export failed ({type(cause).__name__}: {first})"
    if not diff <= atol:
        path.unlink(missing_ok=True)
        return None, f"the ONNX export differs from the eager model by {diff:.2g} (> {atol:.0g})"
    return served, ""


def session_threads(requested: int | None = None) -> int:
    """Threads for a served model: DISTILL_SERVE_THREADS where it is set, else ``requested`` (the thread count
    the evaluation timed with), else 1; never more than the CPUs this process may use."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    wanted = int(os.environ.get("DISTILL_SERVE_THREADS", "0") or 0) or requested or 1
    return max(1, min(int(wanted), available))


_SINGLE_ENCODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def single_text_encoder(tokenizer, max_length: int, probe: str):
    """A batch-1 encoder on a private copy of ``tokenizer``'s Rust backend, or None where there is none.

    The copy truncates like the tokenizer's own call (``max_length``, its truncation side). On first
    use it is checked against the tokenizer's own output for ``probe``; a tokenizer whose call does
    more than its backend (Python-side preprocessing) fails the check and keeps the ordinary path.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    try:
        known = _SINGLE_ENCODERS.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable
        return None
    if max_length in known:
        return known[max_length]
    from tokenizers import Tokenizer

    private = Tokenizer.from_str(backend.to_str())
    private.no_padding()
    private.enable_truncation(max_length, direction=getattr(tokenizer, "truncation_side", "right"))
    names = list(getattr(tokenizer, "model_input_names", []))
    fields = {"input_ids": "ids", "token_type_ids": "type_ids", "attention_mask": "attention_mask"}

    def single(text: str) -> dict[str, torch.Tensor]:
        encoding = private.encode(text)
        # through numpy: a third of the time torch.tensor takes on a list of ints
        return {name: torch.from_numpy(np.array([getattr(encoding, fields[name])], dtype=np.int64)) for name in names}

    usable = bool(names) and set(names) <= set(fields)
    if usable:
        expected = tokenizer([probe], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        got = single(probe)
        usable = set(got) == set(expected) and all(
            got[k].dtype == expected[k].dtype and torch.equal(got[k], expected[k]) for k in got)
    known[max_length] = single if usable else None
    return known[max_length]
