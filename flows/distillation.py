"""The distillation chain shared by the pipeline and the re-distillation flows.

prepare, teacher, teacher gate, register the teacher, label, push, assistant, size, train the
student and the baseline, evaluate, audit, decide, log the run, register the student, promote.
``distil`` runs it under the project lock; ``flows/pipeline.py`` (distill_pipeline) ends it with
a monitoring pass, ``flows/redistill.py`` (redistill) follows it with the champion comparison.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from distill import model_card
from distill.gates import GateReport, choose_compressed, decide_promotion, label_accuracy
from distill.io import read_json
from distill.layout import LAYOUT
from distill.models import MODEL_CARD, is_model_uri, read_card, read_history
from monitoring.production import labelled_holdout, log_root
from tasks import dvc, registry, scoring, tracking
from tasks.task_switch import set_aside_other_task
from flows.lock import project_lock
from flows.promotion import promote_student


def same_model(a: Path, b: Path) -> bool:
    """Whether two model folders hold the same weights (their cards' fingerprints match)."""
    if not (a / MODEL_CARD).is_file() or not (b / MODEL_CARD).is_file():
        return False
    fingerprint = read_card(a).get("fingerprint")
    return fingerprint is not None and fingerprint == read_card(b).get("fingerprint")


@task(name="validate teacher")
def validate_teacher(project_dir: str) -> GateReport:
    """Run the teacher gate stage and read its verdict, its typed result (a failed gate is a result, not
    an error)."""
    gate = dvc.repro.fn("validate_teacher", project_dir).result
    return GateReport(gate["passed"], gate["reasons"])


def summary_table(metrics: dict) -> str:
    """The run's comparison table as Markdown."""
    head = "| model | accuracy | macro-F1 | agreement | p50 ms | p95 ms | params (M) | size (MB) |\n"
    head += "|---|---:|---:|---:|---:|---:|---:|---:|\n"
    rows = [f"| {name} | {m['accuracy']:.3f} | {m['macro_f1']:.3f} | {m['agreement_with_teacher']:.3f} | "
            f"{m['latency_p50_ms']:.2f} | {m['latency_p95_ms']:.2f} | {m['parameters'] / 1e6:.2f} | "
            f"{m['size_mb']:.1f} |" for name, m in model_card.in_order(metrics).items()]
    return head + "\n".join(rows)


def print_summary(metrics: dict, decision: GateReport, version: str, promoted: bool, reports: dict,
                  compression: GateReport | None = None) -> None:
    """A rich table and the report paths on the terminal."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="distill: teacher vs students (gold test set)")
    for column in ("model", "accuracy", "macro-F1", "agree w/ teacher", "p50 ms", "params", "size MB"):
        table.add_column(column, justify="left" if column == "model" else "right", no_wrap=column == "model")
    for name, m in model_card.in_order(metrics).items():
        table.add_row(name, f"{m['accuracy']:.3f}", f"{m['macro_f1']:.3f}", f"{m['agreement_with_teacher']:.3f}",
                      f"{m['latency_p50_ms']:.2f}", f"{m['parameters'] / 1e6:.1f}M", f"{m['size_mb']:.1f}")
    console = Console()
    console.print(table)
    verdict = "[green]promoted to champion[/]" if promoted else "[yellow]not promoted[/]"
    if compression is not None:
        console.print(f"compression gate: {'passed' if compression.passed else 'failed'}")
        for reason in compression.reasons:
            console.print(f"  - {reason}")
    console.print(f"student version {version}: {verdict}")
    for reason in decision.reasons:
        console.print(f"  - {reason}")
    for name, path in reports.items():
        console.print(f"{name}: {path}", soft_wrap=True)  # a link must stay on one line to be clicked


def verdict(passed: bool) -> str:
    return "passed" if passed else "failed"


def gold_text(predictions: pd.DataFrame, model: str = "student") -> str | None:
    """A gold test text ``model`` gets right: the serving check's request."""
    right = predictions[predictions["label"] == predictions[model]]
    return str((right if len(right) else predictions)["text"].iloc[0]) if len(predictions) else None


def run_name(reason: str, student_card: dict, metrics: dict, precision: str = "fp32") -> str:
    """What a run made, for the MLflow runs table: ``drift: kl T=4 a=0.7 2x128 -> 0.962 (98.1% of teacher)``."""
    shape = student_card.get("student") or {}
    size = f"{shape.get('num_layers')}x{shape.get('hidden_size')}" if shape.get("num_layers") else "student"
    if shape.get("vocab_size"):
        size += f" v{shape['vocab_size'] // 1000}k"
    recipe = student_card.get("method") or "kd"
    if student_card.get("kd_temperature") is not None:
        recipe += f" T={student_card['kd_temperature']:g} a={student_card['alpha']:g}"
    if student_card.get("compression"):
        size += " compressed"
    if precision != "fp32":
        size += f" {precision}"
    accuracy, teacher = metrics["student"]["accuracy"], metrics["teacher"]["accuracy"]
    return f"{reason}: {recipe} {size} -> {accuracy:.3f} ({accuracy / max(teacher, 1e-9):.1%} of teacher)"


def distil(project_dir: str, overrides: list[str] | None = None, reason: str = "manual") -> dict:
    """The distillation chain on params.yaml plus ``overrides``, under the project lock.

    The overrides are this run's: recorded in .distill/overrides.yaml (params.yaml is never
    written), merged by the `config` stage into .distill/params.yaml, which the stages read and DVC
    tracks. One run at a time per project folder: a second run waits for the first
    (flows/lock.py), so the run's params, models/, reports/, dvc.lock and the promotion decision
    are never mixed.
    """
    with project_lock(project_dir):
        return _distil(project_dir, overrides, reason)


def _distil(project_dir: str, overrides: list[str] | None, reason: str) -> dict:
    logger = get_run_logger()
    cfg, runs = dvc.start_run(project_dir, overrides or [])
    at = LAYOUT.under(project_dir)
    # a champion of other labels (the project moved to another data set) is not this data's: its task's
    # monitoring state is set aside, the data prepared again without that task's traffic, and the champion
    # not compared
    other_task = set_aside_other_task(cfg, project_dir)
    if other_task:
        runs.append(dvc.repro("prepare", project_dir))
    new_teacher = is_model_uri(cfg.teacher.path) and registry.fetch_model(
        cfg, cfg.teacher.path, str(at.imported_teacher), project_dir)
    runs.append(dvc.repro("teacher", project_dir, force=new_teacher))
    teacher_card = read_card(at.teacher)
    teacher_gate = validate_teacher(project_dir)
    if not teacher_gate.passed:
        logger.error("teacher gate failed: %s", "; ".join(teacher_gate.reasons))
        return {"completed": False, "teacher_gate": teacher_gate.to_dict(),
                "report": str(at.gate)}
    # Only a teacher that passed its gate is registered (and becomes the teacher champion).
    teacher_version = registry.register_teacher(cfg, str(at.teacher), teacher_card, project_dir)

    runs.append(dvc.repro("label", project_dir))
    dvc.push(project_dir)
    new_start = is_model_uri(cfg.student.warm_start) and registry.fetch_model(
        cfg, cfg.student.warm_start, str(at.imported_student), project_dir)
    if new_start and same_model(at.imported_student, at.student):
        new_start = False  # the alias moved to this folder's own student (it was promoted): nothing to redo
    runs += [dvc.repro(stage, project_dir, force=new_start and stage in ("size_student", "train_student"))
             for stage in ("assistant", "size_student", "train_student", "train_baseline", "compress_student",
                           "evaluate", "audit")]
    metrics = read_json(Path(at.evaluate, "metrics.json"))
    audit = read_json(Path(at.audit, "audit.json"))
    predictions = pd.read_parquet(at.predictions)
    # the compressed student's INT8 model, else its fp32 weights, stands in for the student when it keeps its
    # accuracy, is faster and smaller and passes the audit: from here on "student" is the model that is
    # registered and gated for promotion
    registered, compression = choose_compressed(metrics, {name: audit.get(name) for name in
                                                          ("compressed", "compressed_int8")}, cfg.compress)
    student_dir = at.compressed if compression.passed else at.student
    precision = "int8" if registered.endswith("_int8") else "fp32"
    logger.info("compression gate %s: %s", verdict(compression.passed), "; ".join(compression.reasons))
    gated = {**metrics, "student": metrics[registered]}
    if compression.passed:
        audit = {**audit, **audit[registered]}
    gold, student_pred = predictions["label"].astype(str).tolist(), predictions[registered].astype(str).tolist()
    # Traffic held out of drifted windows (with ground truth) is gated like a label slice: a re-distilled
    # student may not fall behind the champion on the shifted data it was re-distilled for.
    holdouts = {"shifted": labelled_holdout(log_root(cfg.monitor.log_path, project_dir))}
    holdouts = {name: frame for name, frame in holdouts.items() if len(frame)}
    champion = None if other_task else scoring.score_champion(cfg, str(at.prepared), project_dir, holdouts)
    challenger_slices = label_accuracy(gold, student_pred) | (
        scoring.score_student_holdouts(cfg, str(student_dir), holdouts, precision) if champion else {})
    decision = decide_promotion(teacher_gate, gated, audit["passed"], audit["reasons"], cfg.promote,
                                champion=champion, challenger_slices=challenger_slices, other_task=other_task)

    hashes = dvc.lock_hashes(project_dir)
    student_card = read_card(student_dir)
    params = cfg.model_dump(mode="json")
    lineage = {"teacher_model": cfg.promote.teacher_model, "teacher_fingerprint": teacher_card["fingerprint"],
               "teacher_version": teacher_version, "teacher_outputs_md5": hashes.get(str(LAYOUT.outputs), ""),
               "prepared_md5": hashes.get(str(LAYOUT.prepared), ""), "method": student_card.get("method", ""),
               "git_commit": registry.git_commit(project_dir), "params_sha256": model_card.params_hash(params),
               "reason": reason, "overrides": json.dumps(overrides or []),
               "teacher_gate": verdict(teacher_gate.passed), "audit": verdict(audit["passed"]),
               "promotion_gate": verdict(decision.passed), "promote_mode": cfg.promote.mode,
               "eval.accuracy": f"{gated['student']['accuracy']:.4f}",
               "eval.teacher_share": f"{gated['student']['accuracy'] / max(metrics['teacher']['accuracy'], 1e-9):.4f}",
               "eval.latency_p50_ms": f"{gated['student']['latency_p50_ms']:.2f}",
               "compression": model_card.compression_tag(student_card, compression.passed, precision),
               "precision": precision,
               "champion_at_decision": champion["version"] if champion else "none"}
    shape_file = at.student_shape
    if shape_file.is_file():
        lineage["student_shape"] = read_json(shape_file)["reason"][:500]
    if student_card.get("losses"):
        lineage["losses"] = str(student_card["losses"])[:5000]
    reports = {"evaluation report": str(Path(at.evaluate, "report.html")),
               "audit report": str(Path(at.audit, "audit.html")),
               "data contracts (GE)": str(Path(project_dir, "gx/uncommitted/data_docs/local_site/index.html"))}
    artifacts = [str(at.evaluate), str(at.audit), str(at.teacher_report), str(shape_file),
                 str(Path(at.prepared, "report.json"))]
    curves = {name: read_history(folder) for name, folder in
              (("teacher", at.teacher), ("student", at.student), ("baseline", at.baseline),
               ("compressed", at.compressed))}
    run_id = tracking.log_run(cfg, {"eval": tracking.headline(metrics)}, lineage, artifacts, project_dir, curves=curves,
                              run_name=run_name(reason, student_card, gated, precision))
    # the version row carries what a reviewer scans and what the monitor reads; the whole lineage is on the
    # run (its tags) and in the model card
    version_tags = {key: value for key, value in lineage.items() if key in registry.VERSION_TAGS}
    version, fresh = registry.register_student(cfg, run_id, str(student_dir), student_card, version_tags,
                                               "Student distilled by distill; the model card follows.", project_dir)
    if fresh:
        card = model_card.render(
            name=cfg.promote.student_model, version=version, student_card=student_card,
            teacher={"name": cfg.promote.teacher_model, "version": teacher_version,
                     "fingerprint": teacher_card["fingerprint"], "source": teacher_card.get("source")},
            lineage=lineage, params=params, metrics=metrics, audit=audit, decision=decision.to_dict(),
            champion=champion, confused=read_json(Path(at.evaluate, "details.json"))["confused_pairs"][registered][:5],
            registered=registered, compression=compression.to_dict())
        registry.tag_version(cfg, version, version_tags, description=card, project_dir=project_dir)
    else:
        # An earlier run registered these very weights: its card and lineage stay as they were (a reviewer
        # reads how the version was made); this run is only noted.
        registry.tag_version(cfg, version, {"reproduced_by_run": run_id, "reproduced_reason": reason},
                             project_dir=project_dir)
    outcome = promote_student(cfg, version, decision.to_dict(), project_dir=project_dir,
                              smoke_text=gold_text(predictions, registered))
    promoted = outcome["promoted"]
    create_markdown_artifact(key="distill-summary", markdown=summary_table(metrics)
                             + f"\n\nStudent version {version} (`{registered}`): "
                             f"{'promoted' if promoted else 'not promoted'}.")
    reports |= tracking.ui_links(cfg, project_dir, run_id, version)
    print_summary(metrics, decision, f"{version} ({registered})", promoted, reports, compression)
    print(f"promotion: {outcome['outcome']}" + (f" (serving check: {outcome['serving']})" if "serving" in outcome
                                                 else ""))
    return {"completed": True, "run_id": run_id, "student_version": version, "newly_registered": fresh,
            "registered": registered, "compression": compression.to_dict(), "promoted": promoted, "promotion": outcome, "decision": decision.to_dict(), "metrics": metrics,
            "skipped_stages": [r.stage for r in runs if r.skipped], "reports": reports}
