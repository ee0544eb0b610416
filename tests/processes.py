"""Processes for the fault tests: killing a real training at the right moment, a one-stage DVC project."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import sys
from pathlib import Path

import yaml


def kill_once_written(command: list[str], env: dict, marker: Path, timeout_s: float = 120) -> int:
    """Start ``command``, SIGKILL it as soon as ``marker`` (a checkpoint file) exists; its return code."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while not marker.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    return proc.wait()


def one_stage_project(root: Path, name: str, script: str, files: dict[str, str], stage: dict) -> Path:
    """A git + DVC project under ``root`` whose one stage ``name`` runs ``script`` (stage.py) with this Python;
    ``files`` are written beside it, ``stage`` adds deps, params and outs to the stage."""
    root.mkdir(parents=True)
    (root / "stage.py").write_text(script, encoding="utf-8")
    for file, text in files.items():
        (root / file).write_text(text)
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {name: {"cmd": f"{sys.executable} stage.py", **stage}}}))
    for command in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(command, cwd=root, check=True)
    return root
