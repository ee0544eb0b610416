"""Scale-out: DDP training under torchrun matches one process; sharded labelling merges to the same bytes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distill import data, label, teacher
from distill.config import config_from_dict
from tests.conftest import tiny_params

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "ddp_train.py"
# Two ranks see the same global batch, split by DistributedSampler (8 + 8 rows); DDP averages the two
# gradients. Only the order of float additions differs (per-rank padding, the all-reduce), so weights
# agree to float32 rounding: we measured a max abs difference of ~1e-7 after 16 steps.
WEIGHT_TOLERANCE = 1e-5
LOSS_TOLERANCE = 1e-5


def read_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_on_the_same_global_batch(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    one = subprocess.run([sys.executable, str(WORKER), str(tmp_path / "one")], env=env, capture_output=True,
                         text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(WORKER), str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    runs = {name: json.loads((tmp_path / name / "history.json").read_text()) for name in ("one", "two")}
    assert (runs["one"]["world"], runs["two"]["world"]) == (1, 2)
    assert not list(tmp_path.glob(".two.*")), "rank 1 left a temporary folder behind"
    for a, b in zip(runs["one"]["history"], runs["two"]["history"], strict=True):
        assert a["step"] == b["step"] and a["val_accuracy"] == b["val_accuracy"]
        assert abs(a["loss"] - b["loss"]) <= LOSS_TOLERANCE * max(1.0, abs(a["loss"]))
    w1, w2 = read_weights(tmp_path / "one"), read_weights(tmp_path / "two")
    worst = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
    print(f"max abs weight difference, 1 vs 2 processes: {worst:.3g}")
    assert worst <= WEIGHT_TOLERANCE


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def label_once(tiny_csv: Path, tiny_teacher: Path, tmp_path: Path) -> dict:
    """Prepared data, the teacher stage and a single-process label run under ``tmp_path``; the params."""
    params = tiny_params(tiny_csv)
    params["label"] = {"batch_size": 8}
    cfg = config_from_dict(params)
    data.run(cfg, tmp_path / "prepared")
    teacher.run(cfg, tmp_path / "prepared", tmp_path / "teacher", teacher_path=tiny_teacher)
    label.run(cfg, tmp_path / "prepared", tmp_path / "teacher", tmp_path / "one.parquet")
    return params


def test_labelling_in_shards_writes_the_same_bytes(tiny_csv, tiny_teacher, tmp_path):
    cfg = config_from_dict(label_once(tiny_csv, tiny_teacher, tmp_path))
    sharded = cfg.model_copy(update={"label": cfg.label.model_copy(update={"workers": 3})})
    label.run(sharded, tmp_path / "prepared", tmp_path / "teacher", tmp_path / "three.parquet")
    assert sha256(tmp_path / "one.parquet") == sha256(tmp_path / "three.parquet")


@pytest.mark.slow
def test_labelling_on_dask_writes_the_same_bytes(tiny_csv, tiny_teacher, tmp_path):
    """`distill label` (the command `dvc repro label` runs) with label.engine dask: a Prefect flow maps the
    shards onto a DaskTaskRunner's LocalCluster of two processes; the file equals the one-process file."""
    params = label_once(tiny_csv, tiny_teacher, tmp_path)
    params["label"] = {"batch_size": 8, "engine": "dask", "workers": 2}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONPATH": str(ROOT)}
    env.pop("PREFECT_API_URL", None)  # the stage starts Prefect's temporary server for its flow run
    log = tmp_path / "label.log"
    with log.open("w") as sink:  # a file, not a pipe: a leaked server holding a pipe would hang the test
        code = subprocess.run([sys.executable, "-m", "cli.main", "label", "--prepared", str(tmp_path / "prepared"),
                               "--teacher", str(tmp_path / "teacher"), "--out", str(tmp_path / "dask.parquet"),
                               "--params", str(tmp_path / "params.yaml")],
                              cwd=tmp_path, env=env, stdout=sink, stderr=subprocess.STDOUT, timeout=600).returncode
    output = log.read_text()
    assert code == 0, output[-4000:]
    assert "labelling in 2 shards on Dask (LocalCluster of 2 processes)" in output, output[-4000:]
    assert "label shard 0" in output and "label shard 1" in output, output[-4000:]
    assert sha256(tmp_path / "one.parquet") == sha256(tmp_path / "dask.parquet")
    server = re.search(r"Starting temporary server on http://127.0.0.1:(\d+)", output)
    assert server, output[-4000:]
    with socket.socket() as sock:  # stopped with the stage: no listener on its port any more
        # SO_REUSEADDR lets the bind past the closed connections' TIME_WAIT, never past a live listener
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", int(server.group(1))))


def test_shards_are_contiguous_ranges_of_the_batch_plan():
    assert label.shard_ranges(7, 3) == [(0, 2), (2, 5), (5, 7)]
    assert label.shard_ranges(2, 4) == [(0, 1), (1, 2)]
    plan = label.batch_plan(["aaa", "a", "aa", "aaaa", "b"], 2)
    assert [list(b) for b in plan] == [[1, 4], [2, 0], [3]]
