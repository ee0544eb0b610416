"""Security: safetensors only, no remote code, servers on 127.0.0.1, and secrets never written anywhere."""

from __future__ import annotations

import ast
import inspect
import logging
import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("distill", "flows", "tasks", "monitoring")
SECRET = "sk-planted-SECRET-7f3a9c"
NOTIFY_SECRET = "hook-SECRET-b41d2e"


def project_sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def calls(path: Path, name: str) -> list[ast.Call]:
    tree = ast.parse(path.read_text())
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == name]


def keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "<expr>"
    return None


def receiver(call: ast.Call) -> str:
    value = getattr(call.func, "value", None)
    return getattr(value, "id", getattr(value, "attr", ""))


def test_every_model_load_asks_for_safetensors():
    """Tokenizers hold no pickled code; model weights must come from *.safetensors only, or from the one
    GGUF file of the packaged LLM teacher (a GGUF file holds tensors and metadata, never pickle)."""
    offenders = [f"{path.relative_to(ROOT)}:{call.lineno} {receiver(call)}.from_pretrained"
                 for path in project_sources() for call in calls(path, "from_pretrained")
                 if "Tokenizer" not in receiver(call) and "Config" not in receiver(call)
                 and keyword(call, "use_safetensors") is not True and keyword(call, "gguf_file") is None]
    assert not offenders, f"model loads without use_safetensors=True: {offenders}"


def test_remote_code_is_never_trusted_and_nothing_is_unpickled():
    for path in project_sources():
        for name in ("from_pretrained", "pipeline"):
            for call in calls(path, name):
                assert keyword(call, "trust_remote_code") in (None, False), f"{path}:{call.lineno}"
        for call in calls(path, "load"):
            if receiver(call) == "torch":
                assert keyword(call, "weights_only") is True, f"{path}:{call.lineno}: torch.load without weights_only"
        text = path.read_text()
        assert "import pickle" not in text and "cloudpickle" not in text, path


def test_servers_bind_127_0_0_1_by_default():
    from cli import main as cli
    from monitoring import serve

    assert inspect.signature(serve.make_server).parameters["host"].default == "127.0.0.1"
    assert inspect.signature(cli.serve).parameters["host"].default == "127.0.0.1"
    for path in project_sources():
        assert "0.0.0.0" not in path.read_text(), f"{path} binds every interface"


def test_a_planted_secret_appears_in_no_output(tiny_cfg, tiny_teacher, tmp_path, monkeypatch, caplog, capfd):
    """Secrets live in the environment: run the stages, log the run to MLflow, send an alert, then grep all."""
    from distill import audit, data, evaluate, label, students, teacher
    from monitoring.alerts import notify
    from tasks import tracking

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("DISTILL_TEACHER_API_KEY", SECRET)
    monkeypatch.setenv("DISTILL_NOTIFY_URL", f"json://127.0.0.1:{port}/{NOTIFY_SECRET}")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # INFO is the level `distill` and the flows configure. At DEBUG, apprise logs the whole notify URL
    # ("JSON POST URL: http://host/<secret path>"); see docs/bad_input.md's security notes.
    caplog.set_level(logging.INFO)
    cfg = tiny_cfg.model_copy(update={"tracking": tiny_cfg.tracking.model_copy(
        update={"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})})
    out = tmp_path / "run"
    data.run(cfg, out / "prepared")
    teacher.run(cfg, out / "prepared", out / "teacher", teacher_path=tiny_teacher)
    label.run(cfg, out / "prepared", out / "teacher", out / "logits.parquet")
    students.run_student(cfg, out / "prepared", out / "teacher", out / "logits.parquet", out / "student")
    students.run_baseline(cfg, out / "prepared", out / "teacher", out / "baseline")
    result = evaluate.run(cfg, out / "prepared", out / "teacher", out / "student", out / "baseline", out / "eval")
    audit.run(cfg, out / "eval" / "predictions.parquet", out / "audit")
    monkeypatch.chdir(tmp_path)
    tracking.log_run.fn(cfg, result.metrics, {"stage": "security-test"}, [str(out / "eval")], str(tmp_path))
    assert notify("DISTILL_NOTIFY_URL", "drift", "window 3 drifted") is False  # nobody listens on that port

    leaks = [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()
             and any(s.encode() in p.read_bytes() for s in (SECRET, NOTIFY_SECRET))]
    assert (tmp_path / "mlflow.db").is_file() and list((tmp_path / "mlartifacts").rglob("*.html"))
    assert not leaks, f"the planted secret was written to {leaks}"
    captured = capfd.readouterr()
    for stream in (captured.out, captured.err, caplog.text):
        assert SECRET not in stream and NOTIFY_SECRET not in stream


def test_credentials_never_ride_in_a_url_setting_and_leave_the_environment_uri(mlflow_server_uri, tmp_path,
                                                                                 monkeypatch, capfd):
    import json
    import os

    import pytest
    from mlflow import MlflowClient

    from distill.config import ConfigError, PipelineConfig, TrackingConfig, load_config
    from tasks import tracking

    password = "PASSWORD-planted-91c2"
    for key, where in (("tracking.tracking_uri", "MLFLOW_TRACKING_USERNAME"), ("lm.api.base_url", "api_key_env")):
        extra = ["lm.api.model=teacher"] if key.startswith("lm") else []
        with pytest.raises(ConfigError, match=rf"{key}: .*user name or password.*{where}") as refused:
            load_config(tmp_path / "none.yaml", [*extra, f"{key}=http://me:{password}@127.0.0.1:5000"],
                        missing_ok=True)
        assert password not in str(refused.value)

    # A password in MLFLOW_TRACKING_URI moves to MLflow's own variables before MLflow prints or records the URI.
    host = mlflow_server_uri.split("://", 1)[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://me:{password}@{host}")
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    capfd.readouterr()
    cfg = PipelineConfig(tracking=TrackingConfig(experiment="credentials"))
    run_id = tracking.log_run.fn(cfg, {"student": {"accuracy": 0.9}}, {"stage": "security-test"}, [], str(tmp_path))
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == password and os.environ["MLFLOW_TRACKING_USERNAME"] == "me"
    assert os.environ["MLFLOW_TRACKING_URI"] == mlflow_server_uri
    captured = capfd.readouterr()
    assert "View run" in captured.out + captured.err and password not in captured.out + captured.err
    run = MlflowClient().get_run(run_id)
    assert password not in json.dumps(run.data.params) + json.dumps(run.data.tags)
