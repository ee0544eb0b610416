"""The command line turns bad input into one clear line and exit code 2."""

from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


def test_invalid_params_value_names_the_key(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  kd_temperature: -1\n")
    result = runner.invoke(app, ["prepare", "--params", str(params), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "train.kd_temperature" in result.output
    assert not (tmp_path / "out").exists()


def test_missing_data_file_names_the_file(tmp_path):
    (tmp_path / "params.yaml").write_text("")  # every default
    result = runner.invoke(app, ["prepare", "--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "out"),
                                 "--set", f"data.path={tmp_path / 'tickets.csv'}"])
    assert result.exit_code == 2
    assert "tickets.csv: data file not found" in " ".join(result.output.split())


def test_missing_teacher_folder_names_the_folder(tmp_path, tiny_cfg):
    from distill import data

    data.run(tiny_cfg, tmp_path / "prepared")
    (tmp_path / "params.yaml").write_text("")
    result = runner.invoke(app, ["teacher", "--prepared", str(tmp_path / "prepared"), "--out", str(tmp_path / "t"),
                                 "--params", str(tmp_path / "params.yaml"),
                                 "--teacher-path", str(tmp_path / "gone")])
    assert result.exit_code == 2
    assert "gone: folder not found" in " ".join(result.output.split())


def test_label_refuses_a_teacher_that_failed_its_gate(tmp_path, tiny_teacher):
    import json

    gate = tmp_path / "gate.json"
    gate.write_text(json.dumps({"passed": False, "reasons": ["teacher accuracy 0.412 < 0.75 on 120 gold_test rows"]}))
    out = tmp_path / "logits.parquet"
    result = runner.invoke(app, ["label", "--gate", str(gate), "--teacher", str(tiny_teacher), "--prepared",
                                 str(tmp_path / "prepared"), "--out", str(out)])
    output = " ".join(result.output.split())
    assert result.exit_code == 2, output
    assert "failed its gate" in output and "accuracy 0.412 < 0.75" in output and "teacher.min_accuracy" in output
    assert not out.exists()


def test_label_refuses_a_verdict_about_another_teacher(tmp_path, tiny_teacher):
    import json

    gate = tmp_path / "gate.json"
    gate.write_text(json.dumps({"passed": True, "reasons": [], "fingerprint": "0" * 64}))
    result = runner.invoke(app, ["label", "--gate", str(gate), "--teacher", str(tiny_teacher), "--prepared",
                                 str(tmp_path / "prepared"), "--out", str(tmp_path / "logits.parquet")])
    assert result.exit_code == 2 and "judged another teacher" in " ".join(result.output.split())


def test_a_stage_writes_its_result_where_the_flow_reads_it(tmp_path, tiny_csv):
    import json

    import yaml

    from distill.data import read_split
    from tests.conftest import tiny_params

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params(tiny_csv)))
    out, result_file = tmp_path / "prepared", tmp_path / "stages/prepare.json"
    result = runner.invoke(app, ["prepare", "--params", str(params), "--out", str(out), "--incoming",
                                 str(tmp_path / "incoming"), "--result", str(result_file)])
    assert result.exit_code == 0, result.output
    written = json.loads(result_file.read_text())
    assert written["sizes"]["gold_test"] == len(read_split(out, "gold_test")) > 0
    assert written["report"]["rows_read"] > 0


def test_a_missing_params_file_is_one_line_naming_it(tmp_path):
    result = runner.invoke(app, ["prepare", "--params", str(tmp_path / "parms.yaml"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "parms.yaml: params file not found" in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()


def test_fetching_a_model_the_registry_does_not_have_is_one_line(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(f"tracking:\n  tracking_uri: sqlite:///{tmp_path / 'mlflow.db'}\n")
    result = runner.invoke(app, ["fetch-teacher", "models:/nope@champion", "--params", str(params), "--out",
                                 str(tmp_path / "fetched")])
    output = " ".join(result.output.split())
    assert result.exit_code == 2 and "error:" in output and "nope" in output, output
    assert "Traceback" not in output and not (tmp_path / "fetched").exists()


def test_an_unreachable_tracking_server_is_one_line_and_does_not_retry_for_minutes(tmp_path, monkeypatch):
    import socket
    import time

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    (tmp_path / "params.yaml").write_text("")
    start = time.monotonic()
    result = runner.invoke(app, ["registry", "--params", str(tmp_path / "params.yaml")])
    output = " ".join(result.output.split())
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), output
    assert f"error: API request to http://127.0.0.1:{port}" in output and "is the tracking server up?" in output
    assert time.monotonic() - start < 60  # MLflow's own default retries for about four minutes


def test_the_command_sets_a_short_openmp_spin_before_torch_loads_and_a_users_value_wins():
    """Spinning OpenMP threads collapse training when another process is busy (benchmarks/shared_cpu.py)."""
    import os
    import subprocess
    import sys

    probe = "import os, sys, cli; assert 'torch' not in sys.modules; import cli.main; print(os.environ['GOMP_SPINCOUNT'])"
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    assert subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "10000"
    assert subprocess.run([sys.executable, "-c", probe], env={**env, "GOMP_SPINCOUNT": "5"}, capture_output=True,
                          text=True, check=True).stdout.strip() == "5"
