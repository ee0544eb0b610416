"""Two pipeline runs with different configs at once in one project folder: the second waits for the first.

Two processes enter the real flow entry (``distill_pipeline``, so its project lock) at the same
moment, each with its own ``train.alpha`` override; tests/pipeline_run.py stands in for the stages
and records any moment its run's params or its outputs under models/ and reports/ were changed by the
other run. Both register and promote a version in one MLflow registry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient

from distill.config import run_config

ROOT = Path(__file__).resolve().parents[1]
RUNS = {"run-a": 0.3, "run-b": 0.8}


def test_a_second_run_waits_for_the_first_and_nothing_is_clobbered(tmp_path):
    project, results = tmp_path / "project", tmp_path / "results"
    project.mkdir(), results.mkdir()
    (project / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    user_params = (project / "params.yaml").read_bytes()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).create_registered_model("concurrent-student")  # the store's schema, created once
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT), "PREFECT_LOGGING_LEVEL": "WARNING"}
    procs = {}
    for name, alpha in RUNS.items():
        log = (tmp_path / f"{name}.log").open("w")
        procs[name] = subprocess.Popen([sys.executable, str(ROOT / "tests/pipeline_run.py"), str(project), name,
                                        str(alpha), str(results / f"{name}.json")], env=env, stdout=log,
                                       stderr=subprocess.STDOUT)
    logs = {}
    for name, proc in procs.items():
        code = proc.wait(timeout=120)
        logs[name] = (tmp_path / f"{name}.log").read_text()
        assert code == 0, logs[name][-3000:]
    runs = {name: json.loads((results / f"{name}.json").read_text()) for name in RUNS}
    first, second = sorted(runs.values(), key=lambda r: r["start"])

    assert second["ready"] < first["end"], "the runs did not overlap; nothing was tested"
    assert second["start"] >= first["end"], "the second run started its stages while the first was running"
    assert not first["clobbered"] and not second["clobbered"], (first["clobbered"], second["clobbered"])
    waiting = [line for line in logs[second["name"]].splitlines() if "another pipeline run is working" in line]
    assert waiting and f"pid {procs[first['name']].pid} " in waiting[0], logs[second["name"]][-3000:]
    assert "another pipeline run" not in logs[first["name"]]

    # What stays is the second run's, whole: the run's params, outputs and the registry's history; the
    # user's params.yaml is neither run's.
    assert run_config(project).train.alpha == RUNS[second["name"]]
    assert (project / "params.yaml").read_bytes() == user_params
    assert json.loads((project / "models/student/card.json").read_text())["run"] == second["name"]
    client = MlflowClient(uri)
    aliases = {k: str(v) for k, v in client.get_registered_model("concurrent-student").aliases.items()}
    assert aliases == {"champion": second["version"], "previous": first["version"]}
    assert second["promotion"]["displaced"] == first["version"]
    assert client.get_model_version("concurrent-student", second["version"]).tags["promoted_by"] == second["name"]
    assert not (project / ".dvc/tmp/distill-pipeline.lock").read_text(), "the lock still names a holder"


def test_a_run_nested_in_a_run_reenters_the_lock_and_still_excludes_others(tmp_path):
    """The monitor's re-distillation runs a pipeline inside a pipeline run, in the same process."""
    from flows.lock import project_lock

    other = ("import sys\nfrom flows.lock import ProjectBusy, project_lock\ntry:\n"
             "    with project_lock(sys.argv[1], timeout_s=1, poll_s=0.1):\n        pass\n"
             "except ProjectBusy:\n    sys.exit(3)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def other_process() -> int:
        return subprocess.run([sys.executable, "-c", other, str(tmp_path)], env=env, cwd=ROOT).returncode

    with project_lock(str(tmp_path), timeout_s=1):
        with project_lock(str(tmp_path), timeout_s=1):  # would wait forever on itself without re-entry
            assert other_process() == 3
        assert other_process() == 3, "leaving the nested run must not release the outer run's lock"
    assert other_process() == 0
