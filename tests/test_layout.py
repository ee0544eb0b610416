"""The paths the flows and the stage commands use (distill/layout.py) are the ones dvc.yaml declares."""

from pathlib import Path

import yaml

from distill.layout import LAYOUT, STAGE_OUTS

ROOT = Path(__file__).resolve().parents[1]


def outs(stage: dict) -> list[str]:
    return [next(iter(o)) if isinstance(o, dict) else o for key in ("outs", "metrics") for o in stage.get(key, [])]


def test_every_stage_writes_where_the_layout_says():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert set(STAGE_OUTS) <= set(stages), set(STAGE_OUTS) - set(stages)
    for name, path in STAGE_OUTS.items():
        assert str(path) in outs(stages[name]), f"dvc.yaml stage {name} does not write {path}: {outs(stages[name])}"
        assert f" {path}" in " ".join(stages[name]["cmd"].split()), f"dvc.yaml stage {name} is not given {path}"


def test_every_stage_declares_the_result_file_it_writes():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        if name == "config":
            continue
        assert str(LAYOUT.result(name)) in outs(stage), name
        assert f"--result {LAYOUT.result(name)}" in " ".join(stage["cmd"].split()), name


def test_every_stage_reads_the_runs_params_and_dvc_tracks_them():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        if name == "config":
            continue
        assert f"--params {LAYOUT.run_params}" in " ".join(stage["cmd"].split()), name
        files = [next(iter(p)) for p in stage.get("params", []) if isinstance(p, dict)]
        assert files == [str(LAYOUT.run_params)], (name, stage.get("params"))


def test_under_a_project_every_path_moves_and_the_derived_ones_follow(tmp_path):
    at = LAYOUT.under(tmp_path)
    assert at.teacher == tmp_path / "models/teacher" and at.gate == tmp_path / "reports/teacher/gate.json"
    assert at.predictions == tmp_path / "reports/evaluate/predictions.parquet"


def test_the_metrics_and_plot_files_are_kept_in_git_and_the_rest_of_the_reports_is_not():
    """`dvc metrics diff` and `dvc exp show` read metrics from git: a git-ignored metrics file compares nothing."""
    import subprocess

    dvc_yaml = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    tracked = list(dvc_yaml["metrics"]) + [path for plot in dvc_yaml["plots"] if isinstance(plot, dict)
                                           for spec in plot.values() for path in spec["y"]
                                           if path.startswith("reports/")]
    ignored = ["reports/evaluate/predictions.parquet", "reports/evaluate/report.html", "reports/audit/audit.json",
               "reports/stages/evaluate.json", "reports/evaluate/per_class.json"]
    check = subprocess.run(["git", "check-ignore", "--no-index", *tracked, *ignored], cwd=ROOT, capture_output=True,
                           text=True)
    assert sorted(check.stdout.split()) == sorted(ignored)
    assert "reports/evaluate/per_class.json" not in dvc_yaml["metrics"]
