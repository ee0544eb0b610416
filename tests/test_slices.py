"""The one scorer of a model on labelled slices."""

import pandas as pd

from distill.slices import classifier_predict, slice_accuracy


def test_accuracy_per_slice_with_sizes_and_empty_slices_left_out():
    answers = {"lights on": "on", "lights off": "off", "dim": "on", "7": "7"}
    slices = {"gold": pd.DataFrame({"text": ["lights on", "lights off", "dim"], "label": ["on", "off", "dim"]}),
              "empty": pd.DataFrame({"text": [], "label": []}),
              "numbers": pd.DataFrame({"text": [7], "label": [7]})}  # compared as text, as the registry serves
    scores = slice_accuracy(lambda texts: [answers[t] for t in texts], slices)
    assert scores == {"gold": {"accuracy": 2 / 3, "n": 3}, "numbers": {"accuracy": 1.0, "n": 1}}


def test_a_classifier_scores_as_its_own_argmax(tiny_teacher):
    from distill.models import load_classifier, predict_logits

    clf = load_classifier(tiny_teacher)
    texts = ["turn on the light", "what time is it", "play some jazz"]
    expected = [clf.labels[i] for i in predict_logits(clf, texts, 2, 32).argmax(axis=1)]
    assert classifier_predict(clf, 2, 32)(texts) == expected
    frame = pd.DataFrame({"text": texts, "label": [expected[0], "nope", expected[2]]})
    assert slice_accuracy(classifier_predict(clf, 2, 32), {"s": frame})["s"] == {"accuracy": 2 / 3, "n": 3}
