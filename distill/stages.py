"""The stage commands: the plumbing that dvc.yaml calls (``distill prepare``, ``distill teacher``, ...).

Each loads the params, calls its stage's ``run()`` and prints (or writes) its result. They are
part of the single ``distill`` command, whose user verbs (``run``, ``monitor``, ``promote``, ...)
live above the flows in ``cli/``: the core never imports an orchestrator or a registry.
``python -m distill.stages <stage>`` runs a stage without them (``torchrun`` does so).

One module on purpose: every command is a thin wrapper over its stage's ``run()``, and
``python -m distill.stages`` needs them all on one Typer app.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, is_dataclass
from pathlib import Path
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console

from distill.config import ConfigError, PipelineConfig, load_config
from distill.layout import LAYOUT

if TYPE_CHECKING:
    from distill.label import LabelEngine

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="distill's stage commands (what dvc.yaml calls).")
console = Console(stderr=True)

ParamsOpt = Annotated[Path, typer.Option("--params", help="The params file.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a value: --set train.alpha=0.5")]
Prepared = Annotated[Path, typer.Option(help="Folder of prepared splits.")]
ShapeOpt = Annotated[Optional[Path], typer.Option(help="The size_student stage's chosen shape (JSON).")]
TeacherDir = Annotated[Path, typer.Option("--teacher", help="Teacher model folder.")]
ResultOpt = Annotated[Optional[Path], typer.Option("--result", help="Write the stage's result here (JSON): what the "
                                                                    "flows read back (dvc.yaml declares it).")]


def _user_errors() -> tuple[type[Exception], ...]:
    from distill.contracts import ContractError
    from distill.data import DataError
    from distill.io import OutputBusy
    from distill.label import TeacherOutputError
    from distill.lm.prompts import LMDataError
    from distill.models import ModelError
    from distill.objective import ObjectiveError
    from distill.trainer import TrainingError

    return (ConfigError, DataError, ModelError, ContractError, TeacherOutputError, ObjectiveError, LMDataError,
            TrainingError, FileNotFoundError, OutputBusy)


def _config(params: Path, overrides: list[str] | None) -> PipelineConfig:
    from distill.io import die_with_parent

    die_with_parent()  # a stage command stops with the `dvc repro` (or shell) that started it
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "mlflow", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return load_config(params, overrides or [])


def _finish(result, metrics_path: Path | None = None, result_file: Path | None = None, show: bool = True) -> None:
    """Print a stage's result; write it as the stage's metrics JSON and as its result file (the typed
    way back to the flows, declared in dvc.yaml)."""
    import json

    from distill.io import write_json

    payload = json.loads(json.dumps(asdict(result) if is_dataclass(result) else result, default=str))
    if metrics_path:
        write_json(metrics_path, payload)
    if result_file:
        write_json(result_file, payload)
    if show:
        console.print_json(data=payload)


def _stage(fn):
    """Run a stage body; user errors become one red line and exit code 2."""
    try:
        return fn()
    except _user_errors() as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None


@app.command("config")
def config_cmd(params: ParamsOpt = Path("params.yaml"),
               overrides: Annotated[Path, typer.Option(help="The current run's overrides (written by the flows).")]
               = LAYOUT.run_overrides,
               out: Annotated[Path, typer.Option(help="The effective params file every stage reads.")]
               = LAYOUT.run_params) -> None:
    """Write params.yaml plus the current run's overrides, every key present (what every stage reads)."""
    from distill.config import write_run_params

    _stage(lambda: write_run_params(params, overrides, out))
    console.print(f"params: {out} (from {params} and {overrides})")


@app.command()
def prepare(out: Annotated[Path, typer.Option(help="Output folder.")] = LAYOUT.prepared,
            incoming: Annotated[Path, typer.Option(help="New traffic to add to the transfer set.")] = LAYOUT.incoming,
            params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, result_file: ResultOpt = None) -> None:
    """Build, split and validate the data set."""
    from distill import data

    result = _stage(lambda: data.run(_config(params, set_), out, incoming))
    _finish(result, result_file=result_file)
    report = result.report
    console.print(f"prepare: {report.rows_read} rows read, {report.labelled} labelled and {report.unlabelled} "
                  f"unlabelled distinct texts; labels used: {report.gold}; " + ", ".join(
                      f"{name} {size}" for name, size in result.sizes.items()))
    for why, rows in report.left_out.items():
        console.print(f"  left out: {rows} rows, {why}")
    for note in report.notes:
        console.print(f"  note: {note}")


@app.command()
def teacher(prepared: Prepared = LAYOUT.prepared, out: Path = LAYOUT.teacher,
            params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, result_file: ResultOpt = None,
            teacher_path: Annotated[Optional[Path], typer.Option(help="Overrides teacher.path.")] = None,
            imported: Annotated[Path, typer.Option(help="Where MLflow teachers are fetched to.")]
            = LAYOUT.imported_teacher) -> None:
    """Bootstrap or import the teacher."""
    from distill import teacher as stage

    _finish(_stage(lambda: stage.run(_config(params, set_), prepared, out, teacher_path, imported)),
            result_file=result_file)


@app.command("validate-teacher")
def validate_teacher(prepared: Prepared = LAYOUT.prepared, teacher: TeacherDir = LAYOUT.teacher,
                     out: Path = LAYOUT.teacher_report, params: ParamsOpt = Path("params.yaml"),
                     set_: SetOpt = None, result_file: ResultOpt = None) -> None:
    """Score the teacher on the gold test set and apply the teacher gate.

    A failed gate is a result, not an error: it is written to gate.json (which the flows read) and
    the stage succeeds; the label stage then refuses to label with this teacher.
    """
    from distill import teacher as stage

    gate = _stage(lambda: stage.validate(_config(params, set_), prepared, teacher, out))
    _finish(gate, result_file=result_file)
    if not gate.passed:
        console.print("[bold red]teacher gate failed[/]: " + "; ".join(gate.reasons)
                      + f". Report: {out / 'gate.json'}")


def label_command(engines: Mapping[str, LabelEngine]) -> Callable[..., None]:
    """The ``label`` stage command, with the labelling engines (beyond ``local``) its caller hands in."""

    def label(prepared: Prepared = LAYOUT.prepared, teacher: TeacherDir = LAYOUT.teacher,
              out: Path = LAYOUT.outputs, params: ParamsOpt = Path("params.yaml"),
              set_: SetOpt = None, result_file: ResultOpt = None,
              gate: Annotated[Optional[Path], typer.Option(
                  help="The teacher gate's verdict (gate.json); a failed gate stops the labelling.")] = None) -> None:
        """Label the distillation inputs with the teacher (once per teacher and input snapshot)."""
        from distill import label as stage
        from distill.teacher import fingerprint_of, require_passed_gate

        def body():
            if gate is not None:
                require_passed_gate(gate, fingerprint_of(teacher))
            return stage.run(_config(params, set_), prepared, teacher, out, engines)

        _finish(_stage(body), result_file=result_file)

    return label


app.command("label")(label_command({}))


@app.command()
def assistant(prepared: Prepared = LAYOUT.prepared, teacher: TeacherDir = LAYOUT.teacher,
              outputs: Path = LAYOUT.outputs, out: Path = LAYOUT.assistant,
              params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, result_file: ResultOpt = None) -> None:
    """Distil the teacher assistant and label the distillation set with it (a no-op card when disabled)."""
    from distill import students

    result = _stage(lambda: students.run_assistant(_config(params, set_), prepared, teacher, outputs, out))
    _finish(result if result is not None else {"assistant": "disabled"}, result_file=result_file)


@app.command("train-student")
def train_student(prepared: Prepared = LAYOUT.prepared, teacher: TeacherDir = LAYOUT.teacher,
                  outputs: Path = LAYOUT.outputs, out: Path = LAYOUT.student,
                  assistant: Annotated[Optional[Path], typer.Option(
                      help="Assistant folder; when it holds an enabled assistant, it teaches the student.")] = None,
                  imported: Annotated[Path, typer.Option(
                      help="Where an MLflow student.warm_start is fetched to.")] = LAYOUT.imported_student,
                  shape: ShapeOpt = None, params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
                  result_file: ResultOpt = None) -> None:
    """Distil the student from the cached teacher (or assistant) outputs."""
    from distill import students

    _finish(_stage(lambda: students.run_student(_config(params, set_), prepared, teacher, outputs, out,
                                                assistant_dir=assistant, imported_dir=imported, shape_file=shape)),
            result_file=result_file)


@app.command("size-student")
def size_student(prepared: Prepared = LAYOUT.prepared, teacher: TeacherDir = LAYOUT.teacher,
                 outputs: Path = LAYOUT.outputs,
                 out: Path = LAYOUT.student_shape,
                 imported: Annotated[Path, typer.Option(
                     help="Where an MLflow student.warm_start is fetched to.")] = LAYOUT.imported_student,
                 params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, result_file: ResultOpt = None) -> None:
    """Choose the student's shape for the deployment budget (size section)."""
    from distill import sizing

    result = _stage(lambda: sizing.run(_config(params, set_), prepared, teacher, outputs, out, imported))
    _finish(result, result_file=result_file, show=False)
    console.print(f"student shape {result.shape}: {result.reason}")


@app.command("train-baseline")
def train_baseline(prepared: Prepared = LAYOUT.prepared, teacher: TeacherDir = LAYOUT.teacher,
                   out: Path = LAYOUT.baseline, shape: ShapeOpt = None, params: ParamsOpt = Path("params.yaml"),
                   set_: SetOpt = None, result_file: ResultOpt = None) -> None:
    """Train the undistilled baseline student on gold labels only."""
    from distill import students

    _finish(_stage(lambda: students.run_baseline(_config(params, set_), prepared, teacher, out, shape_file=shape)),
            result_file=result_file)


@app.command("compress-student")
def compress_student(prepared: Prepared = LAYOUT.prepared, teacher: TeacherDir = LAYOUT.teacher,
                     student: Path = LAYOUT.student, outputs: Path = LAYOUT.outputs, out: Path = LAYOUT.compressed,
                     params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
                     result_file: ResultOpt = None) -> None:
    """Prune the student (vocabulary, feed-forward neurons, layers) and recover it by distillation (compress)."""
    from distill import compress

    _finish(_stage(lambda: compress.run(_config(params, set_), prepared, teacher, student, outputs, out)),
            result_file=result_file)


@app.command()
def evaluate(prepared: Prepared = LAYOUT.prepared, teacher: TeacherDir = LAYOUT.teacher,
             student: Path = LAYOUT.student, baseline: Path = LAYOUT.baseline,
             compressed: Annotated[Optional[Path], typer.Option(help="The compressed student's folder.")] = None,
             out: Path = LAYOUT.evaluate, params: ParamsOpt = Path("params.yaml"),
             set_: SetOpt = None, result_file: ResultOpt = None) -> None:
    """Compare teacher, student, compressed student (each fp32 and INT8) and baseline on one harness."""
    from distill import evaluate as stage

    result = _stage(lambda: stage.run(_config(params, set_), prepared, teacher, student, baseline, out,
                                      compressed))
    _finish(result.metrics, result_file=result_file)


@app.command()
def audit(predictions: Path = LAYOUT.predictions, out: Path = LAYOUT.audit,
          teacher: Annotated[Optional[Path], typer.Option(help="Teacher folder (counterfactual/robustness tests).")] = None,
          student: Annotated[Optional[Path], typer.Option(help="Student folder (counterfactual/robustness tests).")] = None,
          baseline: Annotated[Optional[Path], typer.Option(help="Baseline folder, compared when given.")] = None,
          compressed: Annotated[Optional[Path], typer.Option(help="The compressed student's folder: audited "
                                                                  "too when it was evaluated.")] = None,
          params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, result_file: ResultOpt = None) -> None:
    """Audit the student (and the compressed student) for inherited bias and robustness, slice by slice,
    against the teacher."""
    from distill import audit as stage

    report = _stage(lambda: stage.run(_config(params, set_), predictions, out, teacher, student, baseline,
                                      compressed))
    _finish({"passed": report.passed, "reasons": report.reasons}, result_file=result_file)


# ---- LLM distillation stages (dvc.yaml: lm_teacher, lm_prompts, lm_validate_teacher, lm_select, lm_generate, ...) ----

LMTeacherDir = Annotated[Path, typer.Option("--teacher", help="Causal-LM teacher folder (lm.teacher_path wins "
                                                             "when set).")]


def _lm_teacher_dir(cfg: PipelineConfig, teacher: Path) -> Path:
    from distill.lm.teacher import teacher_dir

    return teacher_dir(cfg.lm.teacher_path, teacher)


@app.command("lm-teacher")
def lm_teacher(out: Annotated[Path, typer.Option(help="Folder of the converted teacher.")] = LAYOUT.lm_teacher,
               imported: Annotated[Path, typer.Option(help="Where an MLflow teacher (lm.teacher_path: models:/...) "
                                                           "is fetched to.")] = LAYOUT.lm_imported_teacher,
               params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, result_file: ResultOpt = None) -> None:
    """The LM teacher: the packaged SmolLM2 GGUF converted, an MLflow teacher copied in, or a folder named."""
    from distill.lm import teacher as stage

    _finish(_stage(lambda: stage.run(_config(params, set_), out, imported)), result_file=result_file)


@app.command("lm-prompts")
def lm_prompts(prepared: Prepared = LAYOUT.prepared,
               out: Annotated[Path, typer.Option(help="Prompt set (Parquet).")] = LAYOUT.lm_prompts,
               params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, result_file: ResultOpt = None) -> None:
    """Build the LM prompt set (train / held-out) from the prepared splits."""
    from distill.lm import prompts

    _finish(_stage(lambda: prompts.run(_config(params, set_), prepared, out)), result_file=result_file)


@app.command("lm-validate-teacher")
def lm_validate_teacher(prompts: Annotated[Path, typer.Option(help="Prompt set.")] = LAYOUT.lm_prompts,
                        teacher: LMTeacherDir = LAYOUT.lm_teacher, out: Path = LAYOUT.lm_teacher_report,
                        params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
                        result_file: ResultOpt = None) -> None:
    """The LM teacher gate: the teacher answers held-out prompts; task score, format, refusals, unsafe text.

    A failed gate is a result, not an error: it is written to gate.json (which the flow reads) and the stage
    succeeds; lm-generate then refuses to generate with this teacher.
    """
    from distill.lm import validate

    def body():
        cfg = _config(params, set_)
        return validate.run(cfg, prompts, _lm_teacher_dir(cfg, teacher), out)

    gate = _stage(body)
    _finish(gate, result_file=result_file)
    if not gate.passed:
        console.print("[bold red]LM teacher gate failed[/]: " + "; ".join(gate.reasons)
                      + f". Report: {out / 'report.md'}")


GateOpt = Annotated[Optional[Path], typer.Option(
    help="The LM teacher gate's verdict (gate.json); a failed gate stops the stage before any teacher call.")]


def _require_gate(cfg: PipelineConfig, gate: Path | None, folder: Path) -> None:
    if gate is not None:
        from distill.lm.generate import teacher_identity
        from distill.lm.validate import require_passed_lm_gate

        require_passed_lm_gate(gate, teacher_identity(cfg, folder))


@app.command("lm-select")
def lm_select(prompts: Annotated[Path, typer.Option(help="Prompt set.")] = LAYOUT.lm_prompts,
              teacher: LMTeacherDir = LAYOUT.lm_teacher,
              out: Annotated[Path, typer.Option(help="The selection (JSON).")] = LAYOUT.lm_selection,
              params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, result_file: ResultOpt = None,
              gate: GateOpt = None) -> None:
    """Choose the training prompts a paid teacher answers (lm.select: all, random, or active rounds)."""
    from distill.lm import select

    def body():
        cfg = _config(params, set_)
        folder = _lm_teacher_dir(cfg, teacher)
        _require_gate(cfg, gate, folder)
        chosen = select.run(cfg, prompts, folder, out)
        return {"calls": chosen.calls, **{k: v for k, v in asdict(chosen).items() if k != "selected"},
                "selection": str(out)}

    _finish(_stage(body), result_file=result_file)


@app.command("lm-generate")
def lm_generate(prompts: Annotated[Path, typer.Option(help="Prompt set.")] = LAYOUT.lm_prompts,
                teacher: LMTeacherDir = LAYOUT.lm_teacher,
                out: Annotated[Path, typer.Option(help="Completions (Parquet).")] = LAYOUT.lm_completions,
                params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, result_file: ResultOpt = None,
                gate: GateOpt = None,
                selection: Annotated[Optional[Path], typer.Option(
                    help="lm_select's choice of training prompts; without it every prompt is sent.")] = None) -> None:
    """Generate the teacher's completions once (resumable; recorded sampling settings)."""
    from distill.lm import generate

    def body():
        cfg = _config(params, set_)
        folder = _lm_teacher_dir(cfg, teacher)
        _require_gate(cfg, gate, folder)
        chosen = None
        if selection is not None:
            from distill.lm.select import read_selection

            chosen = read_selection(selection, prompts, generate.teacher_identity(cfg, folder))
        return generate.run(cfg, prompts, folder, out, chosen)

    _finish(_stage(body), result_file=result_file)


@app.command("lm-topk")
def lm_topk(completions: Annotated[Path, typer.Option(help="Teacher completions.")] = LAYOUT.lm_completions,
            teacher: LMTeacherDir = LAYOUT.lm_teacher,
            out: Annotated[Path, typer.Option(help="Top-k cache (Parquet).")] = LAYOUT.lm_topk,
            metrics: Annotated[Optional[Path], typer.Option(help="Cache figures JSON.")] = None,
            params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, result_file: ResultOpt = None) -> None:
    """Cache the teacher's top-k next-token log-probabilities; print bytes/token and kept mass."""
    from distill.lm import topk

    def body():
        cfg = _config(params, set_)
        return topk.run(cfg, completions, _lm_teacher_dir(cfg, teacher), out)

    _finish(_stage(body), metrics, result_file=result_file)


@app.command("lm-train")
def lm_train(completions: Annotated[Path, typer.Option(help="Teacher completions.")] = LAYOUT.lm_completions,
             topk_cache: Annotated[Optional[Path], typer.Option("--topk", help="Top-k cache (token mode).")]
             = LAYOUT.lm_topk,
             teacher: LMTeacherDir = LAYOUT.lm_teacher,
             out: Annotated[Path, typer.Option(help="Student folder.")] = LAYOUT.lm_student,
             metrics: Annotated[Optional[Path], typer.Option(help="Training figures JSON.")] = None,
             params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, result_file: ResultOpt = None) -> None:
    """Train the LM student (lm.train.mode: sequence, token or online)."""
    from distill.lm import train

    def body():
        cfg = _config(params, set_)
        return train.run(cfg, completions, _lm_teacher_dir(cfg, teacher), out, topk_cache)

    result = _stage(body)
    result.history = []  # per-step losses stay out of the metrics file
    _finish(result, metrics, result_file=result_file)


@app.command("lm-baseline")
def lm_baseline(prompts: Annotated[Path, typer.Option(help="Prompt set.")] = LAYOUT.lm_prompts,
                teacher: LMTeacherDir = LAYOUT.lm_teacher,
                out: Annotated[Path, typer.Option(help="Baseline folder.")] = LAYOUT.lm_baseline,
                metrics: Annotated[Optional[Path], typer.Option(help="Training figures JSON.")] = None,
                params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, result_file: ResultOpt = None) -> None:
    """Train the undistilled LM baseline: the student's shape and budget, on the reference answers only."""
    from distill.lm import train

    def body():
        cfg = _config(params, set_)
        return train.run_baseline(cfg, prompts, _lm_teacher_dir(cfg, teacher), out)

    result = _stage(body)
    result.history = []
    _finish(result, metrics, result_file=result_file)


@app.command("lm-evaluate")
def lm_evaluate(completions: Annotated[Path, typer.Option(help="Teacher completions (held-out rows are used).")]
                = LAYOUT.lm_completions,
                teacher: LMTeacherDir = LAYOUT.lm_teacher,
                student: Annotated[Path, typer.Option(help="Distilled LM student folder.")] = LAYOUT.lm_student,
                baseline: Annotated[Path, typer.Option(help="Undistilled LM baseline folder.")] = LAYOUT.lm_baseline,
                out: Annotated[Path, typer.Option(help="Report folder (metrics.json, report.md).")]
                = LAYOUT.lm_evaluate,
                params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, result_file: ResultOpt = None) -> None:
    """Evaluate teacher, distilled student and baseline on the held-out prompts; print the table."""
    from distill.lm import evaluate

    def body():
        cfg = _config(params, set_)
        return evaluate.run(cfg, completions, _lm_teacher_dir(cfg, teacher), student, baseline, out)

    result = _stage(body)
    _finish(result, result_file=result_file, show=False)
    evaluate.print_lm_table(result, Console(), title="LM evaluation (held-out prompts)")
    console.print(f"report: {out / 'report.md'}; figures: {out / 'metrics.json'}")


if __name__ == "__main__":  # pragma: no cover
    app()
