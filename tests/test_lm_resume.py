"""A killed LM training run resumes from its checkpoint and ends bitwise where an uninterrupted one ends.

The same means as the classifier's fault tests (tests/test_faults.py): a callback that raises after N
steps, and the real thing, ``distill lm-train`` killed with SIGKILL once a checkpoint exists.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distill import checkpoint
from distill.config import PipelineConfig, config_from_dict
from distill.lm import generate as gen
from distill.lm import topk as tk
from distill.lm import train as lm_train
from distill.lm.prompts import build_prompts, instructions, write_prompts
from tests.conftest import make_examples
from tests.lm_tiny import save_tiny_lm, tiny_tokenizer
from tests.processes import kill_once_written

LM = {"prompts": {"train_size": 12, "heldout_size": 4},
      "generate": {"max_new_tokens": 8, "batch_size": 4},
      "topk": {"k": 8, "batch_size": 4},
      "student": {"num_layers": 1, "hidden_size": 32, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 64}}


def lm_params(**train) -> dict:
    """Six epochs of three batches: 18 steps, a checkpoint every 4."""
    return {"lm": {**LM, "train": {"mode": "token", "epochs": 6, "batch_size": 4, "learning_rate": 1e-2,
                                   "device": "cpu", "checkpoint_every": 4, **train}}}


def lm_config(**train) -> PipelineConfig:
    return config_from_dict(lm_params(**train))


class Crash(Exception):
    pass


def crash_at(at: int):
    def on_log(step, metrics):
        if step == at:
            raise Crash
    return on_log


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """A tiny teacher, its prompts, completions and top-k cache."""
    root = tmp_path_factory.mktemp("lm_resume")
    examples = make_examples(per_label=12)
    teacher = save_tiny_lm(root / "teacher", tiny_tokenizer(examples["text"].tolist()), seed=1)
    cfg = lm_config()
    prompts = build_prompts(examples.iloc[::2], examples.iloc[1::2], cfg.lm.prompts, seed=0)
    labels = sorted(examples["label"].unique())
    write_prompts(root / "prompts.parquet", prompts, {**instructions(cfg.lm.prompts, labels), "labels": labels})
    gen.run(cfg, root / "prompts.parquet", teacher, root / "completions.parquet")
    tk.run(cfg, root / "completions.parquet", teacher, root / "topk.parquet")
    return root, teacher


def train(cfg: PipelineConfig, cached, out: Path, on_log=None) -> lm_train.LMTrainResult:
    root, teacher = cached
    return lm_train.run(cfg, root / "completions.parquet", teacher, out, root / "topk.parquet", on_log=on_log)


def weights(folder: Path) -> bytes:
    return (folder / "model.safetensors").read_bytes()


def test_killed_lm_training_resumes_and_ends_bitwise_like_an_uninterrupted_run(cached, tmp_path):
    reference = train(lm_config(checkpoint_every=0), cached, tmp_path / "reference")
    assert not checkpoint.checkpoint_dir_for(tmp_path / "reference").exists()

    cfg, out = lm_config(), tmp_path / "lm_student"
    with pytest.raises(Crash):
        train(cfg, cached, out, on_log=crash_at(10))
    latest = checkpoint.checkpoint_dir_for(out) / "latest"
    assert latest.parent.name == ".lm_student.checkpoint" and not out.exists()
    assert sorted(p.name for p in latest.iterdir()) == [
        "model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"]
    state = json.loads((latest / "state.json").read_text())
    assert len(state["history"]) == 8 and (state["batches"]["epoch"], state["batches"]["offset"]) == (2, 8)

    logged = []
    resumed = train(cfg, cached, out, on_log=lambda step, m: logged.append(step))
    assert logged == list(range(9, 19)), "the resumed run starts after the checkpoint's step"
    assert weights(out) == weights(tmp_path / "reference"), "weights differ from the uninterrupted run"
    assert (resumed.steps, resumed.train_loss_first, resumed.train_loss_last, resumed.heldout_after) == (
        reference.steps, reference.train_loss_first, reference.train_loss_last, reference.heldout_after)
    assert not latest.parent.exists(), "checkpoints are removed once the output is written"


def test_a_checkpoint_of_another_run_is_not_resumed(cached, tmp_path):
    cfg, out = lm_config(checkpoint_dir=str(tmp_path / "ckpt")), tmp_path / "lm_student"
    with pytest.raises(Crash):
        train(cfg, cached, out, on_log=crash_at(6))
    assert (tmp_path / "ckpt" / "lm_student" / "latest" / "state.json").is_file()  # lm.train.checkpoint_dir
    other = lm_config(checkpoint_dir=str(tmp_path / "ckpt"), learning_rate=5e-3)
    logged = []
    train(other, cached, out, on_log=lambda step, m: logged.append(step))
    assert logged[0] == 1, "a changed setting starts from step 0"
    assert not (tmp_path / "ckpt" / "lm_student").exists()


def test_the_undistilled_baseline_resumes_too(cached, tmp_path):
    root, teacher = cached
    cfg = lm_config(epochs=4)
    reference = lm_train.run_baseline(lm_config(epochs=4, checkpoint_every=0), root / "prompts.parquet", teacher,
                                      tmp_path / "reference")
    with pytest.raises(Crash):
        lm_train.run_baseline(cfg, root / "prompts.parquet", teacher, tmp_path / "lm_baseline", on_log=crash_at(7))
    logged = []
    lm_train.run_baseline(cfg, root / "prompts.parquet", teacher, tmp_path / "lm_baseline",
                          on_log=lambda step, m: logged.append(step))
    assert logged[0] == 5 and logged[-1] == reference.steps
    assert weights(tmp_path / "lm_baseline") == weights(tmp_path / "reference")
    assert not checkpoint.checkpoint_dir_for(tmp_path / "lm_baseline").exists()


@pytest.mark.slow
def test_lm_train_killed_with_sigkill_resumes_to_the_same_model(cached, tmp_path):
    """The real thing: `distill lm-train` in a subprocess, killed with SIGKILL once a checkpoint exists."""
    root, teacher = cached
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(lm_params(epochs=60, checkpoint_every=5)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "distill.stages", "lm-train", "--completions", str(root / "completions.parquet"),
                "--topk", str(root / "topk.parquet"), "--teacher", str(teacher), "--out", str(out),
                "--params", str(tmp_path / "params.yaml")]

    out = tmp_path / "killed"
    state = checkpoint.checkpoint_dir_for(out) / "latest" / "state.json"
    returncode = kill_once_written(command(out), env, state)
    assert returncode == -signal.SIGKILL and state.is_file() and not out.exists(), "killed too late"
    step = len(json.loads(state.read_text())["history"])

    resumed = subprocess.run(command(out), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"from the checkpoint at step {step}" in resumed.stderr
    reference = subprocess.run(command(tmp_path / "reference"), env=env, capture_output=True, text=True)
    assert reference.returncode == 0 and "resuming" not in reference.stderr, reference.stderr[-2000:]
    assert weights(out) == weights(tmp_path / "reference")
    assert not checkpoint.checkpoint_dir_for(out).exists()
