"""The model card of a registered student: plain dicts in, Markdown out (no I/O, no MLflow).

The registry shows it as the model version's description, so a reviewer reads it where
they approve: what the student is for, what it learned from, how it compares with its
teacher, where it fails, and how to rebuild it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from distill.lengths import model_length

# (key, row title, format) of the evaluation table; a figure no candidate has is left out.
FIGURES = [("accuracy", "accuracy", "{:.3f}"), ("accuracy_ci_low", "accuracy, 95 % CI low", "{:.3f}"),
           ("accuracy_ci_high", "accuracy, 95 % CI high", "{:.3f}"), ("macro_f1", "macro-F1", "{:.3f}"),
           ("agreement_with_teacher", "agrees with the teacher", "{:.3f}"),
           ("kl_to_teacher", "KL to the teacher", "{:.3f}"), ("ece", "calibration error (ECE)", "{:.3f}"),
           ("latency_p50_ms", "latency p50 (ms, batch 1)", "{:.2f}"), ("latency_p95_ms", "latency p95 (ms)", "{:.2f}"),
           ("throughput_per_s", "throughput (texts/s)", "{:.0f}"), ("parameters", "parameters (M)", "{:.2f}"),
           ("size_mb", "size (MB)", "{:.1f}")]
PAD = "&emsp;"
ORDER = ("teacher", "teacher_int8", "student", "student_int8", "compressed", "compressed_int8", "baseline")
TRAIN_KEYS = ("kd_temperature", "alpha", "epochs", "batch_size", "learning_rate", "weight_decay", "max_length",
              "patience")


def params_hash(params: dict) -> str:
    """sha256 of the canonical JSON of the whole config: same hash, same hyperparameters."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()


def _cell(metrics: dict, key: str, fmt: str) -> str:
    value = metrics.get(key)
    if value is None:
        return "–"
    return fmt.format(value / 1e6 if key == "parameters" else value)


def in_order(metrics: dict[str, dict]) -> dict[str, dict]:
    """The candidates teacher first, then the students and the baseline (``ORDER``), then any other; metrics.json
    is written with sorted keys."""
    return {name: metrics[name] for name in ORDER if name in metrics} | metrics


def table(header: Sequence[str], rows: Sequence[Sequence[str]], right_from: int = 1) -> str:
    """A Markdown table; columns from ``right_from`` on are right-aligned (numbers)."""
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def evaluation_table(metrics: dict[str, dict], champion: dict | None, registered: str = "student") -> str:
    """One column per candidate (teacher first, the current champion last), one row per figure.

    Candidates as columns keep the table narrow, and the column names keep the numbers apart
    (the registry UI draws tables without borders or padding).
    """
    names = list(in_order(metrics))
    columns = [dict(metrics[n]) for n in names]
    header = ["figure", PAD] + [f"**{n}**" if n == registered else n for n in names]
    if champion is not None:
        columns.append({"accuracy": champion["accuracy"]})
        header.append(f"champion v{champion['version']}")
    # The MLflow UI draws tables without padding and left-aligns every cell: an em space after each
    # model name, and an empty column after the figure names, keep the numbers apart.
    header = header[:2] + [f"{h}{PAD}" for h in header[2:]]
    rows = [[title, ""] + [_cell(c, key, fmt) for c in columns]
            for key, title, fmt in FIGURES if any(key in c for c in columns)]
    note = (f"\n\nThe champion (v{champion['version']}) was downloaded from the registry and scored in this "
            "run on the same test set." if champion is not None else "")
    return table(header, rows) + note


def summary_line(name: str, version: str, metrics: dict, student_card: dict, teacher: dict,
                 registered: str = "student") -> str:
    """The card's first sentence: what it is and how it compares with its teacher."""
    student, teacher_m = metrics.get(registered, {}), metrics.get("teacher", {})
    steps = applied_steps(student_card, registered.endswith("_int8"))
    inherited = (student_card.get("warm_start") or {}).get("compressed")
    facts = [f"`{name}` v{version} is a {student_card.get('parameters', 0) / 1e6:.1f} M-parameter student "
             f"distilled with {student_card.get('method', 'an unknown method')} from teacher "
             f"`{teacher.get('name')}` v{teacher.get('version')}"
             + (", continuing from a compressed model (its pruned shape)" if inherited else "")
             + (f", then compressed ({', '.join(steps)})." if steps else ".")]
    if student and teacher_m:
        share = student["accuracy"] / max(teacher_m["accuracy"], 1e-9)
        facts.append(f"On the gold test set it scores {student['accuracy']:.3f} accuracy, {share:.1%} of the "
                     f"teacher's {teacher_m['accuracy']:.3f}")
        if student.get("latency_p50_ms") and teacher_m.get("latency_p50_ms"):
            speedup = teacher_m["latency_p50_ms"] / student["latency_p50_ms"]
            facts[-1] += f", at {speedup:.1f}× the teacher's speed ({student['latency_p50_ms']:.1f} ms p50)"
        facts[-1] += "."
    return " ".join(facts)


def applied_steps(student_card: dict, int8: bool) -> list[str]:
    """The compression steps that made the registered model: the card's steps after the student itself, and its
    INT8 step when the version serves the INT8 model."""
    compression = student_card.get("compression") or {}
    steps = [s["step"] for s in compression.get("steps", [])[1:]]
    return steps + [compression["int8"]["step"]] if int8 and compression.get("int8") else steps


def compression_tag(student_card: dict, passed: bool, precision: str = "fp32") -> str:
    """The version row's one-line account of compression: which steps made the registered model, or why none."""
    compression = student_card.get("compression") or {}
    steps, int8 = compression.get("steps", []), precision != "fp32" and compression.get("int8")
    if passed and steps:
        return (" + ".join(applied_steps(student_card, bool(int8))) + f": {steps[0]['parameters'] / 1e6:.2f} M -> "
                f"{steps[-1]['parameters'] / 1e6:.2f} M parameters" + (f", {int8['size_mb']:.1f} MB" if int8 else ""))
    return "not applied (its gate failed or it is switched off; the model card says why)"


def compression_section(student_card: dict, compression: dict | None, registered: str = "compressed") -> str:
    """What each compression step cost and gained, and the gate that chose the registered model."""
    steps = (student_card.get("compression") or {}).get("steps", [])
    lines = []
    if steps:
        rows = [[f"{s['step']}", s["detail"], f"{s['parameters'] / 1e6:.2f}", f"{s['size_mb']:.1f}",
                 f"{s['val_accuracy']:.3f}"] for s in steps]
        lines.append("Each step, in order, with the model after it (validation accuracy on the gold validation "
                     "set):\n\n" + table(["step", "what", "parameters (M)", "fp32 size (MB)", "val accuracy"], rows,
                                         right_from=2))
        skipped = (student_card.get("compression") or {}).get("skipped") or []
        if skipped:
            lines.append("Skipped: " + "; ".join(skipped) + ".")
        int8 = (student_card.get("compression") or {}).get("int8")
        if int8:
            role = ("this version serves it" if registered.endswith("_int8") else "reported, not registered")
            lines.append(f"Its INT8 model (`compressed_int8` in the evaluation; {role}): "
                         f"{int8['step']}, {int8['detail']}; {int8['size_mb']:.1f} MB, validation accuracy "
                         f"{int8['val_accuracy']:.3f}.")
    if compression:
        lines.append(f"Compression gate: **{'passed' if compression.get('passed') else 'failed'}**.\n\n"
                     + "\n".join(f"- {r}" for r in compression.get("reasons", [])))
    return "\n\n".join(lines) or "No compression was applied."


def intended_use(labels: list[str], params: dict, max_length: int) -> str:
    data = params.get("data", {})
    source = data.get("path") or f"the Home Assistant intent sentences ({data.get('language', 'en')})"
    shown = ", ".join(f"`{label}`" for label in labels[:12]) + (f" and {len(labels) - 12} more" if len(labels) > 12
                                                                else "")
    return (f"Routes a short text to one of {len(labels)} labels learnt from {source}: {shown}.\n\n"
            "- **Input:** a DataFrame with a `text` column. **Output:** `label`, `score` (its probability) "
            "and `p_<label>` for every label.\n"
            "- **Not for:** texts unlike the training data. There is no out-of-scope label: a low `score` is "
            "the only warning.\n"
            f"- Texts longer than {max_length} tokens are truncated.")


def failure_modes(audit: dict, confused: list[dict]) -> str:
    """Worst slices against the teacher and the most confused label pairs."""
    lines = []
    worst = [s for s in audit.get("worst", []) if s.get("drop", 0) > 0]
    if worst:
        lines.append("Slices where the student trails its teacher most (accuracy on the gold test set):\n")
        lines += [f"- `{s['slice']}` (n={s['n']}): student {s['student_accuracy']:.3f}, teacher "
                  f"{s['teacher_accuracy']:.3f}" for s in worst]
    if confused:
        lines.append("\nMost frequent mistakes (gold → predicted):\n")
        lines += [f"- `{c['true']}` → `{c['predicted']}`: {c['count']}" for c in confused]
    if not lines:
        lines.append("No slice is worse than the teacher and no mistakes were made on the gold test set; "
                     "that set is small, so watch production traffic (`distill monitor`).")
    return "\n".join(lines)


def describe_losses(losses) -> str:
    """A card's ``losses`` entry as one line: a name, a list of names or of ``{name, weight, ...}``,
    or a mapping of name to weight."""
    if isinstance(losses, dict):
        return ", ".join(f"`{key}` (weight {value})" for key, value in losses.items())
    if isinstance(losses, (list, tuple)):
        return ", ".join(f"`{item.get('name', item.get('kind', '?'))}` (weight {item.get('weight', 1)})"
                         if isinstance(item, dict) else f"`{item}`" for item in losses)
    return f"`{losses}`"


def reproduce(commit: str, name: str, version: str) -> str:
    known = commit and commit != "unknown"
    note = "" if known else ("The run was not made from a git commit, so the code version is not recorded; "
                             "commit before `distill run` to make it reproducible.\n\n")
    return (note + "```bash\n"
            f"git checkout {commit if known else '<commit>'}\n"
            "dvc pull        # the prepared data and teacher outputs at the hashes above\n"
            "dvc repro       # every stage; or `distill run` for the whole flow with registration\n"
            "```\n\n"
            f"Load it: `mlflow.pyfunc.load_model(\"models:/{name}/{version}\")`, or serve it with "
            f"`mlflow models serve -m models:/{name}/{version} --env-manager local`.")


def render(*, name: str, version: str, student_card: dict, teacher: dict, lineage: dict, params: dict,
           metrics: dict, audit: dict, decision: dict, champion: dict | None = None,
           confused: list[dict] | None = None, registered: str = "student", compression: dict | None = None) -> str:
    """The model card as Markdown.

    Args:
        name, version: the registered model and version.
        student_card: the student folder's ``distill.json`` (method, labels, parameters, losses...).
        teacher: ``name``, ``version``, ``fingerprint``, ``source`` of the teacher.
        lineage: ``git_commit``, ``params_sha256``, ``prepared_md5``, ``teacher_outputs_md5``.
        params: the whole config (``PipelineConfig.model_dump()``).
        metrics: the evaluation harness's figures by candidate.
        audit: the audit report (``passed``, ``reasons``, ``worst``).
        decision: the promotion gates (``passed``, ``reasons``).
        champion: the champion scored in the same run, if there was one.
        confused: the most confused label pairs of the student (``evaluate.confused_pairs`` rows).
        registered: the evaluation candidate registered as this version (``student``, ``compressed`` or
            ``compressed_int8``).
        compression: the compression gate (``passed``, ``reasons``), when the run had one.
    """
    # the shape the model has (a size search or a compression changed it), else the configured one
    train, student_shape = params.get("train", {}), student_card.get("student") or params.get("student", {})
    inline = lambda pairs: " · ".join(f"{key} `{value}`" for key, value in pairs if value is not None)
    hyper = (f"- **training:** {inline((k, train.get(k)) for k in TRAIN_KEYS)} · seed `{params.get('seed')}`\n"
             f"- **student:** {inline(student_shape.items())}")
    losses = student_card.get("losses")
    method = student_card.get("method", "unknown")
    verdict = "passed" if decision.get("passed") else "failed"
    sections = [
        summary_line(name, version, metrics, student_card, teacher, registered),
        f"**Promotion gates: {verdict}.** **Audit against the teacher: "
        f"{'passed' if audit.get('passed') else 'failed'}.**",
        "## Intended use\n\n" + intended_use(list(student_card.get("labels", [])), params,
                                                 model_length(student_card)),
        "## Teacher\n\n" + "\n".join([
            f"- **registered model:** `{teacher.get('name')}` v{teacher.get('version')}",
            f"- **fingerprint:** `{str(teacher.get('fingerprint', ''))[:16]}`",
            f"- **source:** {teacher.get('source') or 'unknown'}"]),
        "## Data snapshot\n\n" + "\n".join([
            f"- **prepared data** (DVC md5): `{lineage.get('prepared_md5') or 'not recorded'}`",
            f"- **teacher outputs** (DVC md5): `{lineage.get('teacher_outputs_md5') or 'not recorded'}`",
            f"- **git commit:** `{lineage.get('git_commit', 'unknown')}`",
            f"- **params sha256:** `{str(lineage.get('params_sha256', ''))[:16]}`"]),
        "## Distillation and hyperparameters\n\n"
        + f"Method: **{method}**" + (f"; losses: {describe_losses(losses)}" if losses else "") + ".\n\n" + hyper,
        *(["## Compression\n\n" + compression_section(student_card, compression, registered)] if compression
          else []),
        "## Evaluation against the teacher\n\nGold test set; every candidate scored by the same harness"
        + (f" (this version is `{registered}`)" if registered != "student" else "") + ".\n\n"
        + evaluation_table(metrics, champion, registered),
        "## Promotion decision\n\n" + "\n".join(f"- {r}" for r in decision.get("reasons", [])),
        "## Audit: slices against the teacher\n\n" + "\n".join(f"- {r}" for r in audit.get("reasons", [])),
        "## Known failure modes\n\n" + failure_modes(audit, confused or []),
        "## How to reproduce\n\n" + reproduce(lineage.get("git_commit", "<commit>"), name, version),
    ]
    return "\n\n".join(sections) + "\n"
