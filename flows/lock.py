"""One pipeline run at a time per project folder.

A pipeline run writes its overrides into params.yaml, then `dvc repro` rewrites models/, reports/,
data/teacher_outputs and dvc.lock in place. Two runs in one folder would interleave those writes
(DVC's own repository lock covers one `dvc repro`, not the run), so a run holds an exclusive
``flock`` on ``.dvc/tmp/distill-pipeline.lock`` from start to end; a second run waits for it and
says whom it waits for. The kernel drops the lock when its process dies, so a crashed run never
leaves a stale lock. ``flock`` is per machine: workers on several machines sharing one project
folder over NFS need separate folders (``dvc exp run --temp``, or a checkout per worker).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

LOCK_FILE = Path(".dvc/tmp/distill-pipeline.lock")
UNNAMED = "a run that has not said who it is"
REMIND_S = 600  # repeat the waiting line this often, so a long wait stays visible in the run's log
_HELD: dict[Path, int] = {}  # lock files this process holds, with their nesting depth


class ProjectBusy(TimeoutError):
    """Another pipeline run held the project lock for longer than the caller would wait."""


def _logger() -> logging.Logger | logging.LoggerAdapter:
    """The flow run's logger (it reaches the Prefect UI), else distill's own."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("distill")


def _holder(fd: int) -> str:
    """Who holds the lock, as its holder wrote it: ``pid 123 on host, flow run 'x', since ...``."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return UNNAMED
    return (f"pid {info.get('pid')} on {info.get('host')}, flow run {info.get('flow_run')!r}, "
            f"since {info.get('since')}")


def _flow_run_name() -> str | None:
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return context.flow_run.name if context and context.flow_run else None


@contextmanager
def project_lock(project_dir: str, timeout_s: float | None = None, poll_s: float = 0.5) -> Iterator[None]:
    """Hold the project's pipeline lock; wait (and say for whom) while another run holds it.

    Args:
        project_dir: the DVC project folder.
        timeout_s: give up after this long with ``ProjectBusy``; None waits as long as it takes.
        poll_s: how often to try again (a non-blocking try, so Prefect can cancel a waiting run).
    """
    path = Path(project_dir, LOCK_FILE).resolve()
    if _HELD.get(path):  # this process holds it already: a run nested in a run (the monitor's re-distillation)
        _HELD[path] += 1
        try:
            yield
        finally:
            _HELD[path] -= 1
        return
    log = _logger()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        start, warned = time.monotonic(), None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                now, holder = time.monotonic(), _holder(fd)
                # The holder writes its name just after it takes the lock: give it a moment to do so.
                named = holder != UNNAMED or now - start > 2
                if named and (warned is None or now - warned >= REMIND_S):
                    log.warning("another pipeline run is working in %s (%s); waiting for it to finish",
                                Path(project_dir).resolve(), holder)
                    warned = now
                if timeout_s is not None and now - start > timeout_s:
                    raise ProjectBusy(f"{Path(project_dir).resolve()}: another pipeline run ({_holder(fd)}) still "
                                      f"holds {LOCK_FILE} after {timeout_s:.0f} s") from None
                time.sleep(poll_s)
        if warned is not None:
            log.info("project lock taken after waiting %.1f s", time.monotonic() - start)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "flow_run": _flow_run_name(),
              "since": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        _HELD[path] = 1
        try:
            yield
        finally:
            _HELD.pop(path, None)
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the last descriptor releases the flock
