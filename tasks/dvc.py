"""DVC as Prefect tasks: DVC decides what reruns and keeps dvc.lock truthful."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from prefect import get_run_logger, task

from tasks.retry import retry_on_transient


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero; the message carries its last lines of output."""


@dataclass
class StageRun:
    stage: str
    skipped: bool
    output: str


def _env() -> dict[str, str]:
    """Stage commands call `distill`: make this interpreter's bin folder come first on PATH."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def dvc(args: list[str], project_dir: str) -> subprocess.CompletedProcess:
    """Run one dvc command in the project, output captured."""
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project_dir, env=_env(),
                          capture_output=True, text=True)


@task(name="dvc repro", task_run_name="dvc repro {stage}")
def repro(stage: str, project_dir: str = ".") -> StageRun:
    """`dvc repro <stage>` (and whatever it depends on that changed)."""
    logger = get_run_logger()
    proc = dvc(["repro", "--single-item", stage], project_dir)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        tail = "\n".join(line for line in output.splitlines()[-25:] if "%|" not in line)
        raise StageFailed(f"stage {stage!r} failed (dvc repro {stage}):\n{tail}")
    skipped = "didn't change, skipping" in output or "is cached - skipping run" in output
    logger.info("stage %s %s", stage, "unchanged, skipped" if skipped else "ran")
    return StageRun(stage, skipped, output)


@task(name="dvc push", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_on_transient)
def push(project_dir: str = ".") -> None:
    """Push the cached outputs to the configured DVC remote."""
    proc = dvc(["push", "--quiet"], project_dir)
    if proc.returncode != 0:
        raise ConnectionError(f"dvc push failed: {proc.stderr.strip()[-500:]}")


def lock_hashes(project_dir: str = ".") -> dict[str, str]:
    """The md5 of every stage output recorded in dvc.lock, by path."""
    lock = Path(project_dir) / "dvc.lock"
    if not lock.is_file():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    return {out["path"]: out.get("md5", "") for stage in stages.values() for out in stage.get("outs", [])}
