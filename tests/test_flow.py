"""The lifecycle end to end through Prefect, DVC, MLflow, GE and Evidently, on a tiny config.

One project copy is shared by the tests in order: a cold run, a warm run that
must skip the expensive stages, and a run whose teacher gate fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.tiny_project import tiny_project

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A fresh copy of the project, as a clone would have it, with tiny params."""
    return tiny_project(tmp_path_factory.mktemp("project"),
                        data={"gold_per_label": 12, "transfer_size": 200, "window_size": 120},
                        train={"epochs": 2}, monitor={"embedding_drift": True, "canary_size": 200})


def registry(project: Path):
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    return MlflowClient()


def test_cold_run_goes_through_the_whole_lifecycle(harness, project):
    from flows.pipeline import distill_pipeline

    summary = distill_pipeline(project_dir=str(project), monitor=True)
    assert summary["completed"] is True
    client = registry(project)
    experiment = client.get_experiment_by_name("distill").experiment_id
    teacher_version = client.get_model_version_by_alias("distill-teacher", "champion")
    assert client.get_run(teacher_version.run_id).info.experiment_id == experiment
    champion = client.get_model_version_by_alias("distill-student", "champion")
    assert champion.tags["teacher_fingerprint"] and champion.tags["teacher_outputs_md5"]
    # Teacher outputs are versioned by DVC and pushed to the local remote.
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    outs = {o["path"]: o["md5"] for o in lock["stages"]["label"]["outs"]}
    assert outs["data/teacher_outputs/logits.parquet"]
    assert any((project / ".dvcstore").rglob("*")), "nothing was pushed to the DVC remote"
    for report in ("reports/evaluate/report.html", "reports/audit/audit.html",
                   "gx/uncommitted/data_docs/local_site/index.html"):
        assert (project / report).is_file(), report
    monitor = summary["monitor"]
    flagged = {w["window"]: w["drift"] for w in monitor["windows"]}
    assert flagged == {0: False, 1: False, 2: True}, flagged
    assert (project / "reports/monitor/window-0002.html").is_file()
    assert monitor["redistillation"]["completed"] is True
    assert monitor["redistillation"]["skipped_stages"] == ["teacher"], "re-distillation must reuse the teacher"


def test_warm_run_skips_labelling_and_training(harness, project):
    from flows.pipeline import distill_pipeline

    summary = distill_pipeline(project_dir=str(project), monitor=True)
    assert {"prepare", "teacher", "label", "train_student", "train_baseline", "evaluate"} <= set(
        summary["skipped_stages"])
    assert summary["newly_registered"] is False
    assert summary["monitor"]["new_incidents"] == [], "an incident already re-distilled must not trigger again"


def test_sweep_trains_every_grid_point_and_applies_the_best_on_validation(harness, project):
    from distill.config import load_config, write_overrides
    from flows.sweep import distill_sweep

    write_overrides(project / "params.yaml", ["sweep.temperatures=[1.0, 4.0]", "sweep.alphas=[0.5]",
                                              "sweep.epochs=1"])
    result = distill_sweep(project_dir=str(project), apply=True)
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
    from distill.config import write_overrides
    from flows.pipeline import distill_pipeline

    client = registry(project)
    experiment = client.get_experiment_by_name("distill").experiment_id
    teacher_version = client.get_model_version_by_alias("distill-teacher", "champion")
    assert client.get_run(teacher_version.run_id).info.experiment_id == experiment
    champion = client.get_model_version_by_alias("distill-student", "champion").version
    versions = len(client.search_model_versions("name = 'distill-student'"))
    write_overrides(project / "params.yaml", ["teacher.min_accuracy=1.0"])
    summary = distill_pipeline(project_dir=str(project), monitor=False)
    assert summary["completed"] is False
    assert not summary["teacher_gate"]["passed"]
    assert client.get_model_version_by_alias("distill-student", "champion").version == champion
    assert len(client.search_model_versions("name = 'distill-student'")) == versions


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
    assert result.fingerprint == read_card(project / "models/teacher")["fingerprint"]
    assert result.source == "models:/distill-teacher@champion"
