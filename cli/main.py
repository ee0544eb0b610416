"""The ``distill`` command: the user verbs, and the stage commands that dvc.yaml calls.

The user verbs start the Prefect flows (``run``, ``monitor``, ``sweep``, ``run-lm``), serve the
champion, and work the MLflow registry (``promote``, ``rollback``, ``registry``). They live here,
above ``flows/`` and ``tasks/``, so that the core (``distill/``) never imports an orchestrator or
a registry. The stage commands come from ``distill.stages``, listed apart in ``distill --help``;
this module hands the ``label`` stage the labelling engines that live in ``flows/`` (Dask).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from rich.console import Console

from distill import stages
from distill.config import PipelineConfig
from distill.layout import LAYOUT
from distill.stages import ParamsOpt, SetOpt, _config, _stage, console

LIFECYCLE = "Lifecycle"
REGISTRY = "Registry"
STAGES = "Stages (what dvc.yaml runs)"

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Knowledge distillation from teacher to monitored student.")

ProjectOpt = Annotated[Path, typer.Option(help="The project folder (params.yaml, dvc.yaml).")]


def _project_config(project_dir: Path, set_: list[str] | None) -> PipelineConfig:
    """params.yaml with the overrides of the project's last run (what its models were built with), then ``set_``."""
    from distill.config import read_run_overrides

    return _stage(lambda: _config(project_dir / "params.yaml", read_run_overrides(project_dir) + (set_ or [])))


def label_on_dask(teacher_dir: str, labels: list[str], prepared: str, batch_size: int, max_length: int,
                  device: str, workers: int, address: str | None) -> np.ndarray:
    """The Dask labelling engine (flows/labelling.py), imported only when a run asks for it."""
    from flows.labelling import label_on_dask as engine

    return engine(teacher_dir, labels, prepared, batch_size, max_length, device, workers, address)


@app.command(rich_help_panel=LIFECYCLE)
def run(project_dir: ProjectOpt = Path("."), set_: SetOpt = None,
        monitor: Annotated[bool, typer.Option(help="End with a monitoring pass.")] = True) -> None:
    """Run the whole lifecycle as the Prefect flow distill_pipeline."""
    from flows.runtime import configure_local_runtime

    _stage(lambda: _config(project_dir / "params.yaml", set_))  # fail on bad params before any server starts
    configure_local_runtime()
    from flows.pipeline import distill_pipeline

    from flows.outcome import summary_of

    # The flow run ends Failed when a gate stopped it; the exit code is 1 only when it did not complete.
    summary = summary_of(distill_pipeline(project_dir=str(project_dir), overrides=set_ or [], monitor=monitor,
                                          return_state=True))
    sys.exit(0 if summary.get("completed") else 1)


@app.command(rich_help_panel=LIFECYCLE)
def sweep(project_dir: ProjectOpt = Path("."), set_: SetOpt = None,
          apply: Annotated[bool, typer.Option(help="Write the chosen T and alpha into params.yaml.")] = False,
          queue: Annotated[bool, typer.Option(help="Queue the grid as DVC experiments instead (dvc exp run "
                                                   "--queue), to run with `dvc queue start`.")] = False) -> None:
    """Sweep the KD temperature and alpha over params.yaml's sweep grid (Prefect flow distill_sweep)."""
    from flows.runtime import configure_local_runtime

    cfg = _stage(lambda: _config(project_dir / "params.yaml", set_))
    if queue:
        from distill.sweep import grid
        from tasks.dvc import queue_experiments

        points = grid(cfg)
        names = _stage(lambda: queue_experiments(str(project_dir), [p.overrides() + (set_ or []) for p in points],
                                                 [f"sweep-t{p.kd_temperature:g}-a{p.alpha:g}" for p in points]))
        console.print(f"queued {len(names)} experiments from the last commit ({', '.join(names)}); run them with "
                      "`dvc queue start --jobs 1`, follow with `dvc queue status`, compare with `dvc exp show`")
        return
    configure_local_runtime()
    from flows.sweep import distill_sweep

    distill_sweep(project_dir=str(project_dir), apply=apply, overrides=set_ or [])


@app.command("monitor", rich_help_panel=LIFECYCLE)
def monitor_cmd(project_dir: ProjectOpt = Path("."),
                redistill: Annotated[bool, typer.Option(help="Start re-distillation on drift.")] = True) -> None:
    """Run the drift monitor over the production stream."""
    from flows.runtime import configure_local_runtime

    _project_config(project_dir, None)
    configure_local_runtime()
    from flows.monitor import drift_monitor

    drift_monitor(project_dir=str(project_dir), redistill=redistill)


@app.command(rich_help_panel=LIFECYCLE)
def serve(project_dir: ProjectOpt = Path("."), host: str = "127.0.0.1", port: int = 8765,
          set_: SetOpt = None) -> None:
    """Answer POST /predict through the champion student; every answer goes to the production log."""
    from flows.runtime import configure_local_runtime

    cfg = _project_config(project_dir, set_)
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


@app.command(rich_help_panel=LIFECYCLE)
def feedback(labels_file: Annotated[Path, typer.Argument(help="CSV / JSONL / Parquet with request_id and label.")],
             project_dir: ProjectOpt = Path(".")) -> None:
    """Record ground truth that arrived for earlier requests (joined to the log by request_id)."""
    from distill.data import READERS
    from monitoring.production import log_root, record_feedback

    cfg = _project_config(project_dir, None)
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


@app.command("lm-serve", rich_help_panel=LIFECYCLE)
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




@app.command("run-lm", rich_help_panel=LIFECYCLE)
def run_lm(project_dir: ProjectOpt = Path("."), set_: SetOpt = None) -> None:
    """Run LLM distillation as the Prefect flow distill_lm_pipeline (gated registration of the LM student)."""
    from flows.runtime import configure_local_runtime

    _stage(lambda: _config(project_dir / "params.yaml", set_))  # fail on bad params before any server starts
    configure_local_runtime()
    from flows.lm import distill_lm_pipeline

    from flows.outcome import summary_of

    summary = summary_of(distill_lm_pipeline(project_dir=str(project_dir), overrides=set_ or [], return_state=True))
    sys.exit(0 if summary.get("completed") else 1)


def _registry(params: Path, set_: list[str] | None):
    """(config, MLflow client, student model name) for the registry commands."""
    from mlflow import MlflowClient

    from tasks import registry

    cfg = _stage(lambda: _config(params, set_))
    _registry_call(lambda: registry.configure(cfg.tracking, str(params.parent)))
    return cfg, MlflowClient(), cfg.promote.student_model


def _registry_call(fn):
    """Run a registry action; a refused promotion, an unknown model or version, or an unreachable tracking
    server becomes one red line, exit 2. A person waits at the terminal: MLflow retries an unreachable server
    twice here, not its default seven times (about four minutes)."""
    import os

    import mlflow
    from rich.markup import escape

    from tasks.aliases import PromotionError

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    try:
        return fn()
    except (PromotionError, mlflow.exceptions.MlflowException, FileNotFoundError) as exc:
        message = str(getattr(exc, "message", None) or exc)
        if "Max retries exceeded" in message:
            message += ("; is the tracking server up? (tracking.tracking_uri in params.yaml, or "
                        "MLFLOW_TRACKING_URI)")
        console.print(f"[bold red]error:[/] {escape(message)}")
        raise typer.Exit(2) from None


@app.command("promote", rich_help_panel=REGISTRY)
def promote_cmd(version: Annotated[str, typer.Argument(help="The student version to make champion.")],
                reason: Annotated[str, typer.Option(help="Why; written to the version's tags.")],
                params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Make VERSION the champion by hand. No gates run: this is the human override, and it is recorded
    (promoted_by=cli, the reason and the user)."""
    import getpass

    from tasks.aliases import move_champion, set_tags
    from tasks.registry import check_model_code

    cfg, client, name = _registry(params, set_)
    _registry_call(lambda: check_model_code(f"models:/{name}/{version}", cfg.promote.trust_model_code))
    moved = _registry_call(lambda: move_champion(client, name, version, "cli", reason))
    _registry_call(lambda: set_tags(client, name, version, {"promoted_by_user": getpass.getuser()}))
    if not moved["changed"]:
        console.print(f"{name} v{version} is already the champion; nothing moved")
        return
    console.print(f"{name}: champion -> v{version}" + (f", previous -> v{moved['displaced']}"
                                                       if moved["displaced"] else ""))


@app.command(rich_help_panel=REGISTRY)
def rollback(reason: Annotated[str, typer.Option(help="Why; written to the displaced version's tags.")] = "",
             params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Give the champion alias back to the previous champion; the displaced one is tagged rolled_back."""
    from tasks.aliases import roll_back

    _, client, name = _registry(params, set_)
    back = _registry_call(lambda: roll_back(client, name, reason))
    console.print(f"{name}: champion -> v{back['version']} (v{back['rolled_back']} rolled back), previous -> "
                  + (f"v{back['previous']}" if back["previous"] else "none"))


@app.command("registry", rich_help_panel=REGISTRY)
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
    for column in ("version", "aliases", "created (UTC)", "precision", "accuracy", "share of teacher", "gates",
                   "review", "promoted by"):
        table.add_column(column, justify="right" if column in ("version", "accuracy", "share of teacher") else "left",
                         overflow="fold")
    for row in rows:
        aliases = ", ".join(row["aliases"]) + (" (rolled back)" if row["rolled_back"] else "")
        share = f"{float(row['teacher_share']):.1%}" if row["teacher_share"] else "–"
        table.add_row(row["version"], aliases or "–", row["created"].strftime("%Y-%m-%d %H:%M"), row["precision"],
                      row["accuracy"] or "–", share, row["gates"] or "–", row["review"] or "–",
                      row["promoted_by"] or "–")
    Console().print(table)







@app.command("fetch-teacher", rich_help_panel=REGISTRY)
def fetch_teacher(uri: str, out: Path = LAYOUT.imported_teacher, params: ParamsOpt = Path("params.yaml")) -> None:
    """Download an MLflow-registered model (models:/name@alias) for a stage: a teacher, or a student to warm-start from."""
    from tasks.registry import fetch_model_folder

    cfg = _stage(lambda: _config(params, None))
    console.print(f"fetched {uri} to {_registry_call(lambda: fetch_model_folder(uri, out, '.', cfg.tracking))}")


for command in stages.app.registered_commands:
    if command.name != "label":
        command.rich_help_panel = STAGES
        app.registered_commands.append(command)
app.command("label", rich_help_panel=STAGES)(stages.label_command({"dask": label_on_dask}))


if __name__ == "__main__":  # pragma: no cover
    app()
