"""A project that moved to another data set: its champion, and its monitoring state, belong to the old task.

A user who tried the default data and then runs ``distill run --set data.path=...`` in the same project
has a champion that answers other labels, and the monitoring state its traffic left (``monitoring.state``).
The distillation flow checks this once its data is prepared: the state is set aside and the champion is not
compared with the new student; the monitor does not monitor such a champion.
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from distill.config import PipelineConfig
from distill.data import read_labels
from distill.layout import LAYOUT
from monitoring.state import same_task, set_aside
from tasks import registry


@task(name="the champion's labels", **registry.NETWORK)
def champion_labels(cfg: PipelineConfig, project_dir: str) -> tuple[str | None, list[str]]:
    """The champion student's version and the labels it answers with; (None, []) without a champion."""
    version = registry.champion_version(cfg, project_dir)
    return version, (registry.version_labels(cfg, version, project_dir) if version is not None else [])


def other_task(version: str | None, labels: list[str], project_dir: str) -> str:
    """Why champion ``version`` (answering ``labels``) is not a champion of the project's prepared data, or ""
    when it is (or there is none, or either label set is unknown: no signature, no prepared data)."""
    prepared = LAYOUT.under(project_dir).prepared
    if version is None or not labels or not (prepared / "labels.json").is_file():
        return ""
    current = read_labels(prepared)
    if same_task(labels, current):
        return ""
    shown = ", ".join(labels[:3]) + (f" and {len(labels) - 3} more" if len(labels) > 3 else "")
    return (f"champion v{version} was distilled for other labels ({shown}) than this data's {len(current)} "
            f"({', '.join(current[:3])}{' ...' if len(current) > 3 else ''})")


@task(name="set aside another task's monitoring state")
def set_aside_other_task(cfg: PipelineConfig, project_dir: str) -> str:
    """When the champion answers other labels than the prepared data (the project moved to another data set),
    move the monitoring state of its task into data/archive/ (``monitoring.state``) and say so; "" when the
    champion is of this task or there is none."""
    why = other_task(*champion_labels(cfg, project_dir), project_dir)
    if not why:
        return ""
    archive, moved, outside = set_aside(cfg, project_dir)
    logger = get_run_logger()
    if archive is not None:
        logger.warning("%s: its monitoring state (%s) is moved to %s, so that this data's run does not learn from, "
                       "or get gated on, that task's traffic", why,
                       ", ".join(str(p.relative_to(Path(project_dir).resolve())) for p in moved), archive)
    if outside is not None:
        logger.warning("%s: the production log %s lies outside the project and is left in place; set "
                       "monitor.log_path to another folder for this data", why, outside)
    return why
