"""Teacher-shift decisions, the canary set, incidents (debounce) and notifications."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest

from monitoring import alerts
from monitoring.teacher_shift import check_teacher_shift, disagreement, ensure_canary

TAGS = {"teacher_version": "1", "teacher_fingerprint": "a" * 64}


def test_same_teacher_and_calm_canary_is_no_shift():
    shift = check_teacher_shift("1", "a" * 64, "3", TAGS, canary_disagreement=0.05, baseline_disagreement=0.03)
    assert not shift.changed and shift.reasons == []


def test_new_teacher_version_is_a_shift_with_one_incident_per_pair():
    shift = check_teacher_shift("2", "b" * 64, "3", TAGS)
    assert shift.changed
    assert any("version 2" in r for r in shift.reasons) and any("fingerprint" in r for r in shift.reasons)
    assert shift.incident == check_teacher_shift("2", "b" * 64, "3", TAGS).incident
    assert shift.incident != check_teacher_shift("2", "b" * 64, "4", TAGS).incident
    assert json.dumps(shift.to_dict())


def test_canary_rise_over_the_distillation_level_is_a_shift():
    calm = check_teacher_shift("1", "a" * 64, "3", TAGS, 0.12, baseline_disagreement=0.08, max_canary_disagreement=0.1)
    assert not calm.changed  # high, but no higher than at distillation
    risen = check_teacher_shift("1", "a" * 64, "3", TAGS, 0.30, baseline_disagreement=0.08, max_canary_disagreement=0.1)
    assert risen.changed and "canary" in risen.reasons[0]


def test_no_teacher_or_no_champion_is_no_shift():
    assert not check_teacher_shift(None, None, "3", TAGS).changed
    assert not check_teacher_shift("2", None, None, {}).changed


def test_disagreement():
    assert disagreement(["a", "b", "c", "d"], ["a", "x", "c", "y"]) == 0.5
    assert disagreement([], []) == 0.0
    with pytest.raises(ValueError):
        disagreement(["a"], [])


def test_canary_is_cut_once_and_kept(tmp_path):
    gold = pd.DataFrame({"text": [f"t{i}" for i in range(50)], "label": ["x", "y"] * 25})
    first, note = ensure_canary(tmp_path / "canary.parquet", gold, 20, seed=1)
    again, again_note = ensure_canary(tmp_path / "canary.parquet", gold.iloc[::-1], 30, seed=2)
    assert len(first) == 20 and first.equals(again) and note == again_note == ""
    # a gold_test that lost some of the canary's rows (a re-split) keeps it while most are there
    kept = gold[~gold["text"].isin(first["text"].iloc[:8])]
    assert ensure_canary(tmp_path / "canary.parquet", kept, 20, seed=3)[0].equals(first)


def test_a_canary_cut_from_other_data_is_set_aside_and_cut_again(tmp_path):
    """The project switched to another data set: its teacher and student are not measured on the old texts."""
    intents = pd.DataFrame({"text": [f"turn on lamp {i}" for i in range(50)],
                            "label": ["HassTurnOn", "HassTurnOff"] * 25})
    reviews = pd.DataFrame({"text": [f"review {i}" for i in range(60)], "label": ["positive", "negative"] * 30})
    path = tmp_path / "canary.parquet"
    old, _ = ensure_canary(path, intents, 20, seed=1)
    new, note = ensure_canary(path, reviews, 20, seed=1)
    assert set(new["text"]) <= set(reviews["text"]) and len(new) == 20
    assert pd.read_parquet(path).equals(new)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("canary.replaced-")]
    assert len(aside) == 1 and pd.read_parquet(aside[0]).equals(old)  # nothing is lost
    assert "0% of its 20 rows" in note and aside[0].name in note


def test_incident_opens_once_until_resolved(tmp_path):
    assert alerts.open_incident(tmp_path, "drift-abc", {"windows": [4]})
    assert not alerts.open_incident(tmp_path, "drift-abc", {"windows": [4]})
    assert alerts.pending_incident(tmp_path) == "drift-abc"
    alerts.resolve_incident(tmp_path, "drift-abc", {"promoted": True})
    assert alerts.pending_incident(tmp_path) is None
    assert not alerts.open_incident(tmp_path, "drift-abc", {})  # resolved incidents stay closed
    assert alerts.pending_incident(tmp_path / "none") is None


def test_stale_incident_no_longer_blocks(tmp_path):
    import time

    alerts.open_incident(tmp_path, "teacher-v2", {})
    assert alerts.pending_incident(tmp_path, now=time.time() + alerts.STALE_AFTER_S + 1) is None


def test_notification_goes_to_the_apprise_url_from_the_environment(monkeypatch):
    received = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):  # noqa: N802
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert alerts.notify("DISTILL_TEST_NOTIFY", "t", "b") is False  # unset: silent
        monkeypatch.setenv("DISTILL_TEST_NOTIFY", f"json://127.0.0.1:{server.server_address[1]}/hook")
        assert alerts.notify("DISTILL_TEST_NOTIFY", "[distill] distill.drift.detected", "report: file:///r.html")
    finally:
        server.shutdown()
        server.server_close()
    assert received and received[0]["title"] == "[distill] distill.drift.detected"
    assert "file:///r.html" in received[0]["message"]


def test_the_teacher_is_asked_about_a_fixed_sample_once(tmp_path):
    from monitoring.teacher_shift import cached_answers, teacher_sample

    window = pd.DataFrame({"request_id": [f"r{i}" for i in range(50)],
                           "text": [None if i % 5 == 0 else f"text {i % 20}" for i in range(50)]})
    rows = teacher_sample(window["request_id"], window["text"], 30)
    assert len(rows) == 30 and window.loc[rows, "text"].notna().all()
    shuffled = window.sample(frac=1, random_state=1)
    assert set(teacher_sample(shuffled["request_id"], shuffled["text"], 30)) == set(rows)  # by id, not by order
    asked = []

    def teacher(texts: list[str]) -> list[str]:
        asked.append(list(texts))
        return [t.upper() for t in texts]

    texts = window.loc[rows, "text"].tolist()
    cache = tmp_path / "teacher-v1.parquet"
    assert cached_answers(teacher, texts, cache) == [t.upper() for t in texts]
    assert len(asked[0]) == len(set(texts))  # each distinct text once
    more = texts + ["a new text"]
    assert cached_answers(teacher, more, cache) == [t.upper() for t in more]
    assert asked[1] == ["a new text"]  # the rest came from the cache
