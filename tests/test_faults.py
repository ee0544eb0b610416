"""Faults: a killed training run resumes from its checkpoint and ends bitwise where an uninterrupted one ends;
cached teacher outputs are verified by hash; a crash never leaves a half-written file."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from distill import checkpoint, data, label, students, teacher
from distill.config import config_from_dict
from distill.io import atomic_dir, atomic_file
from distill.label import TeacherOutputError
from tests.conftest import tiny_params
from tests.processes import kill_once_written, one_stage_project

ROOT = Path(__file__).resolve().parents[1]


def long_params(data_path: Path, **train) -> dict:
    """Tiny params with a run long enough to be interrupted (patience never stops it)."""
    params = tiny_params(data_path)
    params["train"].update({"epochs": 8, "eval_every": 2, "patience": 1000, "checkpoint_every": 4, **train})
    return params


@pytest.fixture
def labelled(tiny_csv, tiny_teacher, tmp_path):
    cfg = config_from_dict(long_params(tiny_csv))
    data.run(cfg, tmp_path / "prepared")
    teacher.run(cfg, tmp_path / "prepared", tmp_path / "teacher", teacher_path=tiny_teacher)
    label.run(cfg, tmp_path / "prepared", tmp_path / "teacher", tmp_path / "logits.parquet")
    return cfg, tmp_path / "prepared", tmp_path / "teacher", tmp_path / "logits.parquet"


class Crash(Exception):
    pass


def test_interrupted_run_resumes_and_ends_bitwise_like_an_uninterrupted_one(labelled, tmp_path):
    cfg, prepared, teacher_dir, outputs = labelled
    plain = cfg.model_copy(update={"train": cfg.train.model_copy(update={"checkpoint_every": 0})})
    reference = students.run_student(plain, prepared, teacher_dir, outputs, tmp_path / "reference")

    def crash_at_step_10(step, metrics):
        if step == 10:
            raise Crash

    out = tmp_path / "student"
    with pytest.raises(Crash):
        students.run_student(cfg, prepared, teacher_dir, outputs, out, on_log=crash_at_step_10)
    ckpt = checkpoint.checkpoint_dir_for(out)
    assert (ckpt / "latest" / "state.json").is_file() and not out.exists()
    state = yaml.safe_load((ckpt / "latest" / "state.json").read_text())
    assert state["progress"]["step"] == 8 and state["batches"]["epoch"] == 1
    assert sorted(p.name for p in (ckpt / "latest").iterdir()) == [
        "best.safetensors", "model.safetensors", "objective.safetensors", "optimizer.safetensors",
        "rng.safetensors", "state.json"]

    logged = []
    resumed = students.run_student(cfg, prepared, teacher_dir, outputs, out, on_log=lambda s, m: logged.append(s))
    assert logged[0] == 10, "the resumed run starts after the checkpoint's step"
    assert resumed.fingerprint == reference.fingerprint, "weights differ from the uninterrupted run"
    assert (resumed.steps, resumed.best_val_accuracy) == (reference.steps, reference.best_val_accuracy)
    assert not ckpt.exists(), "checkpoints are removed once the output is written"


def test_checkpoint_of_another_run_is_not_resumed(labelled, tmp_path):
    cfg, prepared, teacher_dir, outputs = labelled
    out = tmp_path / "student"

    def crash(step, metrics):
        if step == 6:
            raise Crash

    with pytest.raises(Crash):
        students.run_student(cfg, prepared, teacher_dir, outputs, out, on_log=crash)
    other = cfg.model_copy(update={"train": cfg.train.model_copy(update={"learning_rate": 1e-3})})
    logged = []
    students.run_student(other, prepared, teacher_dir, outputs, out, on_log=lambda s, m: logged.append(s))
    assert logged[0] == 2, "a changed setting starts from step 0"


def test_training_killed_with_sigkill_resumes_to_the_same_model(labelled, tmp_path):
    """The real thing: `distill train-student` in a subprocess, killed with SIGKILL once a checkpoint exists."""
    cfg, prepared, teacher_dir, outputs = labelled
    params = long_params(Path(cfg.data.path), epochs=12, checkpoint_every=5)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "distill.stages", "train-student", "--prepared", str(prepared), "--teacher",
                str(teacher_dir), "--outputs", str(outputs), "--out", str(out), "--params",
                str(tmp_path / "params.yaml")]

    out = tmp_path / "killed"
    ckpt = checkpoint.checkpoint_dir_for(out) / "latest" / "state.json"
    returncode = kill_once_written(command(out), env, ckpt)
    assert returncode == -signal.SIGKILL and ckpt.is_file() and not out.exists(), "killed too late"
    step = yaml.safe_load(ckpt.read_text())["progress"]["step"]

    resumed = subprocess.run(command(out), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"from the checkpoint at step {step}" in resumed.stderr
    reference = subprocess.run(command(tmp_path / "reference"), env=env, capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr[-2000:]
    assert "resuming" not in reference.stderr
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "reference" / "model.safetensors").read_bytes()
    assert not checkpoint.checkpoint_dir_for(out).exists()


# --- teacher outputs verified by hash --------------------------------------------------------------

def flip_byte_in_logits(path: Path) -> None:
    """Flip one byte inside the logits column's data pages (not the footer)."""
    raw = bytearray(path.read_bytes())
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    column = next(meta.row_group(0).column(i) for i in range(meta.num_columns)
                  if meta.row_group(0).column(i).path_in_schema.startswith("logits"))
    start = column.dictionary_page_offset or column.data_page_offset
    at = start + column.total_compressed_size // 2
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))


def test_a_flipped_byte_in_the_teacher_outputs_is_refused(labelled):
    cfg, _, teacher_dir, outputs = labelled
    flip_byte_in_logits(outputs)
    with pytest.raises(TeacherOutputError, match=r"dvc repro label"):
        label.read_outputs(outputs)


def test_a_truncated_teacher_output_file_is_refused(labelled):
    _, _, _, outputs = labelled
    outputs.write_bytes(outputs.read_bytes()[: outputs.stat().st_size // 2])
    with pytest.raises(TeacherOutputError, match=r"damaged or incomplete.*dvc repro label"):
        label.read_outputs(outputs)


def test_changed_logits_with_intact_pages_are_refused(labelled):
    """Rewritten by hand, keeping the old metadata: the content hash no longer matches."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _, _, _, outputs = labelled
    table = pq.read_table(outputs)
    logits = table.column("logits").combine_chunks()
    values = logits.flatten().to_numpy().copy()
    values[0] += 1.0
    table = table.set_column(table.schema.get_field_index("logits"), "logits",
                             pa.FixedSizeListArray.from_arrays(pa.array(values), logits.type.list_size))
    pq.write_table(table, outputs)
    with pytest.raises(TeacherOutputError, match="content hash"):
        label.read_outputs(outputs)


def test_the_label_stage_recomputes_a_corrupted_cache(labelled):
    cfg, prepared, teacher_dir, outputs = labelled
    _, good, _ = label.read_outputs(outputs)
    flip_byte_in_logits(outputs)
    result = label.run(cfg, prepared, teacher_dir, outputs)
    assert not result.reused
    _, again, _ = label.read_outputs(outputs)
    assert (again == good).all()


# --- atomic writes ---------------------------------------------------------------------------------

def test_a_crash_inside_an_atomic_write_leaves_the_old_file_and_no_temporaries(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(Crash), atomic_file(target) as handle:
        handle.write("half")
        raise Crash
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]
    folder = tmp_path / "model"
    with atomic_dir(folder) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(Crash), atomic_dir(folder) as tmp:
        (tmp / "a").write_text("2")
        raise Crash
    assert (folder / "a").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["model", "report.json"]


def test_the_runs_figures_survive_a_tracking_server_that_is_down_for_a_while(harness, tmp_path, monkeypatch):
    """The registry tasks retry a transient failure (tasks/retry.py): the server comes up only after the
    task's first attempt has failed, and the run and its figures still arrive."""
    import threading

    from mlflow import MlflowClient

    from distill.config import PipelineConfig, TrackingConfig
    from tasks import registry, tracking
    from tests.mlflow_server import free_port, mlflow_server

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # no retries inside MLflow: the task's count
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = PipelineConfig(tracking=TrackingConfig(tracking_uri=uri, experiment="outage"))
    attempts, up, done = [], threading.Event(), threading.Event()

    def server_comes_back() -> None:
        while not attempts:  # down until the first attempt has failed
            time.sleep(0.2)
        with mlflow_server(tmp_path / "server", port=port):
            up.set()
            done.wait(300)

    real_configure = registry.configure  # each attempt of the run logging starts by reaching the server
    monkeypatch.setattr(tracking, "configure", lambda *a, **k: attempts.append(up.is_set()) or real_configure(*a, **k))
    thread = threading.Thread(target=server_comes_back, daemon=True)
    thread.start()
    try:
        task = tracking.log_run.with_options(retries=24, retry_delay_seconds=5)  # the server takes ~10-60 s to start
        run_id = task(cfg, {"eval": {"student": {"accuracy": 0.93}}}, {"reason": "outage"}, [], str(tmp_path))
        # The first attempt met no server (it starts only after that attempt began): the run arrived later.
        assert attempts[0] is False and len(attempts) >= 2, attempts
        run = MlflowClient(uri).get_run(run_id)
        assert run.data.metrics["eval.student.accuracy"] == 0.93
        assert run.data.tags["reason"] == "outage"
    finally:
        done.set()
        thread.join(60)


def test_a_diverging_loss_stops_training_with_the_settings_to_change(tmp_path):
    """Non-finite teacher outputs (or a runaway learning rate) make the loss NaN: training stops at the
    first check and says what to change, instead of ending with NaN weights and exit 0."""
    import numpy as np

    from distill.trainer import TrainData, TrainingError, TrainSettings, train
    from tests.ddp_train import tiny_classifier
    from tests.conftest import make_examples

    clf = tiny_classifier()
    frame = make_examples(per_label=8, seed=1)
    ids = np.array([clf.labels.index(v) for v in frame["label"]])
    logits = np.full((len(frame), len(clf.labels)), np.nan, dtype=np.float32)
    settings = TrainSettings(max_steps=8, batch_size=8, learning_rate=3e-3, eval_every=2, kd_temperature=2.0,
                             alpha=0.5, device="cpu")
    with pytest.raises(TrainingError, match=r"not finite at step 2.*train.learning_rate"):
        train(clf, TrainData(frame["text"].tolist(), ids, logits), TrainData(frame["text"].tolist()[:8], ids[:8]),
              settings)


def test_an_infinite_setting_is_refused_at_load():
    from distill.config import ConfigError, load_config

    for key in ("train.weight_decay", "train.kd_temperature", "teacher.learning_rate"):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.") + ": Input should be a finite number"):
            load_config(Path("/nonexistent/params.yaml"), [f"{key}=.inf"], missing_ok=True)


STAGE = """\
import json, pathlib, sys, yaml
params = yaml.safe_load(open("params.yaml"))
out = pathlib.Path("out")
out.mkdir()
(out / "weights.bin").write_bytes(bytes(range(256)) * params["size"])
if params["refuse"]:
    sys.exit("refused: size must be small")
pathlib.Path("report.json").write_text(json.dumps({"size": params["size"]}))
"""


def test_a_stage_that_fails_under_dvc_leaves_its_previous_outputs_byte_identical(harness, tmp_path):
    from prefect import flow

    from tasks.dvc import KEEP, StageFailed, repro

    project = one_stage_project(tmp_path / "project", "make", STAGE, {"params.yaml": "size: 1\nrefuse: false\n"}, {
        "deps": ["stage.py"], "params": ["size", "refuse"], "outs": ["out", {"report.json": {"cache": False}}]})

    @flow
    def make() -> None:
        repro("make", str(project))

    make()
    before = {p: p.read_bytes() for p in (project / "out/weights.bin", project / "report.json")}
    lock = (project / "dvc.lock").read_bytes()
    (project / "params.yaml").write_text("size: 2\nrefuse: true\n")  # a value the stage refuses
    with pytest.raises(StageFailed, match="refused: size must be small"):
        make()
    assert {p: p.read_bytes() for p in before} == before  # the cached folder and the uncached report
    assert (project / "dvc.lock").read_bytes() == lock and not (project / KEEP / "make").exists()
    (project / "params.yaml").write_text("size: 1\nrefuse: false\n")
    status = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=project, capture_output=True, text=True)
    assert "up to date" in status.stdout  # DVC sees the outputs its lock describes


def test_two_writers_of_one_output_the_second_is_refused_and_a_killed_ones_leftovers_are_cleaned(tmp_path):
    from distill.io import OutputBusy

    target = tmp_path / "models" / "student"
    (tmp_path / "models").mkdir()
    left = [tmp_path / "models" / ".student.ab12cd_9", tmp_path / "models" / ".student.old"]
    for stale in left:  # what a writer killed mid-write leaves
        stale.mkdir()
        (stale / "model.safetensors").write_bytes(b"half")
    keep = tmp_path / "models" / ".student_shape.json.x1y2z3w4"  # another output's temporary: not ours
    keep.write_text("{}")
    with atomic_dir(target) as tmp:
        assert not any(p.exists() for p in left) and keep.exists()
        (tmp / "weights").write_text("first")
        # A second writer in another process is refused at once, naming the output and the holder.
        script = (f"from distill.io import atomic_dir\n"
                  f"with atomic_dir({str(target)!r}) as t:\n    (t / 'weights').write_text('second')\n")
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode != 0 and "OutputBusy" in done.stderr
        assert f"student: another distill command (pid {os.getpid()} on {socket.gethostname()}) is writing it" \
            in done.stderr
    assert (target / "weights").read_text() == "first"
    with pytest.raises(OutputBusy), atomic_dir(target), atomic_dir(target):
        pass  # the lock is per output, held for the whole write


def test_a_stage_command_dies_with_the_process_that_started_it(tmp_path):
    """`dvc repro` killed: its `distill` child used to live on, writing an output while a rerun started."""
    marker = tmp_path / "child.pid"
    (tmp_path / "child.py").write_text(
        "import os, sys, time\nfrom distill.io import die_with_parent\ndie_with_parent()\n"
        "open(sys.argv[1], 'w').write(str(os.getpid()))\ntime.sleep(60)\n")
    (tmp_path / "parent.py").write_text(
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, sys.argv[1], sys.argv[2]])\ntime.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, str(tmp_path / "parent.py"), str(tmp_path / "child.py"), str(marker)],
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    child = int(marker.read_text())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the child outlived its killed parent")


SLOW_STAGE = """\
import json, os, pathlib, subprocess, sys, time
if json.loads(pathlib.Path("params.json").read_text())["hang"]:  # hangs, with a worker of its own
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    pathlib.Path("pids").write_text(json.dumps([os.getpid(), worker.pid]))
    time.sleep(600)
pathlib.Path("out.txt").write_text("done")
"""


def test_a_stage_past_its_time_limit_is_stopped_with_what_it_started_and_its_outputs_kept(harness, tmp_path):
    import json

    import psutil
    from prefect import flow

    from tasks.dvc import StageTimedOut, repro

    project = one_stage_project(tmp_path / "project", "slow", SLOW_STAGE, {
        "params.json": '{"hang": false}', "params.yaml": "timeouts:\n  stage_s: 20\n"}, {
        "deps": ["stage.py", "params.json"], "outs": [{"out.txt": {"cache": False}}]})

    @flow
    def slow() -> None:
        repro("slow", str(project))

    slow()
    (project / "params.json").write_text('{"hang": true}')  # now the stage hangs
    start = time.monotonic()
    with pytest.raises(StageTimedOut, match=r"ran past its 20 s \(timeouts.stage_s\)"):
        slow()
    assert time.monotonic() - start < 90
    assert (project / "out.txt").read_text() == "done"  # the last good output is back
    stage, child = json.loads((project / "pids").read_text())
    time.sleep(1)
    assert not psutil.pid_exists(stage) and not psutil.pid_exists(child), "a process of the stage outlived it"
