"""Killing a real training process at the right moment, for the resume tests."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def kill_once_written(command: list[str], env: dict, marker: Path, timeout_s: float = 120) -> int:
    """Start ``command``, SIGKILL it as soon as ``marker`` (a checkpoint file) exists; its return code."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while not marker.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    return proc.wait()
