"""The ``distill`` command line.

Stage commands (``prepare``, ``teacher``, ... ``audit``) are what dvc.yaml
calls: each loads params.yaml, calls its stage's ``run()`` and writes a small
metrics JSON. ``run`` and ``monitor`` start the Prefect flows.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from distill.config import ConfigError, PipelineConfig, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Knowledge distillation from teacher to monitored student.")
console = Console(stderr=True)

ParamsOpt = Annotated[Path, typer.Option("--params", help="The params file.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a value: --set train.alpha=0.5")]
Prepared = Annotated[Path, typer.Option(help="Folder of prepared splits.")]
ProjectOpt = Annotated[Path, typer.Option(help="The project folder (params.yaml, dvc.yaml).")]
TeacherDir = Annotated[Path, typer.Option("--teacher", help="Teacher model folder.")]


def _user_errors() -> tuple[type[Exception], ...]:
    from distill.contracts import ContractError
    from distill.data import DataError
    from distill.label import TeacherOutputError
    from distill.models import ModelError

    return (ConfigError, DataError, ModelError, ContractError, TeacherOutputError, FileNotFoundError)


def _config(params: Path, overrides: list[str] | None) -> PipelineConfig:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "mlflow", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return load_config(params, overrides or [])


def _finish(result, metrics_path: Path | None = None) -> None:
    """Print a stage result and write it as the stage's metrics JSON."""
    from distill.io import write_json

    payload = asdict(result) if is_dataclass(result) else result
    if metrics_path:
        write_json(metrics_path, payload)
    console.print_json(data=payload, default=str)


def _stage(fn):
    """Run a stage body; user errors become one red line and exit code 2."""
    try:
        return fn()
    except _user_errors() as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None


@app.command()
def prepare(out: Annotated[Path, typer.Option(help="Output folder.")] = Path("data/prepared"),
            incoming: Annotated[Path, typer.Option(help="New traffic to add to the transfer set.")] = Path(
                "data/incoming"),
            params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Build, split and validate the data set."""
    from distill import data

    _finish(_stage(lambda: data.run(_config(params, set_), out, incoming)))


@app.command()
def teacher(prepared: Prepared = Path("data/prepared"), out: Path = Path("models/teacher"),
            params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
            teacher_path: Annotated[Optional[Path], typer.Option(help="Overrides teacher.path.")] = None,
            imported: Annotated[Path, typer.Option(help="Where MLflow teachers are fetched to.")] = Path(
                "models/imported_teacher")) -> None:
    """Bootstrap or import the teacher."""
    from distill import teacher as stage

    _finish(_stage(lambda: stage.run(_config(params, set_), prepared, out, teacher_path, imported)))


@app.command("fetch-teacher")
def fetch_teacher(uri: str, out: Path = Path("models/imported_teacher"), params: ParamsOpt = Path("params.yaml")) -> None:
    """Download an MLflow-registered teacher (models:/name@alias) for the teacher stage."""
    from tasks.registry import fetch_model_folder

    cfg = _stage(lambda: _config(params, None))
    console.print(f"fetched {uri} to {fetch_model_folder(uri, out, '.', cfg.tracking)}")


@app.command("validate-teacher")
def validate_teacher(prepared: Prepared = Path("data/prepared"), teacher: TeacherDir = Path("models/teacher"),
                     out: Path = Path("reports/teacher"), params: ParamsOpt = Path("params.yaml"),
                     set_: SetOpt = None) -> None:
    """Score the teacher on the gold test set; exit 1 when the teacher gate fails."""
    from distill import teacher as stage

    gate = _stage(lambda: stage.validate(_config(params, set_), prepared, teacher, out))
    _finish(gate)
    if not gate.passed:
        console.print("[bold red]teacher gate failed[/]: " + "; ".join(gate.reasons)
                      + f". Report: {out / 'gate.json'}. Improve the teacher or lower teacher.min_accuracy.")
        raise typer.Exit(1)


@app.command()
def label(prepared: Prepared = Path("data/prepared"), teacher: TeacherDir = Path("models/teacher"),
          out: Path = Path("data/teacher_outputs/logits.parquet"), params: ParamsOpt = Path("params.yaml"),
          set_: SetOpt = None) -> None:
    """Label the distillation inputs with the teacher (once per teacher and input snapshot)."""
    from distill import label as stage

    _finish(_stage(lambda: stage.run(_config(params, set_), prepared, teacher, out)))


@app.command("train-student")
def train_student(prepared: Prepared = Path("data/prepared"), teacher: TeacherDir = Path("models/teacher"),
                  outputs: Path = Path("data/teacher_outputs/logits.parquet"), out: Path = Path("models/student"),
                  params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Distil the student from the cached teacher outputs."""
    from distill import students

    _finish(_stage(lambda: students.run_student(_config(params, set_), prepared, teacher, outputs, out)))


@app.command("train-baseline")
def train_baseline(prepared: Prepared = Path("data/prepared"), teacher: TeacherDir = Path("models/teacher"),
                   out: Path = Path("models/baseline"), params: ParamsOpt = Path("params.yaml"),
                   set_: SetOpt = None) -> None:
    """Train the undistilled baseline student on gold labels only."""
    from distill import students

    _finish(_stage(lambda: students.run_baseline(_config(params, set_), prepared, teacher, out)))


@app.command()
def evaluate(prepared: Prepared = Path("data/prepared"), teacher: TeacherDir = Path("models/teacher"),
             student: Path = Path("models/student"), baseline: Path = Path("models/baseline"),
             out: Path = Path("reports/evaluate"), params: ParamsOpt = Path("params.yaml"),
             set_: SetOpt = None) -> None:
    """Compare teacher, INT8 teacher, student and baseline on one harness."""
    from distill import evaluate as stage

    result = _stage(lambda: stage.run(_config(params, set_), prepared, teacher, student, baseline, out))
    _finish(result.metrics)


@app.command()
def audit(predictions: Path = Path("reports/evaluate/predictions.parquet"), out: Path = Path("reports/audit"),
          params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Slice-by-slice audit of the student against the teacher."""
    from distill import audit as stage

    report = _stage(lambda: stage.run(_config(params, set_), predictions, out))
    _finish({"passed": report.passed, "reasons": report.reasons})


@app.command()
def run(project_dir: ProjectOpt = Path("."), set_: SetOpt = None,
        monitor: Annotated[bool, typer.Option(help="End with a monitoring pass.")] = True) -> None:
    """Run the whole lifecycle as the Prefect flow distill_pipeline."""
    from flows.runtime import configure_local_runtime

    _stage(lambda: _config(project_dir / "params.yaml", set_))  # fail on bad params before any server starts
    configure_local_runtime()
    from flows.pipeline import distill_pipeline

    summary = distill_pipeline(project_dir=str(project_dir), overrides=set_ or [], monitor=monitor)
    sys.exit(0 if summary.get("completed") else 1)


@app.command("monitor")
def monitor_cmd(project_dir: ProjectOpt = Path("."),
                redistill: Annotated[bool, typer.Option(help="Start re-distillation on drift.")] = True) -> None:
    """Run the drift monitor over the production stream."""
    from flows.runtime import configure_local_runtime

    _stage(lambda: _config(project_dir / "params.yaml", None))
    configure_local_runtime()
    from flows.monitor import drift_monitor

    drift_monitor(project_dir=str(project_dir), redistill=redistill)


if __name__ == "__main__":  # pragma: no cover
    app()
