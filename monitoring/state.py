"""A project's monitoring state, and setting it aside when the project moves to another task.

Between runs the monitor keeps state, all of it about the champion's task: the production log (requests,
ground truth, the hold-out of drifted windows), the drifted windows kept for re-distillation
(``data/incoming``), the canary set and the incidents. When a run's data has other labels than the champion
(the project's ``data.path`` moved to another data set), that state would feed the new task the old one's
texts and labels: the old traffic as transfer texts for the new teacher to label, the old hold-out as a slice
the new student is gated on (and cannot pass: its labels are not the hold-out's), old windows to check for
drift against the new reference, an old incident that blocks new ones. So the flow moves it, whole, into
``data/archive/<time>/`` (nothing is deleted) before the run prepares its data, and the run goes on as in
a new project.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from distill.config import PipelineConfig
from distill.layout import LAYOUT
from monitoring.alerts import incidents_dir
from monitoring.production import log_root

ARCHIVE = Path("data/archive")


def same_task(old: Sequence[str], new: Sequence[str], min_shared: float = 0.5) -> bool:
    """Whether two label sets are one task: at least ``min_shared`` of all their labels in common. A label added,
    dropped or renamed keeps the task; another data set's labels do not."""
    a, b = {str(x) for x in old}, {str(x) for x in new}
    return not (a | b) or len(a & b) / len(a | b) >= min_shared


def state_paths(cfg: PipelineConfig, project_dir: str | Path) -> tuple[list[Path], Path | None]:
    """The monitoring state inside the project that exists now, and the production log when it lies outside
    the project (it is shared or external: the flow leaves it where it is)."""
    project = Path(project_dir).resolve()
    paths = sorted(LAYOUT.under(project).incoming.glob("*.parquet"))
    outside = None
    root = log_root(cfg.monitor.log_path, project).resolve()
    if root.exists():
        if root.is_relative_to(project):
            paths.append(root)
        else:
            outside = root
    canary = project / cfg.monitor.canary_path
    replaced = sorted(canary.parent.glob(f"{canary.stem}.replaced-*{canary.suffix}"))  # set aside by ensure_canary
    paths += [p for p in (canary, *replaced, incidents_dir(project)) if p.exists()]
    return paths, outside


def set_aside(cfg: PipelineConfig, project_dir: str | Path) -> tuple[Path | None, list[Path], Path | None]:
    """Move the project's monitoring state into ``data/archive/<utc time>/`` (the same relative paths):
    (the archive or None when there was nothing to move, what was moved, a production log outside the project
    that was left in place)."""
    project = Path(project_dir).resolve()
    paths, outside = state_paths(cfg, project)
    if not paths:
        return None, [], outside
    archive = project / ARCHIVE / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for path in paths:
        target = archive / path.relative_to(project)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), str(target))
    return archive, paths, outside
