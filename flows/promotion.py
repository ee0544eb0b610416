"""distill_promotion: act on a promotion decision, automatically or after a human review.

Its own flow so that a reviewer sees one small run to resume in the Prefect UI, and so that
tests can drive it without the whole pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from functools import partial

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from distill.config import PipelineConfig
from tasks import aliases, registry
from tasks.serving import serving_check
from tasks.registry import Kind


class ReviewDecision(RunInput):
    """A reviewer's decision on a registered student version (the form the Prefect UI shows)."""

    approve: bool = Field(description="Promote this version to champion. Only a version whose gates passed "
                                      "is ever paused for review.")
    comment: str = Field("", description="Why; written to the version's review_comment tag.")


def _registry_ops(cfg: PipelineConfig, kind: Kind) -> tuple[str, Callable, Callable]:
    """The registered model's name, its tagging and its promotion function, for a classifier student or
    an LM student (both share the aliases, the promotion lock and this review)."""
    return (registry.model_name(cfg, kind), partial(registry.tag_version, kind=kind),
            partial(registry.promote, kind=kind))


@flow(name="distill_promotion", log_prints=True)
def promote_student(cfg: PipelineConfig, version: str, decision: dict, project_dir: str = ".",
                    smoke_text: str | None = None, poll_interval_s: int = 10, kind: Kind = "student") -> dict:
    """Promote ``version`` when its gates passed: at once (``promote.mode: auto``) or once a reviewer
    approves (``review``). Rejection, a review timeout or a failed gate leave ``champion`` alone.

    Args:
        cfg: the pipeline config (model names, mode, review timeout, serving check).
        version: the registered student version.
        decision: ``decide_promotion(...).to_dict()`` (or ``decide_lm_promotion``'s).
        smoke_text: a text to send the new champion in the serving check (classifier students).
        poll_interval_s: how often a paused run checks whether it was resumed.
        kind: ``student`` (the classifier, ``promote.student_model``) or ``lm`` (``lm.promote.model_name``).
    """
    logger = get_run_logger()
    _, tag, promote = _registry_ops(cfg, kind)
    if not decision["passed"]:
        tag(cfg, version, {"decision": "blocked by gates",
                           **({"review": "not requested: gates failed"} if cfg.promote.mode == "review" else {})},
            project_dir=project_dir)
        logger.warning("v%s is not promoted: its gates failed (a reviewer cannot promote it either; "
                       "`distill promote %s --reason ...` is the deliberate override)", version, version)
        return {"promoted": False, "outcome": "blocked by gates"}
    if cfg.promote.mode == "review":
        verdict = ask_reviewer(cfg, version, decision, project_dir, poll_interval_s, kind)
        if verdict != "approved":
            tag(cfg, version, {"decision": f"review {verdict}"}, project_dir=project_dir)
            return {"promoted": False, "outcome": f"review {verdict}"}
    # the gates' reasons are in the version's model card: the tag says what it is without being cut short
    moved = promote(cfg, version, project_dir, promoted_by=cfg.promote.mode,
                    reason=f"all {len(decision['reasons'])} gate checks passed (the model card lists them)")
    tag(cfg, version, {"decision": "promoted"}, project_dir=project_dir)
    outcome = {"promoted": True, "outcome": "promoted" if moved["changed"] else "already champion",
               "displaced": moved["displaced"]}
    if moved["changed"] and cfg.promote.serving_check and smoke_text and kind == "student":
        outcome["serving"] = check_serving(cfg, version, smoke_text, project_dir)
        outcome["promoted"] = outcome["serving"]["ok"]
    return outcome


def ask_reviewer(cfg: PipelineConfig, version: str, decision: dict, project_dir: str, poll_interval_s: int,
                 kind: Kind = "student") -> str:
    """Tag the version ``review=pending``, pause for a ``ReviewDecision``; returns approved / rejected / timed_out."""
    from prefect.runtime import flow_run

    logger = get_run_logger()
    name, tag, _ = _registry_ops(cfg, kind)
    tag(cfg, version, {"review": "pending", "decision": "pending review"}, project_dir=project_dir)
    create_markdown_artifact(key="distill-review", description=f"Review of {name} v{version}", markdown=(
        f"## Review {name} v{version}\n\nThe gates passed:\n\n" + "\n".join(f"- {r}" for r in decision["reasons"])
        + f"\n\nRead the model card on the version's page in the MLflow registry, then **Resume** this run "
          f"(flow run `{flow_run.id}`) with approve / reject and a comment. "
          f"Without a decision in {cfg.promote.review_timeout_s} s the version is not promoted."))
    logger.info("%s v%s waits for review: resume flow run %s from the Prefect UI (approve or reject, "
                "with a comment) within %d s", name, version, flow_run.id, cfg.promote.review_timeout_s)
    try:
        answer = pause_flow_run(wait_for_input=ReviewDecision, timeout=cfg.promote.review_timeout_s,
                                poll_interval=min(poll_interval_s, cfg.promote.review_timeout_s))
    except FlowPauseTimeout:
        answer = None
    verdict = "timed_out" if answer is None else "approved" if answer.approve else "rejected"
    tags = {"review": verdict, "reviewed_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    if answer is not None and answer.comment:
        tags["review_comment"] = answer.comment[:5000]
    tag(cfg, version, tags, project_dir=project_dir)
    logger.info("review of %s v%s: %s%s", name, version, verdict, f" ({answer.comment})" if answer and answer.comment
                else "")
    return verdict


def check_serving(cfg: PipelineConfig, version: str, text: str, project_dir: str) -> dict:
    """The new champion must load by its registry URI in a fresh process and answer; else roll back."""
    logger = get_run_logger()
    try:
        result = serving_check(cfg, text, project_dir)
    except aliases.PromotionError as exc:
        logger.error("serving check failed, rolling back: %s", exc)
        registry.tag_version(cfg, version, {"serving_check": "failed"}, project_dir=project_dir)
        back = registry.withdraw_champion(cfg, f"serving check failed: {exc}", project_dir)
        return {"ok": False, "error": str(exc)[-500:], "rolled_back_to": back}
    registry.tag_version(cfg, version, {"serving_check": f"ok: {text[:60]!r} -> {result['label']}"},
                         project_dir=project_dir)
    logger.info("serving check: %s answered %r with %s (%.2f) in a fresh process, %.1f s", result["uri"], text,
                result["label"], result["score"], result["seconds"])
    return {"ok": True, **result}
