"""TorchScript tracing of a Hugging Face sequence classifier, with torch alone.

Dependency-free (no distill, no transformers import) because the served model ships this file
beside its pyfunc (``log_model(code_paths=...)``): ``mlflow models serve`` then runs the same traced
path the evaluation timed, whether or not distill is installed where it serves.
``distill.runtime`` builds on it.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from torch import nn


class TracedOutput(NamedTuple):
    """What a traced classifier returns: ``.logits`` like the Hugging Face output (without its per-call cost)."""

    logits: torch.Tensor


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

    def forward(self, **inputs: torch.Tensor) -> TracedOutput:
        if not inputs.keys() <= self._names:
            raise TypeError(f"the trace takes {self.input_names}, not {sorted(set(inputs) - self._names)}")
        out = self.traced(**inputs)
        return TracedOutput(out["logits"] if isinstance(out, dict) else out[0])


def trace_model(model: nn.Module, example: dict[str, torch.Tensor], check: dict[str, torch.Tensor],
                atol: float = 1e-4) -> tuple[TracedClassifier | None, str]:
    """A frozen TorchScript trace of ``model`` (CPU, eval) from the encoded ``example`` batch, checked on the
    padded ``check`` batch: (the traced model, "") or (None, why the eager model should be kept)."""
    model = model.to("cpu").eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about shape checks the trace fixes in place
            traced = torch.jit.trace(model, example_kwarg_inputs=dict(example), strict=False, check_trace=False)
            traced = torch.jit.freeze(traced)
            wrapped = TracedClassifier(traced, list(example), model)
            diff = (wrapped(**check).logits - model(**check).logits).abs().max().item()
    except (RuntimeError, TypeError, ValueError) as exc:
        return None, f"TorchScript trace failed ({exc}); keeping the eager model"
    if not diff <= atol:
        return None, f"TorchScript trace differs from the eager model by {diff:.2g} (> {atol:.0g}); keeping the eager model"
    return wrapped, ""
