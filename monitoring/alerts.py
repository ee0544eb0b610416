"""Incidents (debounce) and notifications.

An incident is opened at most once: its key names what happened (the drifted windows, the teacher
version), and :func:`open_incident` creates ``<state_dir>/<key>.json`` with ``O_EXCL``, so two
monitor runs racing on the same incident open it once. Only a newly opened incident alerts and
re-distils; the next windows of the same shift do not.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path


REPORTS = "reports/monitor"  # the monitor's reports, summary and incident state, in a project


def incidents_dir(project_dir: str) -> Path:
    """Where a project's incidents are kept (one JSON file each)."""
    return Path(project_dir, REPORTS, "incidents")


def open_incident(state_dir: Path, key: str, details: dict) -> bool:
    """Record incident ``key``; False when it was already open."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    path = _path(state_dir, key)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        json.dump({"incident": key, **details}, handle, indent=2, default=str)
    return True


def notify(url_env: str, title: str, body: str) -> bool:
    """Send ``title``/``body`` to the apprise URL held in environment variable ``url_env``.

    Returns False when the variable is unset or delivery failed; an alert channel being down must not
    stop the monitor (the event and the log line are still there).
    """
    url = os.environ.get(url_env, "").strip()
    if not url:
        return False
    import logging

    import apprise

    logging.getLogger("apprise").setLevel(logging.WARNING)  # its debug lines print the URL, secret and all
    sender = apprise.Apprise()
    if not sender.add(url):
        return False
    return bool(sender.notify(title=title, body=body))


STALE_AFTER_S = 6 * 3600  # a re-distillation that has not closed its incident by then has died


def _path(state_dir: Path, key: str) -> Path:
    return Path(state_dir) / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', key)}.json"


def pending_incident(state_dir: Path, now: float | None = None) -> str | None:
    """The key of an incident whose re-distillation is still running (not resolved, not stale)."""
    import time

    now = time.time() if now is None else now
    for path in sorted(Path(state_dir).glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not record.get("resolved") and now - path.stat().st_mtime < STALE_AFTER_S:
            return str(record.get("incident"))
    return None


def resolve_incident(state_dir: Path, key: str, outcome: dict) -> None:
    """Mark incident ``key`` resolved (its re-distillation finished), with what came of it."""
    from distill.io import write_json

    path = _path(state_dir, key)
    record = json.loads(path.read_text()) if path.is_file() else {"incident": key}
    write_json(path, {**record, "resolved": True, "outcome": outcome})
