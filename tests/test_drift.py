"""Tests for monitoring.drift: descriptors, report output and false-alarm / detection behaviour.

The drift scenario mirrors the pipeline: a reference of 3000 transfer-set inputs and production
windows of 200 requests.  The synthetic data come from a small template grammar with 40 intent
labels (imbalanced label mix, ~7% prediction errors, confidence from a beta distribution).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monitoring.drift import DESCRIPTOR_COLUMNS, DriftResult, describe_texts, detect_drift, reference_vocabulary

# --------------------------------------------------------------------------- synthetic traffic

SLOTS: dict[str, list[str]] = {
    "device": ["light", "lamp", "fan", "heater", "tv", "radio", "speaker", "kettle", "dishwasher", "coffee maker"],
    "room": ["kitchen", "living room", "bedroom", "bathroom", "office", "garage", "hallway", "basement"],
    "color": ["red", "blue", "green", "warm white", "purple", "orange", "yellow", "pink"],
    "city": ["paris", "london", "berlin", "tokyo", "madrid", "rome", "oslo", "lisbon"],
    "n": [str(i) for i in range(1, 61)],
    "time": ["7 am", "noon", "6 pm", "midnight", "8:30", "9 pm", "6:45"],
    "name": ["alice", "bob", "carol", "dave", "erin", "frank"],
    "genre": ["jazz", "rock", "classical", "pop", "lofi"],
    "item": ["milk", "eggs", "bread", "coffee", "apples", "rice"],
    "door": ["front", "back", "side", "garage"],
    "scene": ["movie", "dinner", "relax", "party", "reading"],
    "speed": ["low", "medium", "high"],
    "task": ["water the plants", "take out the trash", "call mom", "feed the cat"],
}

INTENTS: dict[str, list[str]] = {
    "turn_on": ["turn on the {device} in the {room}", "switch on the {room} {device}"],
    "turn_off": ["turn off the {device} in the {room}", "switch off the {device}"],
    "set_brightness": ["set the {room} lights to {n} percent", "dim the {room} lights to {n}%"],
    "set_color": ["make the {room} lights {color}", "change the {device} color to {color}"],
    "set_temperature": ["set the thermostat to {n} degrees", "make it {n} degrees in the {room}"],
    "get_temperature": ["what is the temperature in the {room}", "how warm is it in the {room}"],
    "weather": ["what's the weather in {city}", "will it rain in {city} tomorrow"],
    "set_timer": ["set a timer for {n} minutes", "start a {n} minute timer"],
    "cancel_timer": ["cancel the timer", "stop the {n} minute timer"],
    "timer_status": ["how much time is left on the timer", "how long until the timer goes off"],
    "set_alarm": ["set an alarm for {time}", "wake me up at {time}"],
    "cancel_alarm": ["cancel my {time} alarm", "turn off the alarm"],
    "play_music": ["play {genre} music in the {room}", "play some {genre}"],
    "pause_music": ["pause the music", "pause the {room} speaker"],
    "next_track": ["next song", "skip this track"],
    "volume_up": ["turn the volume up", "louder please"],
    "volume_down": ["turn the volume down", "make the {room} speaker quieter"],
    "open_cover": ["open the {room} blinds", "raise the {room} shades"],
    "close_cover": ["close the {room} blinds", "lower the {room} shades"],
    "lock_door": ["lock the {door} door", "is the {door} door locked"],
    "unlock_door": ["unlock the {door} door", "open the {door} door lock"],
    "add_shopping": ["add {item} to my shopping list", "put {item} on the list"],
    "remove_shopping": ["remove {item} from my shopping list", "take {item} off the list"],
    "list_shopping": ["what's on my shopping list", "read my shopping list"],
    "add_todo": ["add {task} to my to do list", "remind me to {task}"],
    "get_time": ["what time is it", "tell me the time"],
    "get_date": ["what's the date today", "what day is it"],
    "call_contact": ["call {name}", "phone {name} please"],
    "send_message": ["send a message to {name}", "text {name} that i am late"],
    "start_vacuum": ["start the vacuum in the {room}", "vacuum the {room}"],
    "stop_vacuum": ["stop the vacuum", "send the vacuum home"],
    "garage_open": ["open the garage door", "open the garage"],
    "garage_close": ["close the garage door", "shut the garage"],
    "scene": ["activate the {scene} scene", "set the {scene} scene in the {room}"],
    "battery": ["what is the battery level of the {device}", "how much battery does the {device} have"],
    "fan_speed": ["set the {room} fan to {speed}", "turn the fan to {speed} speed"],
    "humidity": ["what is the humidity in the {room}", "how humid is the {room}"],
    "joke": ["tell me a joke", "say something funny"],
    "news": ["what's the news today", "read me the headlines"],
    "reminder": ["remind me to {task} at {time}", "set a reminder at {time} to {task}"],
}
LABELS = sorted(INTENTS)
assert len(LABELS) == 40

# Out-of-domain phrasings: unseen vocabulary, longer, more digits / punctuation.
SHIFTED_SLOTS: dict[str, list[str]] = {
    "thing": ["sauna", "jacuzzi", "espresso machine", "aquarium pump", "projector", "treadmill"],
    "place": ["conservatory", "wine cellar", "guest cottage", "greenhouse", "loft", "veranda"],
    "mood": ["stuffy", "chilly", "gloomy", "noisy", "humid", "dreary"],
    "n": [str(i) for i in range(100, 999)],
    "order": [f"#{i}-{j}" for i in range(1000, 1030) for j in range(10)],
    "month": ["january", "february", "march", "april", "may", "june"],
}
SHIFTED_A = [
    "hey there, could you possibly get the {thing} over in the {place} going? it is rather {mood} in here, thanks a lot!",
    "would you mind terribly switching the {thing} in my {place} to its eco programme before dinner, pretty please",
    "honestly the {place} feels {mood} again, can you sort out the {thing} and let me know when it's done",
]
SHIFTED_B = [
    "why was my card charged {n}.99 twice for order {order} on {month} {n}?? please refund asap!!",
    "my parcel {order} still hasn't arrived (tracking says {month} {n}) - where is it???",
    "invoice {order}: amount due ${n}.00, paid ${n}.50 on {month} 3rd; please reconcile & confirm.",
]


def _fill(template: str, slots: dict[str, list[str]], rng: np.random.Generator) -> str:
    out = template
    while "{" in out:
        start = out.index("{")
        end = out.index("}", start)
        key = out[start + 1 : end]
        if key not in slots:
            raise KeyError(key)
        out = out[:start] + str(rng.choice(slots[key])) + out[end + 1 :]
    return out


def _label_weights() -> np.ndarray:
    # Zipf-like imbalance, fixed (seed 123) assignment of weights to labels: rarest label ~1%.
    weights = 1.0 / np.arange(1, len(LABELS) + 1) ** 0.7
    weights = np.random.default_rng(123).permutation(weights)
    return weights / weights.sum()


def in_domain(n: int, seed: int) -> pd.DataFrame:
    """Traffic from the reference distribution."""
    rng = np.random.default_rng(seed)
    gold = rng.choice(LABELS, size=n, p=_label_weights())
    texts = [_fill(str(rng.choice(INTENTS[label])), SLOTS, rng) for label in gold]
    wrong = rng.random(n) < 0.07
    prediction = np.where(wrong, rng.choice(LABELS, size=n), gold)
    confidence = np.where(wrong, rng.beta(3, 3, size=n), rng.beta(9, 1.5, size=n))
    return pd.DataFrame({"text": texts, "prediction": prediction, "confidence": confidence.clip(1 / 40, 1)})


def shifted(n: int, seed: int, templates: list[str], labels: list[str], label_p: list[float]) -> pd.DataFrame:
    """New phrasings / vocabulary, longer texts, predictions concentrated on a few labels."""
    rng = np.random.default_rng(seed)
    texts = [_fill(str(rng.choice(templates)), SHIFTED_SLOTS, rng) for _ in range(n)]
    prediction = rng.choice(labels, size=n, p=label_p)
    confidence = rng.beta(3, 3, size=n).clip(1 / 40, 1)
    return pd.DataFrame({"text": texts, "prediction": prediction, "confidence": confidence})


REFERENCE_SIZE = 3000
WINDOW_SIZE = 200
IN_DOMAIN_SEEDS = (11, 12, 13, 14, 15)


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return in_domain(REFERENCE_SIZE, seed=0)


@pytest.fixture(scope="module")
def windows() -> dict[str, pd.DataFrame]:
    out = {f"in_domain_{seed}": in_domain(WINDOW_SIZE, seed) for seed in IN_DOMAIN_SEEDS}
    out["shifted_a"] = shifted(
        WINDOW_SIZE, 21, SHIFTED_A, ["turn_on", "set_temperature", "scene"], [0.6, 0.3, 0.1]
    )
    out["shifted_b"] = shifted(WINDOW_SIZE, 22, SHIFTED_B, ["joke", "news"], [0.7, 0.3])
    return out


@pytest.fixture(scope="module")
def results(reference, windows, tmp_path_factory) -> dict[str, tuple[DriftResult, float]]:
    out_dir = tmp_path_factory.mktemp("drift_reports")
    detect_drift(reference, windows["in_domain_11"], report_path=out_dir / "warmup.html")  # Evidently import
    out = {}
    for name, window in windows.items():
        start = time.perf_counter()
        result = detect_drift(reference, window, report_path=out_dir / "nested" / f"{name}.html", title=name)
        out[name] = (result, time.perf_counter() - start)
    return out


# --------------------------------------------------------------------------- descriptors


def test_describe_texts_hand_computed():
    texts = pd.Series(["Turn on the light", "Set it to 21%!", "", None, "don't STOP"], index=[10, 11, 12, 13, 14])
    vocabulary = {"turn", "on", "the", "light", "set", "to"}
    got = describe_texts(texts, vocabulary)

    assert list(got.columns) == list(DESCRIPTOR_COLUMNS)
    assert list(got.index) == [10, 11, 12, 13, 14]
    assert got["char_length"].tolist() == [17, 14, 0, 0, 10]
    assert got["word_count"].tolist() == [4, 4, 0, 0, 2]
    # "Set it to 21%!": tokens set/it/to/21, "it" and "21" unknown; "don't"/"stop" unknown
    assert got["oov_share"].tolist() == pytest.approx([0.0, 0.5, 0.0, 0.0, 1.0])
    # non-letters: "2", "1", "%", "!" of 14 chars; the apostrophe of 10 chars
    assert got["non_letter_share"].tolist() == pytest.approx([0.0, 4 / 14, 0.0, 0.0, 1 / 10])


def test_describe_texts_vocabulary_is_case_insensitive():
    got = describe_texts(pd.Series(["TURN On"]), {"Turn", "on"})
    assert got["oov_share"].iloc[0] == 0.0


def test_reference_vocabulary_lowercases_word_tokens():
    vocab = reference_vocabulary(pd.Series(["Turn ON the Light!", "set it to 21%", None]))
    assert vocab == {"turn", "on", "the", "light", "set", "it", "to", "21"}


# --------------------------------------------------------------------------- drift verdicts


def test_in_domain_windows_raise_no_false_alarm(results):
    flagged = {name: r.to_dict() for name, (r, _) in results.items() if name.startswith("in_domain") and r.drift_detected}
    assert not flagged, f"false alarms on in-domain windows: {json.dumps(flagged, indent=1)}"
    for name, (r, _) in results.items():
        if name.startswith("in_domain"):
            assert r.drifted_share < 0.5
            assert len(r.drifted_columns) <= 1, (name, r.drifted_columns, r.column_scores)


@pytest.mark.parametrize("name", ["shifted_a", "shifted_b"])
def test_shifted_windows_are_flagged(results, name):
    r, _ = results[name]
    assert r.drift_detected, r.to_dict()
    assert r.drifted_share >= 0.5
    for column in ("char_length", "word_count", "oov_share", "prediction"):
        assert column in r.drifted_columns, (column, r.column_scores)


def test_result_fields_and_methods(results, reference, windows):
    r, _ = results["in_domain_11"]
    monitored = [*DESCRIPTOR_COLUMNS, "confidence", "prediction"]
    assert set(r.column_scores) == set(monitored) == set(r.column_methods)
    assert "text" not in r.column_scores
    assert r.column_methods["prediction"] == "chisquare_2sample"
    assert all(r.column_methods[c] == "ks" for c in monitored if c != "prediction")
    assert all(0.0 <= s <= 1.0 for s in r.column_scores.values())  # p-values
    assert r.n_reference == len(reference) and r.n_current == len(windows["in_domain_11"])
    assert r.drifted_share == pytest.approx(len(r.drifted_columns) / len(monitored))
    json.dumps(r.to_dict())  # serialisable
    assert r.to_dict()["report_html"] == str(r.report_html)


def test_confidence_is_optional(reference, windows, tmp_path):
    r = detect_drift(
        reference.drop(columns="confidence"), windows["shifted_b"].drop(columns="confidence"), report_path=tmp_path / "r.html"
    )
    assert "confidence" not in r.column_scores
    assert r.drift_detected


# --------------------------------------------------------------------------- report file


def test_report_html_written(results):
    r, _ = results["shifted_a"]
    path = Path(r.report_html)
    assert path.is_file()
    page = path.read_text(encoding="utf-8")
    assert "<html" in page
    assert "<title>shifted_a</title>" in page
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_failed_write_leaves_no_partial_report(reference, windows, tmp_path, monkeypatch):
    target = tmp_path / "out" / "report.html"

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        detect_drift(reference, windows["in_domain_12"], report_path=target)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_missing_columns_rejected(reference, tmp_path):
    with pytest.raises(ValueError, match="prediction"):
        detect_drift(reference, reference[["text"]].head(10), report_path=tmp_path / "r.html")


def test_unseen_and_missing_predictions_are_handled(reference, windows, tmp_path):
    window = windows["in_domain_13"].copy()
    window.loc[window.index[:3], "prediction"] = "brand_new_label"
    window.loc[window.index[3:5], "prediction"] = None
    window.loc[window.index[5], "text"] = None
    r = detect_drift(reference, window, report_path=tmp_path / "r.html")
    assert 0.0 <= r.column_scores["prediction"] <= 1.0
    assert not r.drift_detected


# --------------------------------------------------------------------------- embedding drift


def bow_embeddings(texts: pd.Series, dim: int = 256) -> np.ndarray:
    """Unit-norm hashed bag-of-words vectors: a cheap stand-in for sentence embeddings (the
    nearest-reference distance test does not care where the vectors come from)."""
    import zlib

    out = np.zeros((len(texts), dim))
    for row, text in enumerate(texts):
        for token in str(text).lower().split():
            out[row, zlib.crc32(token.encode()) % dim] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


@pytest.fixture(scope="module")
def embedding_results(reference, windows, tmp_path_factory) -> dict[str, DriftResult]:
    out_dir = tmp_path_factory.mktemp("embedding_reports")
    ref_vectors = bow_embeddings(reference["text"])
    return {name: detect_drift(reference, window, report_path=out_dir / f"{name}.html", title=name,
                               reference_embeddings=ref_vectors, current_embeddings=bow_embeddings(window["text"]))
            for name, window in windows.items()}


def test_embedding_distance_raises_no_false_alarm_and_flags_shifts(embedding_results):
    for name, r in embedding_results.items():
        assert r.column_methods["embedding_distance"] == "ks"
        if name.startswith("in_domain"):
            assert not r.drift_detected, r.to_dict()
            assert "embedding_distance" not in r.drifted_columns, (name, r.column_scores)
        else:
            assert r.drift_detected and "embedding_distance" in r.drifted_columns, r.to_dict()


def test_nearest_reference_distance_matches_in_distribution():
    from monitoring.drift import nearest_reference_distance

    rng = np.random.default_rng(0)
    points = rng.normal(size=(1200, 8))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    ref, cur = nearest_reference_distance(points[:1000], points[1000:])
    assert ref.shape == (1000,) and cur.shape == (200,)
    assert abs(np.median(ref) - np.median(cur)) < 0.05 * np.median(ref)
    half = points[:1000][points[:1000, 0] > 0]  # a reference that covers one half of the sphere
    _, other_half = nearest_reference_distance(half, points[1000:][points[1000:, 0] < -0.5])
    ref_half, _ = nearest_reference_distance(half, points[1000:1001])
    assert np.median(other_half) > 2 * np.median(ref_half)


def test_window_without_texts_compares_predictions_only(reference, windows, tmp_path):
    window = windows["shifted_b"].assign(text=None)
    r = detect_drift(reference, window, report_path=tmp_path / "r.html")
    assert set(r.column_scores) == {"prediction", "confidence"}
    assert r.drift_detected


def test_quality_where_ground_truth_arrived(reference, windows, tmp_path):
    window = windows["in_domain_14"].copy()
    window["true_label"] = None
    window.loc[window.index[:50], "true_label"] = window["prediction"].iloc[:50]
    window.loc[window.index[:5], "true_label"] = "something_else"
    r = detect_drift(reference, window, report_path=tmp_path / "r.html", min_labelled=30)
    assert r.quality["labelled"] == 50 and r.quality["accuracy"] == pytest.approx(0.9)
    assert "accuracy 0.900" in r.report_html.read_text()
    assert detect_drift(reference, window, report_path=tmp_path / "r2.html", min_labelled=60).quality is None


def test_the_windows_accuracy_is_in_its_snapshot_for_the_dashboard(reference, windows, tmp_path):
    from evidently.ui.workspace import Workspace

    window = windows["in_domain_14"].copy()
    window["true_label"] = None
    window.loc[window.index[:40], "true_label"] = window["prediction"].iloc[:40]
    window.loc[window.index[:10], "true_label"] = "something_else"
    folder = tmp_path / "workspace"
    result = detect_drift(reference, window, report_path=tmp_path / "r.html", min_labelled=30, workspace=folder,
                          project="drift", metadata={"key": "labelled"})
    detect_drift(reference, windows["in_domain_11"], report_path=tmp_path / "u.html", workspace=folder,
                 project="drift", metadata={"key": "unlabelled"})  # no ground truth: no accuracy, no error
    assert result.quality["accuracy"] == pytest.approx(0.75)
    workspace = Workspace(str(folder))
    project = workspace.search_project("drift")[0]
    values = {}
    for run_id in workspace.list_runs(project.id):
        run = workspace.get_run(project.id, run_id)
        found = [value for value in json.loads(run.json()).get("metric_results", {}).values()
                 if "correct" in json.dumps(value)] if hasattr(run, "json") else []
        values[run.metadata["key"]] = found
    assert values["unlabelled"] == []
    assert "Mean value of 'correct': current: 0.750" in json.dumps(values["labelled"]), values["labelled"]


def test_the_windows_disagreement_with_the_teacher_is_in_its_snapshot(reference, windows, tmp_path):
    from evidently.ui.workspace import Workspace

    from monitoring.drift import dashboard_panels

    window = windows["in_domain_14"].copy()
    window["teacher_label"] = None  # the teacher answered 40 requests and differs from the champion on 10
    window.loc[window.index[:40], "teacher_label"] = window["prediction"].iloc[:40]
    window.loc[window.index[:10], "teacher_label"] = "something_else"
    folder = tmp_path / "workspace"
    older = Workspace.create(str(folder)).create_project("drift")  # a workspace an older distill made: two panels
    for panel in dashboard_panels()[:2]:
        older.dashboard.add_panel(panel)
    result = detect_drift(reference, window, report_path=tmp_path / "r.html", workspace=folder, project="drift",
                          metadata={"key": "asked"})
    assert result.teacher == {"asked": 40, "disagreement": pytest.approx(0.25)}
    assert "disagrees with it on 25.0% of them" in result.report_html.read_text()
    assert detect_drift(reference, windows["in_domain_11"], report_path=tmp_path / "u.html").teacher is None
    workspace = Workspace(str(folder))
    project = workspace.search_project("drift")[0]
    run = workspace.get_run(project.id, workspace.list_runs(project.id)[0])
    assert "Mean value of 'teacher_disagrees': current: 0.250" in run.json()
    titles = [panel.title for panel in workspace.get_dashboard(project.id).panels]
    assert titles == [panel.title for panel in dashboard_panels()]  # the missing panels added, none twice


def test_packaged_minilm_embeddings_separate_shifted_text():
    from monitoring.embeddings import embed_texts

    vectors = embed_texts(["turn on the kitchen light", "switch on the bedroom lamp",
                           "why was my card charged 19.99 twice for order #1001-3??"])
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


def test_reports_collect_in_an_evidently_workspace(reference, windows, tmp_path):
    from evidently.ui.workspace import Workspace

    from datetime import datetime, timezone

    folder = tmp_path / "workspace"
    starts = {"in_domain_11": datetime(2026, 12, 1, 10, tzinfo=timezone.utc),
              "shifted_a": datetime(2026, 12, 1, 11, tzinfo=timezone.utc)}
    for _ in range(2):  # a second monitor pass reads the same windows again
        for name in ("in_domain_11", "shifted_a"):
            detect_drift(reference, windows[name], report_path=tmp_path / f"{name}.html", title=name,
                         workspace=folder, project="drift", timestamp=starts[name], tags=[name, "champion-v3"],
                         metadata={"key": f"{name}:v3", "window": name})
    workspace = Workspace(str(folder))
    projects = workspace.search_project("drift")
    assert len(projects) == 1  # the second report joined the project the first created
    runs = [workspace.get_run(projects[0].id, run) for run in workspace.list_runs(projects[0].id)]
    assert len(runs) == 2  # once per window, not once per pass
    by_window = {run.metadata["window"]: run for run in runs}
    assert by_window["shifted_a"].timestamp.replace(tzinfo=None) == datetime(2026, 12, 1, 11)  # dated by the window
    assert by_window["shifted_a"].tags == ["shifted_a", "champion-v3"]
    # the project opens on a dashboard of panels, not "This dashboard is currently empty"
    panels = workspace.get_dashboard(projects[0].id).panels
    assert [panel.title for panel in panels] == ["Drifted columns, latest window", "Share of drifted columns per window",
                                                 "Drift score per column", "Window accuracy where ground truth arrived",
                                                 "Disagreement with the teacher per window"]
    assert {value.metric_labels["column"] for value in panels[2].values} >= {"confidence", "prediction", "oov_share"}


def test_the_confidence_reference_is_texts_the_champion_did_not_train_on(tiny_cfg, tmp_path):
    from distill import data
    from distill.layout import LAYOUT
    from flows.monitor import reference_frame

    prepared = LAYOUT.under(tmp_path).prepared
    data.run(tiny_cfg, prepared)
    trained = set(data.read_split(prepared, "gold_train")["text"]) | set(data.read_split(prepared, "transfer")["text"])
    cut = data.read_split(prepared, "reference")  # per_label data: texts of the traffic's pool nothing trains on
    held_out = (set(cut["text"]) if len(cut) else
                set(data.read_split(prepared, "gold_val")["text"]) | set(data.read_split(prepared, "gold_test")["text"]))
    rng = np.random.default_rng(0)

    class Overfit:  # as a student is: sure of the texts it was trained on, less sure of any other
        def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
            score = [0.99 if text in trained else float(rng.uniform(0.5, 0.9)) for text in frame["text"]]
            return pd.DataFrame({"label": ["lights_on"] * len(frame), "score": score})

    reference = reference_frame(Overfit(), str(tmp_path))
    scored = reference[reference["confidence"].notna()]
    assert set(scored["text"]) == held_out - trained and len(scored) >= 20
    assert set(reference["text"]) >= trained  # the text columns keep the whole distillation set
    # unseen in-domain traffic, scored alike: its confidence matches the held-out reference, not the trained one
    window = pd.DataFrame({"text": scored["text"].to_numpy(), "prediction": "lights_on",
                           "confidence": rng.uniform(0.5, 0.9, len(scored))})
    kept = detect_drift(reference, window, report_path=tmp_path / "kept.html")
    assert "confidence" not in kept.drifted_columns, kept.column_scores
    naive = reference.assign(confidence=Overfit().predict(reference)["score"].to_numpy(), held_out=False)
    assert "confidence" in detect_drift(naive, window, report_path=tmp_path / "naive.html").drifted_columns
    # the text columns' reference is the distillation inputs alone: the held-out rows change none of them
    texts_only = reference[~reference["held_out"]].drop(columns=["confidence", "held_out"])
    alone = detect_drift(texts_only, window.drop(columns=["confidence"]), report_path=tmp_path / "alone.html")
    for column in ("char_length", "word_count", "oov_share", "non_letter_share"):
        assert kept.column_scores[column] == pytest.approx(alone.column_scores[column]), column
