"""distill_lm_pipeline: LLM distillation from prompts to a gated LM student in the MLflow registry.

The LM stages of dvc.yaml run in order through ``dvc repro`` (DVC skips what did not change): the
teacher folder, the prompt set, the teacher's completions (a local teacher, or the black-box endpoint
``lm.api``), the top-k cache, the distilled student, the undistilled baseline and the evaluation.
The gate (``distill.gates.decide_lm_promotion``) decides; the flow registers the student with its
lineage and moves ``champion`` only when the gate passed.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from distill import model_card
from distill.config import PipelineConfig, load_config, write_overrides
from distill.gates import decide_lm_promotion
from distill.io import read_json
from distill.models import read_card
from flows.lock import project_lock
from tasks import dvc, registry

STAGES = ("prepare", "lm_teacher", "lm_prompts", "lm_generate", "lm_topk", "lm_train", "lm_baseline", "lm_evaluate")
PATHS = {
    "teacher": "models/lm_teacher",
    "prompts": "data/lm/prompts.parquet",
    "completions": "data/lm/completions.parquet",
    "topk": "data/lm/topk.parquet",
    "student": "models/lm_student",
    "baseline": "models/lm_baseline",
    "evaluate": "reports/lm",
}


def print_lm_summary(result: dict, decision: dict, version: str, promoted: bool, report: str) -> None:
    from rich.console import Console

    from distill.lm.evaluate import print_lm_table

    console = Console()
    print_lm_table(result, console, title="distill: LM teacher vs distilled student vs baseline (held-out)")
    verdict = "[green]promoted to champion[/]" if promoted else "[yellow]not promoted[/]"
    console.print(f"LM student version {version}: {verdict}")
    for reason in decision["reasons"]:
        console.print(f"  - {reason}")
    console.print(f"LM evaluation report: {report}")


@flow(name="distill_lm_pipeline", log_prints=True)
def distill_lm_pipeline(project_dir: str = ".", overrides: list[str] | None = None, reason: str = "manual") -> dict:
    """LLM distillation on params.yaml's ``lm`` section (plus ``overrides``, written into params.yaml).

    Shares the project lock with distill_pipeline: one run at a time per project folder.

    Args:
        project_dir: the DVC project holding params.yaml and dvc.yaml.
        overrides: ``section.key=value`` items, e.g. ``lm.train.mode=sequence``.
        reason: why this run started; recorded as a tag.
    """
    with project_lock(project_dir):
        return run_lm_pipeline(project_dir, overrides, reason)


def run_lm_pipeline(project_dir: str, overrides: list[str] | None, reason: str) -> dict:
    """The body of ``distill_lm_pipeline``, run under the project lock."""
    logger = get_run_logger()
    params = Path(project_dir, "params.yaml")
    write_overrides(params, overrides or [])
    cfg: PipelineConfig = load_config(params)
    path = {key: str(Path(project_dir, value)) for key, value in PATHS.items()}

    runs = [dvc.repro(stage, project_dir) for stage in STAGES]
    dvc.push(project_dir)
    metrics = read_json(Path(path["evaluate"], "metrics.json"))
    decision = decide_lm_promotion(metrics, cfg.lm.promote)

    hashes = dvc.lock_hashes(project_dir)
    card = read_card(Path(path["student"]))
    lineage = {"task": "lm", "teacher_fingerprint": card.get("teacher_fingerprint", ""),
               "teacher_source": "api" if cfg.lm.api else (cfg.lm.teacher_path or "packaged SmolLM2-135M-Instruct"),
               "completions_md5": hashes.get(PATHS["completions"], ""), "topk_md5": hashes.get(PATHS["topk"], ""),
               "prompts_md5": hashes.get(PATHS["prompts"], ""), "completions_hash": card.get("completions_hash", ""),
               "topk_hash": str(card.get("topk_hash") or ""), "mode": card.get("mode", ""),
               "loss": card.get("loss", ""), "git_commit": registry.git_commit(project_dir),
               "params_sha256": model_card.params_hash(cfg.model_dump(mode="json")), "reason": reason,
               "promotion_gate": "passed" if decision.passed else "failed",
               "gate_reasons": "; ".join(decision.reasons)[:5000]}
    lineage |= {f"eval.{key}": f"{value:.4f}" for key, value in metrics["student"].items()
                if key in ("perplexity", "kl_from_teacher", "top1_agreement", "greedy_prefix_agreement",
                           "task_exact", "unsafe_rate", "ms_per_token") and value is not None}
    if cfg.lm.api is not None:
        lineage["teacher_endpoint"] = f"{cfg.lm.api.base_url} ({cfg.lm.api.model})"
    run_id = registry.log_lm_run(cfg, {"lm_eval": metrics}, lineage,
                                 [path["evaluate"]], project_dir)
    description = (f"LM student distilled by distill ({card.get('mode')} mode) from teacher "
                   f"{lineage['teacher_fingerprint'][:16]}.\n\n" + "\n".join(f"- {r}" for r in decision.reasons))
    version, fresh = registry.register_lm_student(cfg, run_id, path["student"], card, lineage, description,
                                                  project_dir)
    registry.tag_lm_version(cfg, version, {"promotion_gate": lineage["promotion_gate"],
                                           "gate_reasons": lineage["gate_reasons"], "run_id_latest": run_id},
                            project_dir=project_dir)
    if decision.passed:
        moved = registry.promote_lm(cfg, version, project_dir, promoted_by="flow", reason="; ".join(decision.reasons))
        registry.tag_lm_version(cfg, version, {"decision": "promoted"}, project_dir=project_dir)
        outcome = "promoted" if moved["changed"] else "already champion"
    else:
        registry.tag_lm_version(cfg, version, {"decision": "blocked by gates"}, project_dir=project_dir)
        logger.warning("LM student v%s is not promoted: %s", version, "; ".join(decision.reasons))
        outcome = "blocked by gates"
    from distill.lm.evaluate import markdown_table

    create_markdown_artifact(key="distill-lm-summary", markdown=markdown_table(metrics)
                             + f"\n\nLM student version {version}: {outcome}.")
    report = str(Path(path["evaluate"], "report.md"))
    print_lm_summary({"metrics": metrics}, decision.to_dict(), version, decision.passed, report)
    return {"completed": True, "run_id": run_id, "student_version": version, "newly_registered": fresh,
            "promoted": decision.passed, "promotion": outcome, "decision": decision.to_dict(), "metrics": metrics,
            "skipped_stages": [r.stage for r in runs if r.skipped], "report": report}
