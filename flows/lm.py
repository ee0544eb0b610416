"""distill_lm_pipeline: LLM distillation from prompts to a gated LM student in the MLflow registry.

The LM stages of dvc.yaml run in order through ``dvc repro`` (DVC skips what did not change): the
teacher folder, the prompt set, the teacher gate (distill/lm/validate.py: a teacher that cannot do the
task stops the run before any generation, in a Failed state), the teacher's completions (a local teacher,
or the black-box endpoint ``lm.api``), the top-k cache, the distilled student, the undistilled baseline
and the evaluation.
The gate (``distill.gates.decide_lm_promotion``) decides; the flow registers the student with its
lineage and moves ``champion`` only when the gate passed.

An MLflow teacher (``lm.teacher_path: models:/name@alias``, ``models:/name/version`` or ``runs:/...``) is
pinned to its registry version and downloaded first (``tasks.registry.fetch_model_folder``, retried on
network errors); the lm_teacher stage then copies it into ``models/lm_teacher``. A promoted LM student
(``models:/distill-lm-student@champion``) can teach the next one.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import State

from distill import model_card
from distill.config import PipelineConfig
from distill.gates import decide_lm_promotion
from distill.io import read_json
from distill.layout import LAYOUT
from distill.lm.teacher import describe_source
from distill.models import SOURCE_FILE, is_model_uri, read_card
from flows.lock import project_lock
from flows.outcome import end
from flows.promotion import promote_student
from tasks import dvc, registry, tracking
from tasks.lm_teacher import fetch_lm_teacher

STAGES = ("prepare", "lm_teacher", "lm_prompts", "lm_validate_teacher", "lm_select", "lm_generate", "lm_topk",
          "lm_train", "lm_baseline", "lm_evaluate")



def teacher_lineage(cfg: PipelineConfig, teacher_dir: Path) -> dict[str, str]:
    """The teacher's provenance tags: its source in words, and for an MLflow teacher the URI and version."""
    if cfg.lm.api is not None:
        return {"teacher_source": "api", "teacher_endpoint": f"{cfg.lm.api.base_url} ({cfg.lm.api.model})"}
    fetched = is_model_uri(cfg.lm.teacher_path)
    tags = {"teacher_source": describe_source(cfg.lm.teacher_path, teacher_dir if fetched else None)}
    source = Path(teacher_dir, SOURCE_FILE)
    if fetched and source.is_file():
        info = read_json(source)
        tags |= {"teacher_uri": info["uri"], "teacher_run_id": str(info.get("run_id") or "")}
        if info.get("version"):
            tags |= {"teacher_model": info["name"], "teacher_version": str(info["version"])}
    return tags


def teacher_spend(runs: list[dvc.StageRun]) -> dict[str, float | int | None]:
    """What the teacher was asked for the student's completions (MLflow metrics ``teacher.*``): prompts answered
    (calls; train and held-out), tokens and estimated cost (a black-box teacher: counted at the usage each answer
    was paid with, cached ones included), and how the training prompts were chosen (lm_select)."""
    by_stage = {run.stage: run.result or {} for run in runs}
    generated, selected = by_stage.get("lm_generate", {}), by_stage.get("lm_select", {})
    api = generated.get("api") or {}
    return {"calls": api.get("calls", generated.get("rows")),
            "tokens": api.get("dataset_tokens", generated.get("completion_tokens")),
            "estimated_cost": api.get("dataset_cost"),
            "train_calls": selected.get("calls"), "train_pool": selected.get("pool"),
            "select_rounds": len(selected.get("rounds") or []) or None}


def spend_line(spend: dict, strategy: str) -> str:
    """The teacher's bill in one line: calls (training prompts of the pool, how chosen), tokens, cost."""
    line = f"teacher: {spend['calls']} calls"
    if spend.get("train_calls") is not None:
        line += f" ({spend['train_calls']} of {spend['train_pool']} training prompts, lm.select.strategy {strategy})"
    if spend.get("tokens") is not None:
        line += f", {spend['tokens']:,} tokens"
    if spend.get("estimated_cost"):
        line += f", estimated cost {spend['estimated_cost']:.4f}"
    return line


def print_lm_summary(result: dict, decision: dict, version: str, promoted: bool, report: str,
                     spend: str = "") -> None:
    from rich.console import Console

    from distill.lm.evaluate import print_lm_table

    console = Console()
    print_lm_table(result, console, title="distill: LM teacher vs distilled student vs baseline (held-out)")
    if spend:
        console.print(spend)
    verdict = "[green]promoted to champion[/]" if promoted else "[yellow]not promoted[/]"
    console.print(f"LM student version {version}: {verdict}")
    for reason in decision["reasons"]:
        console.print(f"  - {reason}")
    console.print(f"LM evaluation report: {report}")


@flow(name="distill_lm_pipeline", log_prints=True)
def distill_lm_pipeline(project_dir: str = ".", overrides: list[str] | None = None,
                        reason: str = "manual") -> dict | State:
    """LLM distillation on params.yaml's ``lm`` section plus ``overrides`` (this run's only).

    Shares the project lock with distill_pipeline: one run at a time per project folder.

    Args:
        project_dir: the DVC project holding params.yaml and dvc.yaml.
        overrides: ``section.key=value`` items, e.g. ``lm.train.mode=sequence``.
        reason: why this run started; recorded as a tag.

    Returns the run's summary; inside a Failed state when the gates blocked the LM student (flows/outcome.py).
    """
    with project_lock(project_dir):
        return end(run_lm_pipeline(project_dir, overrides, reason))


def run_lm_pipeline(project_dir: str, overrides: list[str] | None, reason: str) -> dict:
    """The body of ``distill_lm_pipeline``, run under the project lock."""
    logger = get_run_logger()
    cfg, runs = dvc.start_run(project_dir, overrides or [])
    at = LAYOUT.under(project_dir)
    new_teacher = False
    if is_model_uri(cfg.lm.teacher_path):
        source = Path(at.lm_imported_teacher, SOURCE_FILE)
        before = read_json(source) if source.is_file() else {}
        after = fetch_lm_teacher(cfg, str(at.lm_imported_teacher), project_dir)
        # The alias moved (or the URI changed): DVC cannot see that, its params are the same string.
        new_teacher = [before.get(k) for k in ("uri", "version", "model_uuid")] != [
            after.get(k) for k in ("uri", "version", "model_uuid")]
    runs.append(dvc.repro("lm_teacher", project_dir, force=new_teacher))
    runs.append(dvc.repro("lm_prompts", project_dir))
    gate = dvc.repro("lm_validate_teacher", project_dir)
    if not gate.result["passed"]:  # a failed gate is a result: nothing generated, trained or registered
        logger.error("LM teacher gate failed: %s", "; ".join(gate.result["reasons"]))
        return {"completed": False, "teacher_gate": {"passed": False, "reasons": gate.result["reasons"]},
                "teacher_metrics": gate.result["metrics"], "report": str(Path(at.lm_teacher_report, "report.md"))}
    runs.append(gate)
    runs += [dvc.repro(stage, project_dir) for stage in STAGES[STAGES.index("lm_select"):]]
    dvc.push(project_dir)
    metrics = read_json(Path(at.lm_evaluate, "metrics.json"))
    decision = decide_lm_promotion(metrics, cfg.lm.promote, gate.result.get("task_metric"))

    hashes = dvc.lock_hashes(project_dir)
    card = read_card(at.lm_student)
    lineage = {"task": "lm", "teacher_fingerprint": card.get("teacher_fingerprint", ""),
               **teacher_lineage(cfg, at.lm_teacher),
               "completions_md5": hashes.get(str(LAYOUT.lm_completions), ""),
               "topk_md5": hashes.get(str(LAYOUT.lm_topk), ""), "prompts_md5": hashes.get(str(LAYOUT.lm_prompts), ""),
               "completions_hash": card.get("completions_hash", ""),
               "topk_hash": str(card.get("topk_hash") or ""), "mode": card.get("mode", ""),
               "loss": card.get("loss", ""), "git_commit": registry.git_commit(project_dir),
               "params_sha256": model_card.params_hash(cfg.model_dump(mode="json")), "reason": reason,
               "promotion_gate": "passed" if decision.passed else "failed",
               "gate_reasons": "; ".join(decision.reasons)[:5000]}
    lineage |= {f"eval.{key}": f"{value:.4f}" for key, value in metrics["student"].items()
                if key in ("perplexity", "kl_from_teacher", "top1_agreement", "greedy_prefix_agreement",
                           "task_exact", "unsafe_rate", "ms_per_token") and value is not None}
    lineage["select_strategy"] = cfg.lm.select.strategy
    spend = teacher_spend(runs)
    run_id = tracking.log_run(cfg, {"lm_eval": metrics, "teacher": spend}, lineage,
                              [str(at.lm_evaluate), str(at.lm_selection)], project_dir, kind="lm")
    description = (f"LM student distilled by distill ({card.get('mode')} mode) from teacher "
                   f"{lineage['teacher_fingerprint'][:16]}.\n\n" + "\n".join(f"- {r}" for r in decision.reasons))
    version, fresh = registry.register_student(cfg, run_id, str(at.lm_student), card, lineage, description,
                                               project_dir, kind="lm")
    registry.tag_version(cfg, version, {"promotion_gate": lineage["promotion_gate"],
                                        "gate_reasons": lineage["gate_reasons"], "run_id_latest": run_id},
                         project_dir=project_dir, kind="lm")
    if not decision.passed:
        logger.warning("LM student v%s is not promoted: %s", version, "; ".join(decision.reasons))
    # The classifier's promotion flow: auto, or paused for a reviewer with promote.mode: review.
    promotion = promote_student(cfg, version, decision.to_dict(), project_dir=project_dir, kind="lm")
    outcome, promoted = promotion["outcome"], promotion["promoted"]
    from distill.lm.evaluate import markdown_table

    bill = spend_line(spend, cfg.lm.select.strategy) if spend.get("calls") is not None else ""
    create_markdown_artifact(key="distill-lm-summary", markdown=markdown_table(metrics)
                             + f"\n\nLM student version {version}: {outcome}." + (f"\n\n{bill}." if bill else ""))
    report = str(Path(at.lm_evaluate, "report.md"))
    print_lm_summary({"metrics": metrics}, decision.to_dict(), version, promoted, report, bill)
    return {"completed": True, "run_id": run_id, "student_version": version, "newly_registered": fresh,
            "promoted": promoted, "promotion": outcome, "decision": decision.to_dict(), "metrics": metrics,
            "skipped_stages": [r.stage for r in runs if r.skipped], "report": report}
