"""A project that moves to another data set: the old task's monitoring state is set aside, whole."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from distill.config import PipelineConfig
from distill.gates import GateReport, decide_promotion
from monitoring.state import same_task, set_aside
from tasks.task_switch import other_task


def test_label_sets_of_one_task_and_of_another():
    intents = [f"Hass{i}" for i in range(30)]
    assert same_task(intents, intents + ["HassNew"])  # a label added
    assert same_task(intents, intents[:-1] + ["HassRenamed"])  # one renamed
    assert not same_task(intents, ["negative", "positive"])  # another data set
    assert not same_task(["a", "b", "c", "d"], ["a", "x", "y", "z"])  # one label of seven in common
    assert same_task([], [])


def project_with_state(root: Path, cfg: PipelineConfig) -> dict[str, bytes]:
    """A project folder as the monitor leaves it: windows kept for re-distillation (and the folder's README),
    the production log with its hold-out, the canary set, an incident; returns every state file's bytes."""
    files = {"data/incoming/window-0004-abc.parquet": pd.DataFrame({"text": ["turn on the lamp"]}),
             "data/production_log/requests/part-1.parquet": pd.DataFrame({"request_id": ["r1"]}),
             "data/production_log/holdout/window-0004-abc.parquet": pd.DataFrame({"request_id": ["r1"]}),
             cfg.monitor.canary_path: pd.DataFrame({"text": ["lights off"], "label": ["HassTurnOff"]}),
             "data/canary.replaced-20261208T000000.parquet": pd.DataFrame({"text": ["older"], "label": ["x"]})}
    for name, frame in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(root / name, index=False)
    (root / "data/incoming/README.md").write_text("kept windows")
    (root / "reports/monitor/incidents").mkdir(parents=True)
    (root / "reports/monitor/incidents/drift-abc.json").write_text("{}")
    return {name: (root / name).read_bytes() for name in [*files, "reports/monitor/incidents/drift-abc.json"]}


def test_the_monitoring_state_moves_whole_into_the_archive(tmp_path):
    cfg = PipelineConfig()
    before = project_with_state(tmp_path, cfg)
    archive, moved, outside = set_aside(cfg, tmp_path)
    assert archive is not None and archive.parent == tmp_path / "data/archive" and outside is None
    for name, content in before.items():  # nothing lost: the same bytes at the same relative path
        assert not (tmp_path / name).exists(), name
        assert (archive / name).read_bytes() == content, name
    assert (tmp_path / "data/incoming/README.md").is_file()  # the folder's own file stays
    assert len(moved) == 5  # the window, the log folder, the canary and the one it replaced, the incidents
    assert set_aside(cfg, tmp_path) == (None, [], None)  # nothing left to move


def test_a_production_log_outside_the_project_is_left_in_place(tmp_path):
    shared = tmp_path / "shared-log"
    (shared / "requests").mkdir(parents=True)
    cfg = PipelineConfig.model_validate({"monitor": {"log_path": f"file://{shared}"}})
    project = tmp_path / "project"
    project.mkdir()
    archive, moved, outside = set_aside(cfg, project)
    assert (archive, moved) == (None, []) and outside == shared.resolve() and (shared / "requests").is_dir()


def test_a_champion_of_other_labels_is_named_and_not_compared(tmp_path):
    prepared = tmp_path / "data/prepared"
    prepared.mkdir(parents=True)
    (prepared / "labels.json").write_text('{"labels": ["negative", "positive"], "source": "file"}')
    intents = [f"Hass{i}" for i in range(31)]
    why = other_task("2", intents, str(tmp_path))
    assert why.startswith("champion v2 was distilled for other labels (Hass0, Hass1, Hass2 and 28 more)")
    assert "this data's 2 (negative, positive)" in why
    assert other_task("2", ["negative", "positive"], str(tmp_path)) == ""
    assert other_task(None, [], str(tmp_path)) == ""
    assert other_task("2", [], str(tmp_path)) == ""  # a version without a signature: unknown, not another task
    assert other_task("2", intents, str(tmp_path / "elsewhere")) == ""  # nothing prepared there to compare with

    metrics = {"student": {"accuracy": 0.8, "latency_p50_ms": 1.0}, "teacher": {"accuracy": 0.85}}
    decision = decide_promotion(GateReport(True, []), metrics, True, [], PipelineConfig().promote, champion=None,
                                other_task=why)
    assert decision.passed and any(r.startswith(why + ": the champion gates") for r in decision.reasons)
    plain = decide_promotion(GateReport(True, []), metrics, True, [], PipelineConfig().promote)
    assert any(r.startswith("no champion yet") for r in plain.reasons)
