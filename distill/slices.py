"""Accuracy of a model on labelled slices: the one scorer behind every champion / challenger comparison.

A slice is a frame with ``text`` and ``label`` columns (the gold test set, the shifted hold-out of
drifted traffic, ...). A model is anything that turns a list of texts into a list of labels: a
classifier folder loaded here, or a registered pyfunc (the tasks layer wraps it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from distill.models import Classifier, predict_logits

Predict = Callable[[list[str]], Sequence[str]]


def classifier_predict(clf: Classifier, batch_size: int, max_length: int) -> Predict:
    """A classifier as a texts -> labels function, at the input length it was trained for."""
    def predict(texts: list[str]) -> list[str]:
        logits = predict_logits(clf, texts, batch_size, max_length)
        return [clf.labels[i] for i in logits.argmax(axis=1)]

    return predict


def slice_accuracy(predict: Predict, slices: Mapping[str, pd.DataFrame]) -> dict[str, dict[str, float]]:
    """``{name: {"accuracy": a, "n": rows}}`` for every non-empty slice; empty slices are left out."""
    out = {}
    for name, frame in slices.items():
        if len(frame):
            predicted = np.asarray([str(p) for p in predict(frame["text"].astype(str).tolist())])
            out[name] = {"accuracy": float((predicted == frame["label"].astype(str).to_numpy()).mean()),
                         "n": len(frame)}
    return out
