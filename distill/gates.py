"""Gates: pure decisions with a verdict and the reasons for it. They never touch the network."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from distill.config import CompressConfig, LMPromoteConfig, LMTeacherGateConfig, PromoteConfig, TeacherConfig


@dataclass
class GateReport:
    passed: bool
    reasons: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def check_teacher(metrics: dict[str, float], cfg: TeacherConfig) -> GateReport:
    """Is the teacher good enough to be worth distilling (gold test accuracy and macro-F1)?

    ``metrics`` may also say how many examples the teacher was tested on (``test_size``), trained on
    (``train_size``) and whether it was bootstrapped; a failed gate then says what to change.
    """
    reasons, passed = [], True
    for key, floor in (("accuracy", cfg.min_accuracy), ("macro_f1", cfg.min_macro_f1)):
        ok = metrics[key] >= floor
        passed &= ok
        reasons.append(f"teacher {key} {metrics[key]:.3f} {'>=' if ok else '<'} minimum {floor:.3f}")
    if metrics.get("labels_too_few"):
        few = metrics["labels_too_few"]
        reasons.append(f"macro_f1 counts the {metrics['labels_judged']} labels with at least "
                       f"{metrics['min_label_support']} test examples; {len(few)} with fewer "
                       f"({metrics['too_few_rows_share']:.1%} of the test rows) are too few to judge: "
                       + ", ".join(few[:10]) + (", ..." if len(few) > 10 else "")
                       + f" (macro-F1 over every label: {metrics['macro_f1_all_labels']:.3f})")
    if not passed:
        reasons.append(teacher_advice(metrics))
    return GateReport(passed, reasons)


def teacher_advice(metrics: dict) -> str:
    """What a user can change when the teacher gate fails, with the sizes it was judged on."""
    sizes = f"tested on {metrics['test_size']} gold examples" if metrics.get("test_size") else "tested"
    if metrics.get("bootstrapped"):
        trained = f"fine-tuned on {metrics['train_size']}" if metrics.get("train_size") else "fine-tuned"
        return (f"the bootstrapped teacher was {trained} and {sizes}: give it more labelled data (data.gold: all "
                "uses every labelled row; data.gold_per_label in per_label mode; a `split` column), a larger budget "
                "(teacher.max_tokens, teacher.epochs), or your own fine-tuned model (teacher.path); or lower "
                "teacher.min_accuracy / teacher.min_macro_f1")
    return (f"the given teacher (teacher.path) was {sizes}: check that it was trained for this task and label set, "
            "or lower teacher.min_accuracy / teacher.min_macro_f1")


def label_accuracy(labels: Sequence[str], predicted: Sequence[str]) -> dict[str, dict[str, float]]:
    """Size and accuracy of every label slice: ``{'label=x': {'n': 12, 'accuracy': 0.917}}``."""
    slices: dict[str, list[int]] = {}
    for gold, guess in zip(labels, predicted, strict=True):
        slices.setdefault(f"label={gold}", []).append(int(gold == guess))
    return {name: {"n": len(hits), "accuracy": sum(hits) / len(hits)} for name, hits in sorted(slices.items())}


def decide_promotion(teacher_gate: GateReport, metrics: dict[str, dict[str, float]], audit_passed: bool,
                     audit_reasons: list[str], cfg: PromoteConfig, champion: dict | None = None,
                     challenger_slices: dict[str, dict[str, float]] | None = None,
                     other_task: str = "") -> GateReport:
    """Should the new student become champion? Every gate must pass.

    Args:
        teacher_gate: the teacher gate's report.
        metrics: the evaluation harness's figures by candidate (``student`` and ``teacher`` used).
        audit_passed, audit_reasons: the slice audit against the teacher.
        cfg: the thresholds.
        champion: the current champion scored in this run on the same gold test set,
            ``{"version": "3", "accuracy": 0.95, "slices": label_accuracy(...)}``; None when there
            is no champion yet (the champion gates are then skipped, and the reasons say so).
        challenger_slices: the student's ``label_accuracy`` on that set.
        other_task: why the champion is not compared when it was distilled for another task (its labels
            are not this data's; ``champion`` is then None): the reasons say so instead of "no champion yet".
    """
    reasons, passed = [], teacher_gate.passed
    reasons.append("teacher gate passed" if teacher_gate.passed else "teacher gate failed")
    student = metrics["student"]
    share = student["accuracy"] / max(metrics["teacher"]["accuracy"], 1e-9)
    ok = share >= cfg.min_teacher_share
    passed &= ok
    reasons.append(f"student keeps {share:.1%} of the teacher's accuracy "
                   f"({'>=' if ok else '<'} {cfg.min_teacher_share:.0%})")
    passed &= audit_passed
    reasons.append("audit passed" if audit_passed else "audit failed: " + "; ".join(audit_reasons))
    latency = student.get("latency_p50_ms")
    ok = latency is not None and latency <= cfg.max_latency_p50_ms
    passed &= ok
    reasons.append("no latency figure for the student: the latency gate fails" if latency is None else
                   f"student p50 latency {latency:.2f} ms {'<=' if ok else '>'} limit {cfg.max_latency_p50_ms:g} ms")
    if champion is None:
        reasons.append(f"{other_task or 'no champion yet'}: the champion gates (overall and per-label accuracy) "
                       "are skipped")
        return GateReport(bool(passed), reasons)
    ok, champion_reasons = compare_with_champion(student["accuracy"], challenger_slices or {}, champion, cfg)
    return GateReport(bool(passed and ok), reasons + champion_reasons)


def slice_drop_p_value(champion: dict[str, float], challenger: dict[str, float]) -> float:
    """One-sided Fisher exact test on a slice's right/wrong counts: how likely is a drop at least this
    large if the challenger were no worse than the champion there?"""
    from scipy.stats import fisher_exact

    def counts(s: dict[str, float]) -> list[int]:
        right = round(s["accuracy"] * s["n"])
        return [right, int(s["n"]) - right]

    return float(fisher_exact([counts(champion), counts(challenger)], alternative="greater").pvalue)


def drop_text(drop: float, ok: bool, limit: float) -> str:
    """How far a model fell below its bar, against the largest drop allowed (a gain says only that)."""
    if drop <= 0:
        return f"gain {abs(drop):.3f} (no drop; at most {limit:g} allowed)"
    return f"drop {drop:.3f} ({'within' if ok else 'over'} the limit {limit:g})"


def compare_with_champion(accuracy: float, slices: dict[str, dict[str, float]], champion: dict,
                          cfg: PromoteConfig) -> tuple[bool, list[str]]:
    """The champion gates: overall accuracy, then every label slice both models were scored on."""
    name = f"champion v{champion['version']}"
    drop = champion["accuracy"] - accuracy
    passed = drop <= cfg.max_drop_vs_champion
    reasons = [f"accuracy {accuracy:.3f} vs {name} {champion['accuracy']:.3f} on the same test set: "
               + drop_text(drop, passed, cfg.max_drop_vs_champion)]
    worse = []
    for slice_name, theirs in sorted(champion.get("slices", {}).items()):
        ours = slices.get(slice_name)
        if ours is None:
            continue
        slice_drop = theirs["accuracy"] - ours["accuracy"]
        if slice_drop <= cfg.max_slice_drop_vs_champion:
            if slice_name.startswith("holdout="):  # a hold-out is always shown: it is why a re-distillation ran
                reasons.append(f"slice {slice_name} (n={ours['n']}): accuracy {ours['accuracy']:.3f} vs {name}'s "
                               f"{theirs['accuracy']:.3f} (within the limit {cfg.max_slice_drop_vs_champion:g})")
            continue
        if ours["n"] < cfg.min_slice_size:
            reasons.append(f"slice {slice_name} (n={ours['n']}) drops {slice_drop:.3f} vs {name}: "
                           f"reported, not gated (fewer than {cfg.min_slice_size} examples)")
            continue
        p = slice_drop_p_value(theirs, ours)
        if cfg.slice_significance is not None and p >= cfg.slice_significance:
            reasons.append(f"slice {slice_name} (n={ours['n']}): accuracy {ours['accuracy']:.3f} is "
                           f"{slice_drop:.3f} below {name}'s {theirs['accuracy']:.3f}, over the limit "
                           f"{cfg.max_slice_drop_vs_champion:g} but not significant (p={p:.2g} >= "
                           f"{cfg.slice_significance:g}): reported, not gated")
            continue
        worse.append(slice_name)
        reasons.append(f"slice {slice_name} (n={ours['n']}): accuracy {ours['accuracy']:.3f} is "
                       f"{slice_drop:.3f} below {name}'s {theirs['accuracy']:.3f} "
                       f"(limit {cfg.max_slice_drop_vs_champion:g}, p={p:.2g})")
    if not worse:
        reasons.append(f"no label slice is more than {cfg.max_slice_drop_vs_champion:g} below {name}")
    return passed and not worse, reasons


COMPRESSED = {"compressed_int8": "its INT8 model", "compressed": "the compressed student"}


def check_compression(metrics: dict[str, dict[str, float]], audit: dict | None, cfg: CompressConfig,
                      candidate: str = "compressed") -> GateReport:
    """May ``candidate`` (``compressed``, the fp32 compressed student, or ``compressed_int8``, its INT8 model)
    stand in for the student (be the one registered and gated for promotion)?

    It must keep the student's accuracy on the gold test set within ``cfg.max_accuracy_drop``, be faster at
    batch 1 and smaller, and pass the same audit against the teacher. ``audit`` is the candidate's own audit
    (``passed``, ``reasons``), None when it was not audited.
    """
    what = COMPRESSED.get(candidate, candidate)
    variant, student = metrics.get(candidate), metrics.get("student")
    if not variant or not student:
        return GateReport(False, [f"{what} was not evaluated (compress.enabled is false, or evaluate.candidates "
                                  "leaves it out)"])
    reasons, passed = [], True
    drop = student["accuracy"] - variant["accuracy"]
    ok = drop <= cfg.max_accuracy_drop + 1e-12
    passed &= ok
    reasons.append(f"{candidate} accuracy {variant['accuracy']:.3f} vs student {student['accuracy']:.3f}: "
                   + drop_text(drop, ok, cfg.max_accuracy_drop))
    for key, figure, unit in (("latency_p50_ms", "p50 latency", "ms"), ("size_mb", "size", "MB")):
        ok = variant[key] < student[key]
        passed &= ok
        reasons.append(f"{candidate} {figure} {variant[key]:.2f} {unit} vs student {student[key]:.2f} {unit} "
                       f"({student[key] / max(variant[key], 1e-9):.2f}x{'' if ok else ': not an improvement'})")
    if audit is None:
        passed = False
        reasons.append(f"{what} was not audited: it cannot stand in for the student")
    else:
        passed &= bool(audit["passed"])
        reasons.append(f"{candidate} audit passed" if audit["passed"] else
                       f"{candidate} audit failed: " + "; ".join(audit["reasons"][:3]))
    return GateReport(bool(passed), reasons)


def choose_compressed(metrics: dict[str, dict[str, float]], audits: dict[str, dict | None],
                      cfg: CompressConfig) -> tuple[str, GateReport]:
    """Which model is registered in the student's place: the compression gate.

    Its INT8 model when it passes :func:`check_compression` (and ``cfg.register_int8``), else the fp32 compressed
    student when that passes, else the student. ``audits`` holds each candidate's own audit by name. Returns
    the chosen candidate (``compressed_int8``, ``compressed`` or ``student``) and the report, passed when a
    compressed model was chosen, with every candidate's reasons.
    """
    order = ["compressed_int8", "compressed"] if cfg.register_int8 else ["compressed"]
    if not any(metrics.get(name) for name in order) or "student" not in metrics:
        return "student", GateReport(False, [
            "no compressed student was evaluated (compress.enabled is false, or evaluate.candidates leaves it out): "
            "the student is registered"])
    reasons = []
    if not cfg.register_int8 and metrics.get("compressed_int8"):
        quantized, student = metrics["compressed_int8"], metrics["student"]
        reasons.append(f"its INT8 model (evaluated, not registered: compress.register_int8 is false): accuracy "
                       f"{quantized['accuracy']:.3f}, p50 {quantized['latency_p50_ms']:.2f} ms "
                       f"({student['latency_p50_ms'] / max(quantized['latency_p50_ms'], 1e-9):.2f}x the student), "
                       f"{quantized['size_mb']:.2f} MB")
    for name in order:
        report = check_compression(metrics, audits.get(name), cfg, name)
        reasons += report.reasons
        if report.passed:
            return name, GateReport(True, reasons + [f"{COMPRESSED[name]} ({name}) is registered in the student's "
                                                     "place"])
    return "student", GateReport(False, reasons + ["the student is registered (uncompressed)"])


def check_lm_teacher(metrics: dict[str, float], cfg: LMTeacherGateConfig,
                     task_metric: str = "task_exact") -> GateReport:
    """Is the LM teacher worth distilling: does it do the task, in the expected format, without refusing or
    writing unsafe text? ``metrics`` are :func:`distill.lm.validate.score_answers`' figures on held-out prompts;
    the task score is ``cfg.metric``, else ``task_metric`` (the prompt set's task's own)."""
    reasons, passed = [], True
    metric = cfg.metric or task_metric
    checks = ((metric, metrics[metric], cfg.min_task_score, ">="),
              ("format adherence", metrics["format_adherence"], cfg.min_format_adherence, ">="),
              ("refusal rate", metrics["refusal_rate"], cfg.max_refusal_rate, "<="),
              ("unsafe rate", metrics["unsafe_rate"], cfg.max_unsafe_rate, "<="))
    for name, value, limit, sense in checks:
        ok = value >= limit if sense == ">=" else value <= limit
        passed &= ok
        bound = "minimum" if sense == ">=" else "maximum"
        reasons.append(f"teacher {name} {value:.3f} {sense if ok else {'>=': '<', '<=': '>'}[sense]} {bound} {limit:.3f}")
    reasons[0] += f" on {metrics['prompts']} held-out prompts"
    if metrics.get("majority_score") is not None:  # figures written before it existed have none
        gain = metrics[metric] - metrics["majority_score"]
        ok = gain >= cfg.min_gain_over_majority - 1e-12
        passed &= ok
        reasons.insert(1, f"teacher {metric} {metrics[metric]:.3f} is {gain:+.3f} against always answering "
                          f"{metrics['majority_answer']!r} ({metrics['majority_score']:.3f}; minimum gain "
                          f"{cfg.min_gain_over_majority:.3f})")
    if not passed:
        reasons.append("distilling a teacher that cannot do the task teaches the student its mistakes: give the "
                       "teacher a task it can do (lm.prompts.task, lm.prompts.instruction, worked examples in "
                       "lm.prompts.examples, a smaller label set), another teacher (lm.teacher_path, lm.api), or lower "
                       "the lm.teacher_gate thresholds")
    return GateReport(passed, reasons)


def decide_lm_promotion(metrics: dict[str, dict[str, float | None]], cfg: LMPromoteConfig,
                        task_metric: str | None = None) -> GateReport:
    """Should the distilled LM student become champion? It must beat the undistilled baseline on agreement
    with the teacher (KL and the configured agreement figure), keep ``cfg.min_task_share`` of the teacher's
    task score, generate no more unsafe text than the teacher, and stay within the perplexity limit on
    held-out teacher text.

    Args:
        metrics: ``teacher``, ``student`` and ``baseline`` figures of the LM evaluation
            (:func:`distill.lm.evaluate.evaluate_lm`); figures that do not apply are None (a black-box
            teacher has no logits, so no KL: that gate is then skipped and the reasons say so).
        cfg: the thresholds (``lm.promote``).
        task_metric: the task score the teacher gate used (``task_exact`` or ``task_contains``); None skips
            the task gate.
    """
    student, baseline, teacher = metrics["student"], metrics["baseline"], metrics["teacher"]
    reasons, passed = [], True
    kl, kl_base = student.get("kl_from_teacher"), baseline.get("kl_from_teacher")
    if kl is None or kl_base is None:
        reasons.append("no token-level KL to the teacher (a black-box teacher has no logits): the KL gate is "
                       "skipped")
    else:
        gain = kl_base - kl
        ok = gain > cfg.min_kl_gain if cfg.min_kl_gain == 0 else gain >= cfg.min_kl_gain
        passed &= ok
        reasons.append(f"KL(teacher || student) {kl:.4f} vs baseline {kl_base:.4f}: gain {gain:.4f} "
                       f"({'meets' if ok else 'misses'} the minimum gain {cfg.min_kl_gain:g})")
    figure = cfg.agreement
    if student.get(figure) is None and figure == "top1_agreement":
        figure = "greedy_prefix_agreement"
    agree, agree_base = student.get(figure), baseline.get(figure)
    if agree is None or agree_base is None:
        passed = False
        reasons.append(f"no {figure} figure for the student or the baseline: the agreement gate fails")
    else:
        ok = agree - agree_base >= cfg.min_agreement_gain
        passed &= ok
        reasons.append(f"{figure} {agree:.3f} vs baseline {agree_base:.3f} "
                       f"({'meets' if ok else 'misses'} the minimum gain {cfg.min_agreement_gain:g})")
    ours, theirs = (student.get(task_metric), teacher.get(task_metric)) if task_metric else (None, None)
    if not theirs:
        reasons.append(f"no task score of the teacher to keep a share of ({task_metric or 'no task metric'}: "
                       f"{theirs}): the task gate is skipped")
    else:
        share = (ours or 0.0) / theirs
        ok = share >= cfg.min_task_share - 1e-12
        passed &= ok
        reasons.append(f"{task_metric} {ours or 0.0:.3f} vs teacher {theirs:.3f}: {share:.0%} of it "
                       f"({'meets' if ok else 'misses'} the minimum share {cfg.min_task_share:.0%})")
    unsafe, unsafe_teacher = student.get("unsafe_rate"), teacher.get("unsafe_rate")
    if unsafe is None or unsafe_teacher is None:
        passed = False
        reasons.append("no unsafe-content rate for the student or the teacher: the safety gate fails")
    else:
        ok = unsafe <= unsafe_teacher + cfg.max_unsafe_excess + 1e-12
        passed &= ok
        reasons.append(f"unsafe-content rate {unsafe:.3f} vs teacher {unsafe_teacher:.3f} "
                       f"({'within' if ok else 'over'} the allowed excess {cfg.max_unsafe_excess:g})")
    ppl = student.get("perplexity")
    ok = ppl is not None and ppl <= cfg.max_perplexity
    passed &= ok
    reasons.append("no perplexity figure for the student: the perplexity gate fails" if ppl is None else
                   f"perplexity on held-out teacher text {ppl:.2f} {'<=' if ok else '>'} limit {cfg.max_perplexity:g}")
    return GateReport(bool(passed), reasons)
