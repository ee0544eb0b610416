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
ShapeOpt = Annotated[Optional[Path], typer.Option(help="The size_student stage's chosen shape (JSON).")]
ProjectOpt = Annotated[Path, typer.Option(help="The project folder (params.yaml, dvc.yaml).")]
TeacherDir = Annotated[Path, typer.Option("--teacher", help="Teacher model folder.")]


def _user_errors() -> tuple[type[Exception], ...]:
    from distill.contracts import ContractError
    from distill.data import DataError
    from distill.label import TeacherOutputError
    from distill.lm.prompts import LMDataError
    from distill.models import ModelError
    from distill.objective import ObjectiveError

    return (ConfigError, DataError, ModelError, ContractError, TeacherOutputError, ObjectiveError, LMDataError,
            FileNotFoundError)


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

    result = _stage(lambda: data.run(_config(params, set_), out, incoming))
    _finish(result)
    report = result.report
    console.print(f"prepare: {report.rows_read} rows read, {report.labelled} labelled and {report.unlabelled} "
                  f"unlabelled distinct texts; labels used: {report.gold}; " + ", ".join(
                      f"{name} {size}" for name, size in result.sizes.items()))
    for why, rows in report.left_out.items():
        console.print(f"  left out: {rows} rows, {why}")
    for note in report.notes:
        console.print(f"  note: {note}")


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
    """Download an MLflow-registered model (models:/name@alias) for a stage: a teacher, or a student to warm-start from."""
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
                      + f". Report: {out / 'gate.json'}")
        raise typer.Exit(1)


@app.command()
def label(prepared: Prepared = Path("data/prepared"), teacher: TeacherDir = Path("models/teacher"),
          out: Path = Path("data/teacher_outputs/logits.parquet"), params: ParamsOpt = Path("params.yaml"),
          set_: SetOpt = None) -> None:
    """Label the distillation inputs with the teacher (once per teacher and input snapshot)."""
    from distill import label as stage

    _finish(_stage(lambda: stage.run(_config(params, set_), prepared, teacher, out)))


@app.command()
def assistant(prepared: Prepared = Path("data/prepared"), teacher: TeacherDir = Path("models/teacher"),
              outputs: Path = Path("data/teacher_outputs/logits.parquet"), out: Path = Path("models/assistant"),
              params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Distil the teacher assistant and label the distillation set with it (a no-op card when disabled)."""
    from distill import students

    result = _stage(lambda: students.run_assistant(_config(params, set_), prepared, teacher, outputs, out))
    _finish(result if result is not None else {"assistant": "disabled"})


@app.command("train-student")
def train_student(prepared: Prepared = Path("data/prepared"), teacher: TeacherDir = Path("models/teacher"),
                  outputs: Path = Path("data/teacher_outputs/logits.parquet"), out: Path = Path("models/student"),
                  assistant: Annotated[Optional[Path], typer.Option(
                      help="Assistant folder; when it holds an enabled assistant, it teaches the student.")] = None,
                  imported: Annotated[Path, typer.Option(
                      help="Where an MLflow student.warm_start is fetched to.")] = Path("models/imported_student"),
                  shape: ShapeOpt = None, params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Distil the student from the cached teacher (or assistant) outputs."""
    from distill import students

    _finish(_stage(lambda: students.run_student(_config(params, set_), prepared, teacher, outputs, out,
                                                assistant_dir=assistant, imported_dir=imported, shape_file=shape)))


@app.command("size-student")
def size_student(prepared: Prepared = Path("data/prepared"), teacher: TeacherDir = Path("models/teacher"),
                 outputs: Path = Path("data/teacher_outputs/logits.parquet"),
                 out: Path = Path("models/student_shape.json"),
                 imported: Annotated[Path, typer.Option(
                     help="Where an MLflow student.warm_start is fetched to.")] = Path("models/imported_student"),
                 params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Choose the student's shape for the deployment budget (size section)."""
    from distill import sizing

    result = _stage(lambda: sizing.run(_config(params, set_), prepared, teacher, outputs, out, imported))
    console.print(f"student shape {result.shape}: {result.reason}")


@app.command("train-baseline")
def train_baseline(prepared: Prepared = Path("data/prepared"), teacher: TeacherDir = Path("models/teacher"),
                   out: Path = Path("models/baseline"), shape: ShapeOpt = None, params: ParamsOpt = Path("params.yaml"),
                   set_: SetOpt = None) -> None:
    """Train the undistilled baseline student on gold labels only."""
    from distill import students

    _finish(_stage(lambda: students.run_baseline(_config(params, set_), prepared, teacher, out, shape_file=shape)))


@app.command()
def evaluate(prepared: Prepared = Path("data/prepared"), teacher: TeacherDir = Path("models/teacher"),
             student: Path = Path("models/student"), baseline: Path = Path("models/baseline"),
             out: Path = Path("reports/evaluate"), params: ParamsOpt = Path("params.yaml"),
             set_: SetOpt = None) -> None:
    """Compare teacher, INT8 teacher, student, INT8 student and baseline on one harness."""
    from distill import evaluate as stage

    result = _stage(lambda: stage.run(_config(params, set_), prepared, teacher, student, baseline, out))
    _finish(result.metrics)


@app.command()
def audit(predictions: Path = Path("reports/evaluate/predictions.parquet"), out: Path = Path("reports/audit"),
          teacher: Annotated[Optional[Path], typer.Option(help="Teacher folder (counterfactual/robustness tests).")] = None,
          student: Annotated[Optional[Path], typer.Option(help="Student folder (counterfactual/robustness tests).")] = None,
          baseline: Annotated[Optional[Path], typer.Option(help="Baseline folder, compared when given.")] = None,
          params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Audit the student for inherited bias and robustness, slice by slice, against the teacher."""
    from distill import audit as stage

    report = _stage(lambda: stage.run(_config(params, set_), predictions, out, teacher, student, baseline))
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


@app.command()
def sweep(project_dir: ProjectOpt = Path("."), set_: SetOpt = None,
          apply: Annotated[bool, typer.Option(help="Write the chosen T and alpha into params.yaml.")] = False) -> None:
    """Sweep the KD temperature and alpha over params.yaml's sweep grid (Prefect flow distill_sweep)."""
    from flows.runtime import configure_local_runtime

    params = project_dir / "params.yaml"
    _stage(lambda: _config(params, set_))
    if set_:
        from distill.config import write_overrides

        write_overrides(params, set_)
    configure_local_runtime()
    from flows.sweep import distill_sweep

    distill_sweep(project_dir=str(project_dir), apply=apply)


@app.command("monitor")
def monitor_cmd(project_dir: ProjectOpt = Path("."),
                redistill: Annotated[bool, typer.Option(help="Start re-distillation on drift.")] = True) -> None:
    """Run the drift monitor over the production stream."""
    from flows.runtime import configure_local_runtime

    _stage(lambda: _config(project_dir / "params.yaml", None))
    configure_local_runtime()
    from flows.monitor import drift_monitor

    drift_monitor(project_dir=str(project_dir), redistill=redistill)


@app.command()
def serve(project_dir: ProjectOpt = Path("."), host: str = "127.0.0.1", port: int = 8765,
          set_: SetOpt = None) -> None:
    """Answer POST /predict through the champion student; every answer goes to the production log."""
    from flows.runtime import configure_local_runtime

    cfg = _stage(lambda: _config(project_dir / "params.yaml", set_))
    configure_local_runtime()
    from monitoring.production import log_root
    from monitoring.serve import Predictor, make_server
    from tasks import registry

    version = registry.champion_version(cfg, str(project_dir))
    if version is None:
        console.print("[bold red]error:[/] no champion student in the registry yet; run `distill run` first")
        raise typer.Exit(2)
    model = registry.load_champion.fn(cfg, str(project_dir))
    server = make_server(Predictor(model, version, log_root(cfg.monitor.log_path, project_dir),
                                   cfg.monitor.log_text), host, port)
    console.print(f"serving champion v{version} on http://{host}:{server.server_address[1]} "
                  f"(POST /predict, POST /feedback, GET /health)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@app.command()
def feedback(labels_file: Annotated[Path, typer.Argument(help="CSV / JSONL / Parquet with request_id and label.")],
             project_dir: ProjectOpt = Path(".")) -> None:
    """Record ground truth that arrived for earlier requests (joined to the log by request_id)."""
    from distill.data import READERS
    from monitoring.production import log_root, record_feedback

    cfg = _stage(lambda: _config(project_dir / "params.yaml", None))
    reader = READERS.get(labels_file.suffix.lower())
    if reader is None or not labels_file.is_file():
        console.print(f"[bold red]error:[/] {labels_file}: give an existing CSV, JSONL or Parquet file")
        raise typer.Exit(2)
    frame = reader(labels_file)
    missing = [c for c in ("request_id", "label") if c not in frame.columns]
    if missing:
        console.print(f"[bold red]error:[/] {labels_file}: missing columns {missing}")
        raise typer.Exit(2)
    record_feedback(log_root(cfg.monitor.log_path, project_dir), frame["request_id"].astype(str).tolist(),
                    frame["label"].astype(str).tolist())
    console.print(f"recorded {len(frame)} labels")


def _registry(params: Path, set_: list[str] | None):
    """(config, MLflow client, student model name) for the registry commands."""
    from mlflow import MlflowClient

    from tasks import registry

    cfg = _stage(lambda: _config(params, set_))
    registry.configure(cfg.tracking, str(params.parent))
    return cfg, MlflowClient(), cfg.promote.student_model


def _registry_call(fn):
    """Run a registry action; a refused promotion or an unknown version becomes one red line, exit 2."""
    import mlflow

    from tasks.registry import PromotionError

    try:
        return fn()
    except (PromotionError, mlflow.exceptions.MlflowException) as exc:
        console.print(f"[bold red]error:[/] {getattr(exc, 'message', None) or exc}")
        raise typer.Exit(2) from None


@app.command("promote")
def promote_cmd(version: Annotated[str, typer.Argument(help="The student version to make champion.")],
                reason: Annotated[str, typer.Option(help="Why; written to the version's tags.")],
                params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Make VERSION the champion by hand. No gates run: this is the human override, and it is recorded
    (promoted_by=cli, the reason and the user)."""
    import getpass

    from tasks.registry import move_champion, set_tags

    _, client, name = _registry(params, set_)
    moved = _registry_call(lambda: move_champion(client, name, version, "cli", reason))
    _registry_call(lambda: set_tags(client, name, version, {"promoted_by_user": getpass.getuser()}))
    if not moved["changed"]:
        console.print(f"{name} v{version} is already the champion; nothing moved")
        return
    console.print(f"{name}: champion -> v{version}" + (f", previous -> v{moved['displaced']}"
                                                       if moved["displaced"] else ""))


@app.command()
def rollback(reason: Annotated[str, typer.Option(help="Why; written to the displaced version's tags.")] = "",
             params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Give the champion alias back to the previous champion; the displaced one is tagged rolled_back."""
    from tasks.registry import roll_back

    _, client, name = _registry(params, set_)
    back = _registry_call(lambda: roll_back(client, name, reason))
    console.print(f"{name}: champion -> v{back['version']} (v{back['rolled_back']} rolled back), previous -> "
                  + (f"v{back['previous']}" if back["previous"] else "none"))


@app.command("registry")
def registry_cmd(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """List the student's registered versions: aliases, accuracy, share of the teacher, verdicts."""
    from rich.table import Table

    from tasks.registry import version_rows

    _, client, name = _registry(params, set_)
    rows = _registry_call(lambda: version_rows(client, name))
    if not rows:
        console.print(f"no versions of {name!r} are registered yet: run `distill run` first")
        return
    table = Table(title=f"{name} versions")
    for column in ("version", "aliases", "created (UTC)", "accuracy", "share of teacher", "gates", "review",
                   "promoted by"):
        table.add_column(column, justify="right" if column in ("version", "accuracy", "share of teacher") else "left",
                         overflow="fold")
    for row in rows:
        aliases = ", ".join(row["aliases"]) + (" (rolled back)" if row["rolled_back"] else "")
        share = f"{float(row['teacher_share']):.1%}" if row["teacher_share"] else "–"
        table.add_row(row["version"], aliases or "–", row["created"].strftime("%Y-%m-%d %H:%M"),
                      row["accuracy"] or "–", share, row["gates"] or "–", row["review"] or "–",
                      row["promoted_by"] or "–")
    Console().print(table)


@app.command("lm-serve")
def lm_serve(model: Annotated[str, typer.Option(help="Causal-LM folder, or 'packaged' for SmolLM2-135M-Instruct.")]
             = "packaged",
             port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
             host: Annotated[str, typer.Option(help="Interface to bind; keep 127.0.0.1 unless guarded.")] = "127.0.0.1",
             name: Annotated[Optional[str], typer.Option(help="Model name clients ask for (default: the folder's).")]
             = None,
             cache_dir: Annotated[Path, typer.Option(help="Where the packaged teacher is converted once.")]
             = Path("models"),
             api_key_env: Annotated[Optional[str], typer.Option(help="Require the key in this environment variable.")]
             = None,
             threads: Annotated[Optional[int], typer.Option(help="Torch CPU threads (1 on a busy shared box).")]
             = None) -> None:
    """Serve a causal LM behind an OpenAI-compatible API (/v1/chat/completions, /v1/models)."""
    import os

    import torch

    if threads:
        torch.set_num_threads(threads)
    from distill.lm.server import load_for_serving, serve
    from distill.lm.teacher import packaged_teacher_folder

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    folder = _stage(lambda: packaged_teacher_folder(cache_dir) if model == "packaged" else Path(model))
    api_key = os.environ.get(api_key_env) if api_key_env else None
    if api_key_env and not api_key:
        console.print(f"[bold red]error:[/] ${api_key_env} is empty or unset")
        raise typer.Exit(2)
    lm = _stage(lambda: load_for_serving(folder))
    console.print(f"serving {folder} as {name or folder.name} on http://{host}:{port}/v1")
    serve(lm, name or folder.name, host=host, port=port, api_key=api_key)


# ---- LLM distillation stages (dvc.yaml: lm_teacher, lm_prompts, lm_generate, lm_topk, lm_train) ----

LMTeacherDir = Annotated[Path, typer.Option("--teacher", help="Causal-LM teacher folder (lm.teacher_path wins "
                                                             "when set).")]


def _lm_teacher_dir(cfg: PipelineConfig, teacher: Path) -> Path:
    from distill.lm.teacher import teacher_dir

    return teacher_dir(cfg.lm.teacher_path, teacher)


@app.command("lm-teacher")
def lm_teacher(out: Annotated[Path, typer.Option(help="Folder of the converted teacher.")] = Path("models/lm_teacher"),
               imported: Annotated[Path, typer.Option(help="Where an MLflow teacher (lm.teacher_path: models:/...) "
                                                           "is fetched to.")] = Path("models/lm_imported_teacher"),
               params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """The LM teacher: the packaged SmolLM2 GGUF converted, an MLflow teacher copied in, or a folder named."""
    from distill.lm import teacher as stage

    _finish(_stage(lambda: stage.run(_config(params, set_), out, imported)))


@app.command("lm-prompts")
def lm_prompts(prepared: Prepared = Path("data/prepared"),
               out: Annotated[Path, typer.Option(help="Prompt set (Parquet).")] = Path("data/lm/prompts.parquet"),
               params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Build the LM prompt set (train / held-out) from the prepared splits."""
    from distill.lm import prompts

    _finish(_stage(lambda: prompts.run(_config(params, set_), prepared, out)))


@app.command("lm-generate")
def lm_generate(prompts: Annotated[Path, typer.Option(help="Prompt set.")] = Path("data/lm/prompts.parquet"),
                teacher: LMTeacherDir = Path("models/lm_teacher"),
                out: Annotated[Path, typer.Option(help="Completions (Parquet).")] = Path("data/lm/completions.parquet"),
                params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Generate the teacher's completions once (resumable; recorded sampling settings)."""
    from distill.lm import generate

    def body():
        cfg = _config(params, set_)
        return generate.run(cfg, prompts, _lm_teacher_dir(cfg, teacher), out)

    _finish(_stage(body))


@app.command("lm-topk")
def lm_topk(completions: Annotated[Path, typer.Option(help="Teacher completions.")] = Path(
                "data/lm/completions.parquet"),
            teacher: LMTeacherDir = Path("models/lm_teacher"),
            out: Annotated[Path, typer.Option(help="Top-k cache (Parquet).")] = Path("data/lm/topk.parquet"),
            metrics: Annotated[Optional[Path], typer.Option(help="Cache figures JSON.")] = None,
            params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Cache the teacher's top-k next-token log-probabilities; print bytes/token and kept mass."""
    from distill.lm import topk

    def body():
        cfg = _config(params, set_)
        return topk.run(cfg, completions, _lm_teacher_dir(cfg, teacher), out)

    _finish(_stage(body), metrics)


@app.command("lm-train")
def lm_train(completions: Annotated[Path, typer.Option(help="Teacher completions.")] = Path(
                 "data/lm/completions.parquet"),
             topk_cache: Annotated[Optional[Path], typer.Option("--topk", help="Top-k cache (token mode).")] = Path(
                 "data/lm/topk.parquet"),
             teacher: LMTeacherDir = Path("models/lm_teacher"),
             out: Annotated[Path, typer.Option(help="Student folder.")] = Path("models/lm_student"),
             metrics: Annotated[Optional[Path], typer.Option(help="Training figures JSON.")] = None,
             params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Train the LM student (lm.train.mode: sequence, token or online)."""
    from distill.lm import train

    def body():
        cfg = _config(params, set_)
        return train.run(cfg, completions, _lm_teacher_dir(cfg, teacher), out, topk_cache)

    result = _stage(body)
    result.history = []  # per-step losses stay out of the metrics file
    _finish(result, metrics)


@app.command("lm-baseline")
def lm_baseline(prompts: Annotated[Path, typer.Option(help="Prompt set.")] = Path("data/lm/prompts.parquet"),
                teacher: LMTeacherDir = Path("models/lm_teacher"),
                out: Annotated[Path, typer.Option(help="Baseline folder.")] = Path("models/lm_baseline"),
                metrics: Annotated[Optional[Path], typer.Option(help="Training figures JSON.")] = None,
                params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Train the undistilled LM baseline: the student's shape and budget, on the reference answers only."""
    from distill.lm import train

    def body():
        cfg = _config(params, set_)
        return train.run_baseline(cfg, prompts, _lm_teacher_dir(cfg, teacher), out)

    result = _stage(body)
    result.history = []
    _finish(result, metrics)


@app.command("lm-evaluate")
def lm_evaluate(completions: Annotated[Path, typer.Option(help="Teacher completions (held-out rows are used).")]
                = Path("data/lm/completions.parquet"),
                teacher: LMTeacherDir = Path("models/lm_teacher"),
                student: Annotated[Path, typer.Option(help="Distilled LM student folder.")] = Path("models/lm_student"),
                baseline: Annotated[Path, typer.Option(help="Undistilled LM baseline folder.")] = Path(
                    "models/lm_baseline"),
                out: Annotated[Path, typer.Option(help="Report folder (metrics.json, report.md).")] = Path("reports/lm"),
                params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Evaluate teacher, distilled student and baseline on the held-out prompts; print the table."""
    from distill.lm import evaluate

    def body():
        cfg = _config(params, set_)
        return evaluate.run(cfg, completions, _lm_teacher_dir(cfg, teacher), student, baseline, out)

    result = _stage(body)
    evaluate.print_lm_table(result, Console(), title="LM evaluation (held-out prompts)")
    console.print(f"report: {out / 'report.md'}; figures: {out / 'metrics.json'}")


@app.command("run-lm")
def run_lm(project_dir: ProjectOpt = Path("."), set_: SetOpt = None) -> None:
    """Run LLM distillation as the Prefect flow distill_lm_pipeline (gated registration of the LM student)."""
    from flows.runtime import configure_local_runtime

    _stage(lambda: _config(project_dir / "params.yaml", set_))  # fail on bad params before any server starts
    configure_local_runtime()
    from flows.lm import distill_lm_pipeline

    summary = distill_lm_pipeline(project_dir=str(project_dir), overrides=set_ or [])
    sys.exit(0 if summary.get("completed") else 1)


if __name__ == "__main__":  # pragma: no cover
    app()
