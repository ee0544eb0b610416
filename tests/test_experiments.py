"""DVC experiments: `dvc exp show` compares the student's accuracy, share of the teacher and latency."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.tiny_project import tiny_project

GIT = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com", "GIT_COMMITTER_NAME": "test",
       "GIT_COMMITTER_EMAIL": "test@example.com"}


def experiments(shown, names: set[str]) -> dict[str, dict]:
    """name -> the experiment's entry, from `dvc exp show --json` (nested lists of revisions)."""
    found = {}

    def walk(node):
        if isinstance(node, dict):
            if node.get("name") in names and isinstance(node.get("data"), dict):
                found[node["name"]] = node["data"]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(shown)
    return found


@pytest.mark.slow
def test_two_experiments_show_the_students_accuracy_share_and_latency(tmp_path, monkeypatch):
    from tasks.dvc import _env, queue_experiments

    project = tiny_project(tmp_path / "project")
    for key, value in GIT.items():  # the queue commits its experiments
        monkeypatch.setenv(key, value)
    env = _env()
    subprocess.run(["git", "add", "-A"], cwd=project, check=True, env=env)
    subprocess.run(["git", "commit", "-qm", "base"], cwd=project, check=True, env=env)
    names = queue_experiments(str(project), [["train.alpha=0.2"], ["train.alpha=0.9"]], ["low", "high"])
    assert names == ["low", "high"]
    dvc = [sys.executable, "-m", "dvc"]
    started = subprocess.run([*dvc, "queue", "start", "--jobs", "1"], cwd=project, env=env, capture_output=True,
                             text=True)
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        for _ in range(240):  # the queue's worker runs the two experiments one after the other
            status = subprocess.run([*dvc, "queue", "status"], cwd=project, env=env, capture_output=True, text=True)
            if "Running" not in status.stdout and "Queued" not in status.stdout:
                break
            time.sleep(5)
    finally:
        subprocess.run([*dvc, "queue", "stop", "--kill"], cwd=project, env=env, capture_output=True)
    assert "Failed" not in status.stdout, status.stdout + subprocess.run(
        [*dvc, "queue", "logs", "low"], cwd=project, env=env, capture_output=True, text=True).stdout[-3000:]
    shown = json.loads(subprocess.run([*dvc, "exp", "show", "--json"], cwd=project, env=env, capture_output=True,
                                      text=True, check=True).stdout)
    found = experiments(shown, set(names))
    assert set(found) == set(names), status.stdout
    figures = {}
    for name, data in found.items():
        headline = data["metrics"]["reports/evaluate/headline.json"]["data"]
        student = headline["student"]
        assert {"accuracy", "teacher_share", "latency_p50_ms"} <= set(student)
        assert 0 <= student["accuracy"] <= 1 and student["latency_p50_ms"] > 0
        assert student["teacher_share"] == pytest.approx(student["accuracy"] / headline["teacher"]["accuracy"])
        assert len([key for model in headline.values() for key in model]) <= 20  # a handful of columns
        alpha = next(params["data"]["train"]["alpha"] for params in data["params"].values()
                     if "alpha" in params.get("data", {}).get("train", {}))
        figures[name] = (alpha, student["accuracy"])
    assert figures["low"][0] == 0.2 and figures["high"][0] == 0.9
