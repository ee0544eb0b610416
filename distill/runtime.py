"""Serving runtimes for classifiers: eager PyTorch, or ONNX Runtime on the model's ONNX export.

A model folder distill saved holds its export (``model.onnx``, checked against the eager model when it
was written); a folder from elsewhere (a teacher given by ``teacher.path``, a model saved before exports)
is exported into a scratch folder when it is served. The export and the session are
``distill.served`` (torch and onnxruntime only), which the served pyfunc ships and runs too.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Literal

from torch import nn

from distill.models import Classifier, ModelError, export_into, load_classifier
from distill.quantize import quantize_onnx
from distill.served import INT8_FILE, ONNX_FILE, SERVED_FILES, OnnxClassifier

__all__ = ["Runtime", "OnnxClassifier", "eager_model", "load_served", "onnx_classifier", "quantized_classifier",
           "with_runtime"]

Runtime = Literal["eager", "onnxruntime"]
log = logging.getLogger(__name__)


def onnx_classifier(clf: Classifier, folder: Path | None, threads: int, texts: list[str],
                    max_length: int) -> Classifier:
    """``clf`` served by ONNX Runtime from ``folder``'s export, or exported now into a scratch folder when
    the folder has none; ``clf`` itself (eager) when the export fails or changes the outputs."""
    existing = Path(folder) / ONNX_FILE if folder is not None else None
    if existing is not None and existing.is_file():
        return Classifier(OnnxClassifier(existing, threads, eager=clf.model), clf.tokenizer, clf.labels)
    with tempfile.TemporaryDirectory(prefix="distill-onnx-") as scratch:
        served, _ = export_into(clf, Path(scratch), max_length, texts, threads)  # a failure is logged there
        # the session holds the graph in memory: the scratch file may go
    return clf if served is None else Classifier(served, clf.tokenizer, clf.labels)


def quantized_classifier(clf: Classifier, folder: Path | None, threads: int, texts: list[str],
                         max_length: int) -> tuple[Classifier, int]:
    """The INT8 model and its size in bytes on disk: the one the folder's stage made (``model-int8.onnx``, see
    ``distill.quantize``), else ONNX Runtime's dynamic quantization of the folder's export, or of one made now.
    INT8 is served by ONNX Runtime whatever ``evaluate.runtime`` says."""
    made = Path(folder) / INT8_FILE if folder is not None else None
    if made is not None and made.is_file():
        model = OnnxClassifier(made, threads, eager=clf.model)
        return Classifier(model, clf.tokenizer, clf.labels), model.size_bytes
    with tempfile.TemporaryDirectory(prefix="distill-int8-") as scratch:
        source = Path(folder) / ONNX_FILE if folder is not None else None
        if source is None or not source.is_file():
            source = Path(scratch) / ONNX_FILE
            served, why = export_into(clf, Path(scratch), max_length, texts)
            if served is None:
                raise RuntimeError(f"{folder or 'the model'}: {why}, so it has no INT8 version; drop the *_int8 "
                                   "candidates from evaluate.candidates")
        target = Path(scratch) / "model-int8.onnx"
        quantize_onnx(source, target)
        model = OnnxClassifier(target, threads, eager=clf.model)  # the session holds the graph: the file may go
    return Classifier(model, clf.tokenizer, clf.labels), model.size_bytes


def load_served(folder: Path, precision: str = "fp32", threads: int = 1,
                labels: list[str] | None = None) -> Classifier:
    """A model folder answering as its version registered at ``precision`` does: fp32, its weights (eager, as the
    audit and the hold-out scoring have always read them); int8, the INT8 model its compress stage made, on
    ONNX Runtime (the file that version's pyfunc serves)."""
    clf = load_classifier(Path(folder), labels)
    if precision == "fp32":
        return clf
    path = Path(folder) / SERVED_FILES[precision]
    if not path.is_file():
        raise ModelError(f"{folder} has no {path.name}: it has no {precision} model to serve (the compress stage "
                         "writes it; run `dvc repro compress_student`)")
    return Classifier(OnnxClassifier(path, threads, eager=clf.model), clf.tokenizer, clf.labels)


def with_runtime(clf: Classifier, runtime: Runtime, texts: list[str], max_length: int,
                 folder: Path | None = None, threads: int = 1) -> Classifier:
    """``clf`` in the requested runtime (ONNX Runtime on CPU; the eager model when ``runtime`` is eager)."""
    if runtime == "onnxruntime":
        return onnx_classifier(clf, folder, threads, texts, max_length)
    return clf


def eager_model(model: nn.Module) -> nn.Module:
    """The eager module behind a served one (or the module itself)."""
    if isinstance(model, OnnxClassifier):
        if model.eager is None:
            raise TypeError(f"{model.path} was loaded without its eager model")
        return model.eager
    return model
