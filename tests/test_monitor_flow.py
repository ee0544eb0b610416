"""The monitor flow on a tiny project (in-process, Prefect test harness): simulated traffic through the
serving path, drift on the shifted window only, one incident, then a teacher version change that
re-distils from the new teacher and compares the former champion with the new student."""

from __future__ import annotations

import pytest

from tests.tiny_project import tiny_project

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(harness, tmp_path_factory):
    from distill.config import write_overrides
    from flows.pipeline import distill_pipeline

    root = tiny_project(tmp_path_factory.mktemp("monitored"))
    write_overrides(root / "params.yaml", ["monitor.embedding_drift=true"])
    assert distill_pipeline(project_dir=str(root), monitor=False)["completed"]
    return root


@pytest.fixture
def events(monkeypatch):
    import flows.monitor

    seen: list[dict] = []
    monkeypatch.setattr(flows.monitor, "emit_event", lambda **kw: seen.append(kw))
    return seen


def test_shifted_window_is_flagged_once(project, events):
    from flows.monitor import DRIFT_EVENT, drift_monitor
    from monitoring.production import read_log

    summary = drift_monitor(project_dir=str(project), redistill=False)
    assert summary["served"] == 300
    assert {w["window"]: w["drift"] for w in summary["windows"]} == {0: False, 1: False, 2: True}
    assert all("embedding_distance" in w["column_scores"] for w in summary["windows"])
    assert not summary["teacher"]["changed"], summary["teacher"]
    assert summary["teacher"]["canary_size"] > 0
    assert [e["event"] for e in events] == [DRIFT_EVENT]
    payload = events[0]["payload"]
    assert payload["windows"] == [2] and payload["reports"][0].startswith("file://")
    log = read_log(project / "data/production_log")
    assert len(log) == 300 and log["true_label"].notna().all() and set(log["source"]) == {"simulated"}
    assert list((project / "data/incoming").glob("window-0002-*.parquet"))
    assert list((project / "data/production_log/holdout").glob("window-0002-*.parquet"))
    assert (project / "reports/monitor/window-0002.json").is_file()

    again = drift_monitor(project_dir=str(project), redistill=False)
    assert again["served"] == 0 and again["new_incidents"] == [] and len(events) == 1


def test_teacher_version_change_redistils_from_the_new_teacher(project, events):
    import mlflow
    from mlflow import MlflowClient

    from distill.config import load_config
    from distill.models import read_card
    from flows.monitor import TEACHER_EVENT, drift_monitor, incidents_dir
    from monitoring import alerts
    from tasks import registry

    for path in incidents_dir(str(project)).glob("*.json"):  # as if the drift incident's run had finished
        alerts.resolve_incident(incidents_dir(str(project)), path.stem, {"simulated": True})
    cfg = load_config(project / "params.yaml")
    registry.configure(cfg.tracking, str(project))
    card = read_card(project / "models/teacher")
    with mlflow.start_run(run_name="teacher-update"):
        new = registry.log_classifier(project / "models/teacher", cfg.promote.teacher_model,
                                      {"fingerprint": card["fingerprint"], "source": "update"}, "updated teacher")
    MlflowClient().set_registered_model_alias(cfg.promote.teacher_model, "champion", new)

    summary = drift_monitor(project_dir=str(project), redistill=True)
    assert [e["event"] for e in events] == [TEACHER_EVENT]
    assert events[0]["payload"]["teacher_version"] == new and events[0]["payload"]["reason"] == "teacher"
    result = summary["redistillation"]
    assert result["completed"] and result["reason"] == "teacher"
    assert load_config(project / "params.yaml").teacher.path == "models:/distill-teacher@champion"
    student = MlflowClient().get_model_version(cfg.promote.student_model, result["student_version"])
    assert student.tags["teacher_version"] == new
    comparison = result["comparison"]
    for key in ("gold_test.champion_accuracy", "gold_test.challenger_accuracy",
                "shifted.champion_accuracy", "shifted.challenger_accuracy", "shifted.teacher_accuracy"):
        assert 0.0 <= comparison[key] <= 1.0, comparison
    # the known-label part of the slice is a subset: never larger than the whole slice
    assert comparison.get("shifted_known.size", 0) <= comparison["shifted.size"]
    # the shifted hold-out went through the champion gate before promotion, not only into the figures
    assert any("holdout=shifted" in reason for reason in result["decision"]["reasons"]), result["decision"]
    assert student.tags["monitor.shifted.challenger_accuracy"]
