"""The lifecycle end to end through Prefect, DVC, MLflow, GE and Evidently, on a tiny config.

One project copy is shared by the tests, in order: a cold run; the drift monitor over the simulated
traffic (the shifted window flagged, one incident); a teacher version change that re-distils from the
new teacher and compares the former champion with the new student; a warm run that must skip the
expensive stages and open no incident; a sweep; a run whose teacher gate fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.tiny_project import tiny_project

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A fresh copy of the project, as a clone would have it, with tiny params."""
    return tiny_project(tmp_path_factory.mktemp("project"),
                        data={"gold_per_label": 12, "transfer_size": 200, "window_size": 120},
                        train={"epochs": 2}, monitor={"embedding_drift": True, "canary_size": 200},
                        evaluate={"runtime": "onnxruntime"},  # the default: models served as exported
                        # this project's student barely learns, so a compressed champion's re-distillation
                        # would keep its weights; the compression's flow path is tested in test_byod_flow
                        compress={"enabled": False})


@pytest.fixture(scope="module")
def user_params(project) -> bytes:
    """params.yaml as the user wrote it, before any run: no flow run may change a byte of it."""
    return (project / "params.yaml").read_bytes()


def registry(project: Path):
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    return MlflowClient()


def test_cold_run_goes_through_the_whole_lifecycle(harness, project, user_params):
    from flows.pipeline import distill_pipeline

    summary = distill_pipeline(project_dir=str(project), monitor=False)
    assert summary["completed"] is True
    client = registry(project)
    experiment = client.get_experiment_by_name("distill").experiment_id
    teacher_version = client.get_model_version_by_alias("distill-teacher", "champion")
    assert client.get_run(teacher_version.run_id).info.experiment_id == experiment
    champion = client.get_model_version_by_alias("distill-student", "champion")
    assert champion.tags["teacher_fingerprint"] and champion.tags["eval.teacher_share"]
    # the version row stays short: the rest of the lineage is on the training run
    assert len(champion.tags) <= 20 and "teacher_outputs_md5" not in champion.tags, sorted(champion.tags)
    assert client.get_run(champion.run_id).data.tags["teacher_outputs_md5"]
    # compress.enabled is false here: the student is registered, and its card says why nothing was compressed
    assert summary["registered"] == "student" and champion.tags["compression"].startswith("not applied")
    assert "no compressed student was evaluated" in champion.description
    # Teacher outputs are versioned by DVC and pushed to the local remote.
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    outs = {o["path"]: o["md5"] for o in lock["stages"]["label"]["outs"]}
    assert outs["data/teacher_outputs/logits.parquet"]
    assert any((project / ".dvcstore").rglob("*")), "nothing was pushed to the DVC remote"
    for report in ("reports/evaluate/report.html", "reports/audit/audit.html",
                   "gx/uncommitted/data_docs/local_site/index.html"):
        assert (project / report).is_file(), report


@pytest.fixture
def events(monkeypatch):
    import tasks.monitor

    seen: list[dict] = []
    monkeypatch.setattr(tasks.monitor, "emit_event", lambda **kw: seen.append(kw))
    return seen


def test_shifted_window_is_flagged_once(harness, project, events):
    from evidently.ui.workspace import Workspace

    from distill.config import run_config
    from distill.data import read_split
    from flows.monitor import DRIFT_EVENT, drift_monitor
    from monitoring.production import read_log

    traffic = len(read_split(project / "data/prepared", "production"))
    summary = drift_monitor(project_dir=str(project), redistill=False)
    assert summary["served"] == traffic
    assert {w["window"]: w["drift"] for w in summary["windows"]} == {0: False, 1: False, 2: True}
    assert all("embedding_distance" in w["column_scores"] for w in summary["windows"])
    assert not summary["teacher"]["changed"], summary["teacher"]
    assert summary["teacher"]["canary_size"] > 0
    assert [e["event"] for e in events] == [DRIFT_EVENT]
    payload = events[0]["payload"]
    assert payload["windows"] == [2] and payload["reports"][0].startswith("file://")
    log = read_log(project / "data/production_log")
    assert len(log) == traffic and log["true_label"].notna().all() and set(log["source"]) == {"simulated"}
    assert list((project / "data/incoming").glob("window-0002-*.parquet"))
    assert list((project / "data/production_log/holdout").glob("window-0002-*.parquet"))
    assert (project / "reports/monitor/window-0002.json").is_file()
    workspace = Workspace(str(project / "reports/evidently"))  # every window's report, for `evidently ui`
    assert len(workspace.list_runs(workspace.search_project("distill drift")[0].id)) == 3

    # the teacher answered a sample of each window: the dashboard's disagreement, asked once per text
    sample = run_config(project).monitor.teacher_sample
    for window in summary["windows"]:
        assert window["teacher"]["asked"] == min(sample, window["requests"]), window
        assert 0.0 <= window["teacher"]["disagreement"] <= 1.0
    answers = list((project / "reports/monitor/cache").glob("teacher-v*.parquet"))
    assert len(answers) == 1
    cached = pd.read_parquet(answers[0])

    again = drift_monitor(project_dir=str(project), redistill=False)
    assert again["served"] == 0 and again["new_incidents"] == [] and len(events) == 1
    assert [w["teacher"] for w in again["windows"]] == [w["teacher"] for w in summary["windows"]]
    assert pd.read_parquet(answers[0]).equals(cached)  # nothing asked twice


def test_teacher_version_change_redistils_from_the_new_teacher(harness, project, events, user_params):
    import mlflow
    from mlflow import MlflowClient

    from distill.config import load_config
    from distill.models import read_card
    from flows.monitor import TEACHER_EVENT, drift_monitor, incidents_dir
    from monitoring import alerts
    from tasks import registry as registry_tasks

    for path in incidents_dir(str(project)).glob("*.json"):  # as if the drift incident's run had finished
        alerts.resolve_incident(incidents_dir(str(project)), path.stem, {"simulated": True})
    cfg = load_config(project / "params.yaml")
    experiment = registry_tasks.configure(cfg.tracking, str(project))
    card = read_card(project / "models/teacher")
    with mlflow.start_run(experiment_id=experiment, run_name="teacher-update"):
        new = registry_tasks.log_classifier(project / "models/teacher", cfg.promote.teacher_model,
                                            {"fingerprint": card["fingerprint"], "source": "update"},
                                            "updated teacher")
    MlflowClient().set_registered_model_alias(cfg.promote.teacher_model, "champion", new)

    summary = drift_monitor(project_dir=str(project), redistill=True)
    assert [e["event"] for e in events] == [TEACHER_EVENT]
    assert events[0]["payload"]["teacher_version"] == new and events[0]["payload"]["reason"] == "teacher"
    result = summary["redistillation"]
    assert result["completed"] and result["reason"] == "teacher"
    student = MlflowClient().get_model_version(cfg.promote.student_model, result["student_version"])
    assert student.tags["teacher_version"] == new
    # The run's own values reached the stages through .distill/ (DVC tracked them), not through the
    # user's file: params.yaml is byte for byte what the user wrote.
    assert (project / "params.yaml").read_bytes() == user_params
    overrides = ["teacher.path=models:/distill-teacher@champion", "student.warm_start=models:/distill-student@champion"]
    assert json.loads(student.tags["overrides"]) == overrides
    effective = yaml.safe_load((project / ".distill/params.yaml").read_text())
    assert effective["teacher"]["path"] == "models:/distill-teacher@champion"
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert lock["teacher"]["params"][".distill/params.yaml"]["teacher"]["path"] == "models:/distill-teacher@champion"
    assert lock["train_student"]["params"][".distill/params.yaml"]["student"]["warm_start"] == \
        "models:/distill-student@champion"
    comparison = result["comparison"]
    for key in ("gold_test.champion_accuracy", "gold_test.challenger_accuracy",
                "shifted.champion_accuracy", "shifted.challenger_accuracy", "shifted.teacher_accuracy"):
        assert 0.0 <= comparison[key] <= 1.0, comparison
    assert comparison["shifted_known.size"] <= comparison["shifted.size"]
    # the shifted hold-out went through the champion gate before promotion, not only into the figures
    assert any("holdout=shifted" in reason for reason in result["decision"]["reasons"]), result["decision"]
    assert f"shifted {comparison['shifted.champion_accuracy']:.3f} -> " in student.tags["comparison"]


def test_warm_run_skips_labelling_and_training(harness, project, user_params):
    from flows.pipeline import distill_pipeline

    # The same settings as the re-distillation that made the champion: nothing to redo.
    summary = distill_pipeline(project_dir=str(project), monitor=True, overrides=[
        "teacher.path=models:/distill-teacher@champion", "student.warm_start=models:/distill-student@champion"])
    assert {"prepare", "teacher", "label", "train_student", "train_baseline", "evaluate"} <= set(
        summary["skipped_stages"])
    assert summary["newly_registered"] is False
    assert summary["monitor"]["new_incidents"] == [], "an incident already re-distilled must not trigger again"
    # the same weights, registered by the teacher-triggered re-distillation: its lineage is not overwritten
    tags = registry(project).get_model_version("distill-student", summary["student_version"]).tags
    assert tags["reason"] == "teacher" and tags["reproduced_by_run"] == summary["run_id"]
    assert (project / "params.yaml").read_bytes() == user_params


def test_a_setting_a_stage_refuses_leaves_every_previous_output_byte_identical(harness, project):
    """`dvc repro` deletes a stage's outputs before its command runs; the flow puts them back when it fails."""
    import torch

    from flows.pipeline import distill_pipeline
    from tasks.dvc import StageFailed

    if torch.cuda.is_available():
        pytest.skip("train.device=cuda is a valid setting on a machine with a GPU")

    def snapshot() -> dict[str, bytes]:
        return {str(p.relative_to(project)): p.read_bytes()
                for folder in ("models/student", "models/baseline", "reports/evaluate", "reports/audit")
                for p in sorted((project / folder).rglob("*")) if p.is_file()} | {
            name: (project / name).read_bytes() for name in ("models/student_shape.json",
                                                            "reports/stages/train_student.json")}

    before = snapshot()
    assert any(name.startswith("models/student/") for name in before)
    with pytest.raises(StageFailed, match="no CUDA device is visible"):
        distill_pipeline(project_dir=str(project), monitor=False, overrides=[
            "teacher.path=models:/distill-teacher@champion", "student.warm_start=models:/distill-student@champion",
            "train.device=cuda"])
    assert snapshot() == before
    assert not (project / ".dvc/tmp/distill-kept").exists() or not any((project / ".dvc/tmp/distill-kept").iterdir())


def test_sweep_trains_every_grid_point_and_applies_the_best_on_validation(harness, project):
    from distill.config import load_config, write_overrides
    from flows.sweep import distill_sweep

    write_overrides(project / "params.yaml", ["sweep.temperatures=[1.0, 4.0]", "sweep.alphas=[0.5]",
                                              "sweep.epochs=1"])
    result = distill_sweep(project_dir=str(project), apply=True,
                           overrides=["teacher.path=models:/distill-teacher@champion"])
    grid = result["grid"]
    assert [(r["kd_temperature"], r["alpha"]) for r in grid] == [(1.0, 0.5), (4.0, 0.5)]
    best = max(grid, key=lambda r: r["val_accuracy"])
    assert result["chosen"]["val_accuracy"] == best["val_accuracy"]
    cfg = load_config(project / "params.yaml")
    assert (cfg.train.kd_temperature, cfg.train.alpha) == (result["chosen"]["kd_temperature"], result["chosen"]["alpha"])
    client = registry(project)
    children = client.search_runs([client.get_experiment_by_name("distill").experiment_id],
                                  f"tags.mlflow.parentRunId = '{result['run_id']}'")
    assert sorted(r.data.params["kd_temperature"] for r in children) == ["1.0", "4.0"]
    assert client.get_run(result["run_id"]).data.params["chosen_kd_temperature"] == str(cfg.train.kd_temperature)


def test_failed_teacher_gate_stops_before_distillation(harness, project):
    from flows.outcome import summary_of
    from flows.pipeline import distill_pipeline

    client = registry(project)
    experiment = client.get_experiment_by_name("distill").experiment_id
    teacher_version = client.get_model_version_by_alias("distill-teacher", "champion")
    assert client.get_run(teacher_version.run_id).info.experiment_id == experiment
    champion = client.get_model_version_by_alias("distill-student", "champion").version
    versions = len(client.search_model_versions("name = 'distill-student'"))
    teachers = len(client.search_model_versions("name = 'distill-teacher'"))
    # A new bootstrapped teacher (one epoch; params.yaml's teacher.path is null) that fails its gate: it
    # is never registered, and the champion stays put.
    state = distill_pipeline(project_dir=str(project), monitor=False,
                             overrides=["teacher.min_accuracy=1.0", "teacher.epochs=1"], return_state=True)
    # the flow run ends Failed, its message naming the gate (Prefect automations on failure fire)
    assert state.is_failed() and state.message.startswith("teacher gate failed: ")
    summary = summary_of(state)
    assert summary["completed"] is False
    assert not summary["teacher_gate"]["passed"]
    assert any("fine-tuned on" in r and "teacher.path" in r for r in summary["teacher_gate"]["reasons"])
    assert client.get_model_version_by_alias("distill-student", "champion").version == champion
    assert len(client.search_model_versions("name = 'distill-student'")) == versions
    assert len(client.search_model_versions("name = 'distill-teacher'")) == teachers
    assert client.get_model_version_by_alias("distill-teacher", "champion").version == teacher_version.version


def test_registered_teacher_round_trips_through_an_mlflow_uri(harness, project, tmp_path):
    """teacher.path may be models:/name@alias: fetched from the registry, it is the same teacher."""
    from distill import teacher
    from distill.config import load_config
    from distill.models import ModelError, read_card
    from tasks.registry import fetch_model_folder

    cfg = load_config(project / "params.yaml", ["teacher.path=models:/distill-teacher@champion"])
    with pytest.raises(ModelError, match="distill fetch-teacher"):
        teacher.run(cfg, project / "data/prepared", tmp_path / "t", imported_dir=tmp_path / "nothing")
    fetched = fetch_model_folder("models:/distill-teacher@champion", tmp_path / "imported", str(project), cfg.tracking)
    result = teacher.run(cfg, project / "data/prepared", tmp_path / "t", imported_dir=fetched)
    champion = registry(project).get_model_version_by_alias("distill-teacher", "champion")
    assert result.fingerprint == champion.tags["fingerprint"] == read_card(fetched)["fingerprint"]
    assert result.source == "models:/distill-teacher@champion"


def test_a_run_on_another_data_set_sets_the_old_tasks_monitoring_state_aside(harness, project):
    """The user tried the built-in data, then runs their own file in the same project: the monitor's state of
    the old task (its kept traffic, hold-out, canary, incidents) moves to data/archive, the new data is prepared
    without that traffic, and the old champion, which answers other labels, is not compared."""
    from distill.data import read_split
    from flows.monitor import drift_monitor
    from flows.pipeline import distill_pipeline
    from tests.conftest import make_examples

    incoming = sorted((project / "data/incoming").glob("*.parquet"))
    assert incoming and (project / "data/canary.parquet").is_file()  # the monitor's state, from the tests above
    traffic = set(pd.concat([pd.read_parquet(p) for p in incoming])["text"])
    old = registry(project).get_model_version_by_alias("distill-student", "champion").version
    frame = make_examples(per_label=20, seed=5)
    frame = frame.assign(text="ticket: " + frame["text"], label="queue-" + frame["label"])
    frame.to_csv(project / "data/raw/tickets.csv", index=False)

    summary = distill_pipeline(project_dir=str(project), monitor=False, overrides=["data.path=data/raw/tickets.csv"])

    assert summary["completed"] is True
    (archive,) = list((project / "data/archive").iterdir())
    assert sorted(p.name for p in (archive / "data/incoming").glob("*.parquet")) == [p.name for p in incoming]
    assert (archive / "data/canary.parquet").is_file() and (archive / "data/production_log/requests").is_dir()
    assert not list((project / "data/incoming").glob("*.parquet")) and not (project / "data/production_log").exists()
    transfer = set(read_split(project / "data/prepared", "transfer")["text"])
    assert transfer and not transfer & traffic  # the old task's traffic is not the new teacher's to label
    skipped = f"champion v{old} was distilled for other labels"
    assert any(r.startswith(skipped) for r in summary["decision"]["reasons"]), summary["decision"]["reasons"]
    assert summary["promoted"]
    # the new champion answers this data's labels: the monitor watches it, from a fresh canary
    watched = drift_monitor(project_dir=str(project), redistill=False)
    assert "skipped" not in watched and watched["champion_version"] != old
    assert set(pd.read_parquet(project / "data/canary.parquet")["label"]) <= set(frame["label"])
