"""distill_sweep: one student per (temperature, alpha) pair, chosen on the gold validation set."""

from __future__ import annotations

import tempfile
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.futures import wait

from distill import students
from distill.config import load_config, read_run_overrides, write_overrides
from distill.sweep import GridPoint, PointResult, choose, grid
from distill.layout import LAYOUT
from flows.distillation import validate_teacher
from tasks import dvc, tracking


@task(name="sweep point", task_run_name="T={point.kd_temperature} alpha={point.alpha}")
def train_point(project_dir: str, point: GridPoint, epochs: int | None) -> PointResult:
    """Train one student with this point's temperature and alpha into a scratch folder; keep its figures."""
    extra = [f"train.epochs={epochs}"] if epochs else []
    cfg = load_config(Path(project_dir, "params.yaml"), read_run_overrides(project_dir) + point.overrides() + extra)
    at = LAYOUT.under(project_dir)
    with tempfile.TemporaryDirectory(prefix="distill-sweep-") as scratch:
        result = students.run_student(cfg, at.prepared, at.teacher, at.outputs, Path(scratch, "student"),
                                      assistant_dir=at.assistant,  # as the pipeline trains
                                      imported_dir=at.imported_student,
                                      shape_file=at.student_shape)
    return PointResult(point.kd_temperature, point.alpha, result.best_val_accuracy, result.steps, result.seconds)


def print_grid(results: list[PointResult], chosen: PointResult) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="distill sweep: gold validation accuracy per (T, alpha)")
    for column in ("T", "alpha", "val accuracy", "steps", "seconds"):
        table.add_column(column, justify="right")
    for r in results:
        mark = " *" if r is chosen else ""
        table.add_row(f"{r.kd_temperature:g}", f"{r.alpha:g}", f"{r.val_accuracy:.3f}{mark}", str(r.steps),
                      f"{r.seconds:.0f}")
    Console().print(table)


@flow(name="distill_sweep", log_prints=True)
def distill_sweep(project_dir: str = ".", apply: bool = False, overrides: list[str] | None = None) -> dict:
    """Sweep the distillation temperature and alpha over params.yaml's ``sweep`` grid.

    Args:
        project_dir: the DVC project.
        apply: write the chosen values into params.yaml (the next `distill run` trains with them):
            the one time a flow edits params.yaml, because the user asked it to.
        overrides: this run's ``section.key=value`` items (params.yaml is not written).
    """
    logger = get_run_logger()
    params = Path(project_dir, "params.yaml")
    cfg, _ = dvc.start_run(project_dir, overrides or [])
    dvc.repro("teacher", project_dir)
    gate = validate_teacher(project_dir)
    if not gate.passed:
        raise RuntimeError("teacher gate failed, nothing to sweep: " + "; ".join(gate.reasons))
    for stage in ("label", "assistant", "size_student"):
        dvc.repro(stage, project_dir)
    points = grid(cfg)
    logger.info("sweeping %d points, %d at a time", len(points), cfg.sweep.workers)
    results: list[PointResult] = []
    for start in range(0, len(points), cfg.sweep.workers):
        futures = [train_point.submit(project_dir, p, cfg.sweep.epochs)
                   for p in points[start:start + cfg.sweep.workers]]
        wait(futures)
        results += [f.result() for f in futures]
    chosen = choose(results)
    run_id = tracking.log_sweep(cfg, results, chosen, project_dir)
    print_grid(results, chosen)
    applied = write_overrides(params, GridPoint(chosen.kd_temperature, chosen.alpha).overrides()) if apply else False
    print(f"chosen on gold_val: T={chosen.kd_temperature:g}, alpha={chosen.alpha:g} "
          f"(val accuracy {chosen.val_accuracy:.3f}); " + ("written to params.yaml" if applied else
                                                           "run with --apply to write it to params.yaml"))
    return {"chosen": chosen.to_dict(), "grid": [r.to_dict() for r in results], "run_id": run_id,
            "applied": applied}
