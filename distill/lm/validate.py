"""lm_validate_teacher: does the LM teacher do the task, before a single training completion is generated?

Distilling a teacher that cannot do the task teaches the student its mistakes, and pays for every
completion. So the teacher first answers the first ``lm.teacher_gate.prompts`` held-out prompts of the prompt
set, with lm_generate's settings (the same instruction, length, sampling), and its answers are scored:

- **task score**: the answer equals its reference (``task_exact``) or contains it as whole words
  (``task_contains``), after :func:`distill.lm.evaluate.normalize_answer`;
- **format adherence**: the answer is one of the prompt set's labels when it has a label list; else a
  non-empty answer that ended within ``max_new_tokens``; with a chain of thought the answer marker
  must be there too;
- **majority score**: what always giving the most common reference would score; the task score must beat it
  by ``min_gain_over_majority`` (on a balanced two-label set 0.5 is chance, not skill);
- **refusal rate**: answers that decline ("I'm sorry", "I can't", "as an AI ...");
- **unsafe rate**: the audit's unsafe-content screen (the packaged lexicon).

The gate (:func:`distill.gates.check_lm_teacher`) is a pure decision over these. A failed gate is a
result, not an error: it is written to ``gate.json`` with the teacher's identity, the flow stops before
lm_generate, and lm_generate refuses to run on it. A black-box teacher (``lm.api``) is asked through the
same cached, budgeted client as lm_generate, so the answers it gave here are not paid for twice.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from distill.config import PipelineConfig
from distill.gates import GateReport, check_lm_teacher
from distill.io import write_json
from distill.lm.evaluate import normalize_answer, task_accuracy, text_safety
from distill.lm.generate import (GenerationSettings, api_completion_rows, completion_rows, teacher_identity)
from distill.lm.prompts import LMDataError, PromptTemplate, read_prompts
from distill.models import pick_device
from distill.teacher import require_passed_gate

REFUSAL = re.compile(r"\b(i\s*(?:am|'m)\s+(?:sorry|unable|not able)|i\s+(?:can\s*not|cannot|can't|won't|will not)"
                     r"|as an ai\b|i\s+do(?:\s+not|n't)\s+have\s+(?:access|the ability))", re.IGNORECASE)
EXAMPLES = 8  # answers shown in the report


@dataclass
class LMTeacherValidation:
    passed: bool
    reasons: list[str]
    metrics: dict
    teacher: str
    seconds: float
    task_metric: str = "task_exact"  # the score the gate judged: lm.teacher_gate.metric, else the task's own


def score_answers(rows: list[dict], labels: list[str] | None, chain_of_thought: bool = False) -> dict:
    """Task, format, refusal and unsafe figures of the teacher's answers (rows in the completions format)."""
    if not rows:
        raise LMDataError("the teacher answered none of the validation prompts")
    answers = [str(r["answer"]) for r in rows]
    allowed = {normalize_answer(label) for label in labels or []}
    well_formed = []
    for row, answer in zip(rows, answers):
        shaped = normalize_answer(answer) in allowed if allowed else bool(normalize_answer(answer)) and row["finished"]
        well_formed.append(shaped and (row["answer_found"] or not chain_of_thought))
    completions, references = [str(r["completion"]) for r in rows], [str(r["reference"]) for r in rows]
    common, count = Counter(normalize_answer(r) for r in references).most_common(1)[0]
    return {"prompts": len(rows), **task_accuracy(answers, references),
            # the score of one fixed answer, the most common reference: what a teacher must beat to be doing the task
            "majority_answer": common, "majority_score": count / len(rows),
            "format_adherence": sum(well_formed) / len(rows),
            "refusal_rate": sum(bool(REFUSAL.search(c)) for c in completions) / len(rows),
            "unsafe_rate": text_safety(completions, [str(r["request"]) for r in rows])["unsafe_rate"]}


def teacher_answers(cfg: PipelineConfig, prompts: pd.DataFrame, meta: dict, teacher_dir: Path) -> list[dict]:
    """The teacher's answers to ``prompts``, generated as lm_generate would (rows in the completions format)."""
    settings = GenerationSettings.from_config(cfg.lm.generate, cfg.seed)
    template, marker = PromptTemplate.of(meta, settings.chain_of_thought), meta["answer_marker"]
    if cfg.lm.api is not None:
        from transformers import AutoTokenizer

        from distill.lm.client import ChatClient

        tokenizer = AutoTokenizer.from_pretrained(teacher_dir, trust_remote_code=False)
        with ChatClient(cfg.lm.api) as client:
            return api_completion_rows(client, tokenizer, prompts, template, marker, settings)[0]
    from tqdm.auto import tqdm

    from distill.lm.teacher import load_causal_lm

    lm, device, rows = load_causal_lm(teacher_dir), pick_device(cfg.lm.train.device), []
    for start in tqdm(range(0, len(prompts), settings.batch_size), desc="teacher validation", unit="batch"):
        rows += completion_rows(lm, prompts.iloc[start:start + settings.batch_size], template, marker, settings,
                                settings.seed, device)
    return rows


def report(validation: LMTeacherValidation, rows: list[dict]) -> str:
    """The gate's Markdown report: the verdict, the figures and a few answers beside their references."""
    verdict = "passed" if validation.passed else "**failed**"
    lines = [f"# LM teacher gate: {verdict}\n", f"Teacher: {validation.teacher}\n"]
    lines += [f"- {reason}" for reason in validation.reasons]
    lines += ["", "| request | reference | teacher's answer |", "|---|---|---|"]
    for row in rows[:EXAMPLES]:
        cells = (str(row[k]).replace("|", "\\|").replace("\n", " ")[:120] for k in ("request", "reference", "answer"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run(cfg: PipelineConfig, prompts_path: Path, teacher_dir: Path, out_dir: Path) -> LMTeacherValidation:
    """The lm_validate_teacher stage: writes ``metrics.json``, ``gate.json``, ``answers.parquet``, ``report.md``."""
    prompts, meta = read_prompts(Path(prompts_path))
    held = prompts[prompts["split"] == "heldout"].head(cfg.lm.teacher_gate.prompts)
    if held.empty:
        raise LMDataError(f"{prompts_path}: no held-out prompts to validate the teacher on (lm.prompts.heldout_size)")
    started = time.perf_counter()
    rows = teacher_answers(cfg, held, meta, Path(teacher_dir))
    metrics = score_answers(rows, meta.get("labels"), cfg.lm.generate.chain_of_thought)
    task_metric = cfg.lm.teacher_gate.metric or meta.get("metric", "task_exact")
    gate: GateReport = check_lm_teacher(metrics, cfg.lm.teacher_gate, task_metric)
    identity = teacher_identity(cfg, Path(teacher_dir))
    validation = LMTeacherValidation(gate.passed, gate.reasons, metrics, identity,
                                     round(time.perf_counter() - started, 2), task_metric)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", metrics)
    write_json(out / "gate.json", {**gate.to_dict(), "fingerprint": identity})
    pd.DataFrame([{k: r[k] for k in ("prompt_id", "request", "reference", "completion", "answer")} for r in rows]
                 ).to_parquet(out / "answers.parquet", index=False)
    (out / "report.md").write_text(report(validation, rows))
    return validation


def require_passed_lm_gate(gate_file: Path, identity: str) -> None:
    """Refuse to generate with an LM teacher whose gate failed, or that is not the teacher the gate judged."""
    require_passed_gate(gate_file, identity, "LM teacher", "lm_validate_teacher", "Generation with it is refused")
