"""The production log under concurrent writers, late ground truth, text policies, and `distill serve`."""

from __future__ import annotations

import json
import multiprocessing
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from monitoring.production import (append_predictions, assign_windows, labelled_holdout, log_root, read_log,
                                   record_feedback,
                                   text_sha256)
from monitoring.serve import Predictor, make_server

LABELS = ["lights_on", "weather"]


class StubModel:
    """Predicts ``weather`` for texts mentioning rain, else ``lights_on``."""

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        p = frame["text"].str.contains("rain").astype(float) * 0.8 + 0.1
        return pd.DataFrame({"label": ["weather" if x > 0.5 else "lights_on" for x in p], "score": p.where(p > 0.5, 1 - p),
                             "p_lights_on": 1 - p, "p_weather": p})


def _write_batches(root: str, writer: int, batches: int, size: int) -> None:
    predictor = Predictor(StubModel(), "1", Path(root), source=f"writer-{writer}")
    for b in range(batches):
        predictor.predict([f"will it rain {writer}-{b}-{i}" for i in range(size)],
                          [f"{writer}-{b}-{i}" for i in range(size)])


def test_concurrent_processes_lose_no_rows(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_batches, args=(str(tmp_path), w, 15, 7)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    log = read_log(tmp_path)
    assert len(log) == 4 * 15 * 7
    assert log["request_id"].is_unique
    assert set(log["source"]) == {f"writer-{w}" for w in range(4)}
    assert not list((tmp_path / "requests").glob(".tmp-*"))


def test_http_server_threads_log_every_request_and_join_feedback(tmp_path):
    predictor = Predictor(StubModel(), "7", tmp_path)
    server = make_server(predictor, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"

    def post(path: str, body: dict) -> dict:
        request = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: post("/predict", {"texts": [f"rain in oslo {i}", f"lamp {i}"]}),
                                    range(40)))
        assert all(a["model_version"] == "7" for a in answers)
        first = answers[0]["predictions"]
        assert [p["label"] for p in first] == ["weather", "lights_on"]
        assert set(first[0]["probabilities"]) == set(LABELS)
        assert post("/feedback", {"request_ids": [first[0]["request_id"]], "labels": ["weather"]}) == {"recorded": 1}
    finally:
        server.shutdown()
        server.server_close()
    log = read_log(tmp_path)
    assert len(log) == 80 and log["request_id"].is_unique
    joined = log.set_index("request_id").loc[first[0]["request_id"]]
    assert joined["true_label"] == "weather" and joined["model_version"] == "7"
    assert log["true_label"].notna().sum() == 1


def test_latest_feedback_wins_and_windows_follow_time(tmp_path):
    frame = pd.DataFrame({"request_id": ["a", "b", "c"], "text": ["x", "y", "z"],
                          "timestamp": pd.to_datetime(["2025-01-01T10:05Z", "2025-01-01T10:55Z", "2025-01-01T11:01Z"]),
                          "prediction": "lights_on", "confidence": 0.9, "probabilities": "{}",
                          "model_version": "1", "source": "test"})
    append_predictions(tmp_path, frame)
    record_feedback(tmp_path, ["a"], ["weather"])
    record_feedback(tmp_path, ["a"], ["lights_on"])
    log = assign_windows(read_log(tmp_path), "1h")
    assert log.set_index("request_id").loc["a", "true_label"] == "lights_on"
    assert log.groupby("window_start").size().tolist() == [2, 1]
    since = pd.Timestamp("2025-01-01T11:00Z")
    assert read_log(tmp_path, since=since)["request_id"].tolist() == ["c"]


def test_holdout_keeps_only_rows_whose_ground_truth_arrived(tmp_path):
    assert labelled_holdout(tmp_path).empty  # nothing held out yet
    frame = pd.DataFrame({"request_id": ["a", "b", "c"], "text": ["x", "y", "z"],
                          "timestamp": pd.to_datetime(["2025-01-01T10:05Z"] * 3), "prediction": "lights_on",
                          "confidence": 0.9, "probabilities": "{}", "model_version": "1", "source": "test"})
    append_predictions(tmp_path, frame)
    (tmp_path / "holdout").mkdir()
    frame[["request_id", "text"]].iloc[1:].to_parquet(tmp_path / "holdout" / "window-0001.parquet")
    record_feedback(tmp_path, ["a", "b"], ["weather", "weather"])
    held = labelled_holdout(tmp_path)
    assert held.to_dict("records") == [{"text": "y", "label": "weather"}]  # a not held out, c unlabelled


@pytest.mark.parametrize("policy", ["hash", "drop"])
def test_text_policy_keeps_no_raw_text(tmp_path, policy):
    Predictor(StubModel(), "1", tmp_path, text_policy=policy).predict(["my secret address is 5 elm st"])
    log = read_log(tmp_path)
    assert log["text"].isna().all()
    if policy == "hash":
        assert log["text_sha256"].iloc[0] == text_sha256("my secret address is 5 elm st")
    else:
        assert log["text_sha256"].isna().all()
    raw = b"".join(p.read_bytes() for p in (tmp_path / "requests").glob("part-*.parquet"))
    assert b"secret" not in raw


def test_log_location_accepts_paths_and_file_urls(tmp_path):
    assert log_root("data/production_log", tmp_path) == tmp_path / "data/production_log"
    assert log_root(f"file://{tmp_path}/log") == tmp_path / "log"
    with pytest.raises(ValueError, match="file://"):
        log_root("s3://bucket/log")
