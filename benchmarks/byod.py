"""Bring-your-own-data benchmark: the whole pipeline on real labelled data sets, every setting at its default.

For each data set (built by ``benchmarks/byod_data.py`` into ``data/byod/``) this copies the
project into a fresh folder, puts the file under ``data/raw/``, and runs what the README tells a
user to run::

    distill run --set data.path=data/raw/<name>.csv

timing it end to end (prepare, teacher, gate, labelling, student, baseline, evaluation, audit,
registry, the monitoring pass). It then reads the evaluation's figures (teacher, INT8 teacher,
student, INT8 student, baseline; accuracy with 95 % bootstrap intervals; batch-1 latency) and,
with ``--seeds N``, trains the distilled student and the undistilled baseline N times on the same
teacher outputs (``benchmarks/methods.py``) for the mean KD lift. Figures are printed as a table
and written as JSON (``--out``); ``docs/byod.md`` records a run.

    python benchmarks/byod_data.py                           # the data sets, once
    python benchmarks/byod.py --seeds 3                      # every data set (hours on 2 CPU cores)
    python benchmarks/byod.py --sets sentiment --seeds 1 --work /tmp/byod
    python benchmarks/byod.py --reuse --seeds 3              # KD lift only, on the projects of an earlier run

Run nothing else heavy beside it: the timings are the point.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.tiny_project import copy_project_files  # noqa: E402  (the copy the flow tests use)
SETS = ("sentiment", "news", "intents_many")
TARGETS = {"teacher_share": 0.97, "speedup_fp32": 8.0, "speedup_int8": 3.0, "kd_lift_points": 1.0}
CANDIDATES = ("teacher", "teacher_int8", "student", "student_int8", "compressed", "compressed_int8", "baseline")
# issue: a compressed student >= 2x faster than the fp32 student, <= 50 % of its size, <= 0.5 point below it
COMPRESSION = {"speedup": 2.0, "size_share": 0.5, "max_drop_points": 0.5}


def copy_project(dest: Path) -> None:
    """The project's tracked and new files (as a fresh clone has them), without the tests, in a new git repo."""
    copy_project_files(dest, skip=("tests/", "data/byod/"))
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)


def environment() -> dict[str, str]:
    return {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "GX_ANALYTICS_ENABLED": "false", "TOKENIZERS_PARALLELISM": "false"}


def run_pipeline(project: Path, data_file: Path, log: Path) -> float:
    """``distill run`` on the file with default settings; its wall time in seconds."""
    (project / "data/raw").mkdir(parents=True, exist_ok=True)
    shutil.copy2(data_file, project / "data/raw" / data_file.name)
    distill = Path(sys.executable).with_name("distill")
    start = time.perf_counter()
    with log.open("w") as handle:
        done = subprocess.run([str(distill), "run", "--set", f"data.path=data/raw/{data_file.name}"], cwd=project,
                              stdout=handle, stderr=subprocess.STDOUT, env=environment())
    seconds = time.perf_counter() - start
    stopped_at_gate = (project / "reports/teacher/gate.json").is_file() and not json.loads(
        (project / "reports/teacher/gate.json").read_text())["passed"]
    if done.returncode != 0 and not stopped_at_gate:
        raise RuntimeError(f"distill run failed on {data_file.name} (exit {done.returncode}); see {log}")
    return seconds


def gate_stop(project: Path) -> dict | None:
    """The teacher gate's report when the run stopped there (a result, not a crash), else None."""
    gate = json.loads((project / "reports/teacher/gate.json").read_text())
    return None if gate["passed"] else {"teacher_gate": False, "gate_reasons": gate["reasons"],
                                         "verdicts": ["MISSED: the run stopped at the teacher gate: "
                                                      + "; ".join(gate["reasons"])]}


def figures(project: Path) -> dict:
    """The evaluation's figures, the prepare report and the teacher's card, from the project's outputs."""
    metrics = json.loads((project / "reports/evaluate/metrics.json").read_text())
    report = json.loads((project / "data/prepared/report.json").read_text())
    card = json.loads((project / "models/teacher/distill.json").read_text())
    gate = json.loads((project / "reports/teacher/gate.json").read_text())
    models = {name: {key: metrics[name][key] for key in ("accuracy", "accuracy_ci_low", "accuracy_ci_high",
                                                          "macro_f1", "latency_p50_ms", "parameters", "size_mb")}
              for name in CANDIDATES if name in metrics}
    teacher, student = models["teacher"], models["student"]
    shape = json.loads((project / "models/student_shape.json").read_text())
    compressed = json.loads((project / "models/student_compressed/distill.json").read_text())
    return {"models": models, "compression_steps": (compressed.get("compression") or {}).get("steps"),
            "prepare": report, "length": card.get("length"), "teacher_steps": card.get("steps"),
            "shape": shape["shape"], "shape_reason": shape["reason"],
            "teacher_gate": gate["passed"], "registered": registered(project),
            "teacher_share": student["accuracy"] / teacher["accuracy"],
            "speedup_fp32": teacher["latency_p50_ms"] / student["latency_p50_ms"],
            "speedup_int8": models["teacher_int8"]["latency_p50_ms"] / student["latency_p50_ms"]
            if "teacher_int8" in models else None}


def registered(project: Path) -> list[dict]:
    """Every student version the run registered, oldest first: the rows `distill registry` shows (aliases,
    precision, reason, compression, accuracy, gates)."""
    from mlflow import MlflowClient

    from tasks.registry import version_rows

    rows = version_rows(MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}"), "distill-student")
    return [{**row, "created": row["created"].isoformat()} for row in reversed(rows)]


def kd_lift(project: Path, seeds: int, out: Path) -> dict:
    """Distilled student vs undistilled baseline over ``seeds`` seeds on the run's teacher outputs (the
    trainings already in ``out`` are kept: an interrupted comparison resumes)."""
    subprocess.run([sys.executable, str(ROOT / "benchmarks/methods.py"), "--project", str(project), "--methods",
                    "kl", "baseline", "--seeds", str(seeds), "--out", str(out), "--resume"], check=True,
                   env=environment(),
                   stdout=subprocess.DEVNULL)
    rows = {row["method"]: row for row in json.loads(out.read_text())["summary"]}
    return {"seeds": seeds, "kl_mean": rows["kl"]["accuracy_mean"], "kl_std": rows["kl"]["accuracy_std"],
            "baseline_mean": rows["baseline"]["accuracy_mean"], "baseline_std": rows["baseline"]["accuracy_std"],
            "lift_points": 100 * (rows["kl"]["accuracy_mean"] - rows["baseline"]["accuracy_mean"])}


def verdicts(result: dict) -> list[str]:
    """Each target, met or missed, in words."""
    out = []
    checks = [("teacher_share", "student keeps {:.1%} of the teacher's accuracy", "{:.0%}"),
              ("speedup_fp32", "{:.1f}x faster than the fp32 teacher", "{:.0f}x"),
              ("speedup_int8", "{:.1f}x faster than the INT8 teacher", "{:.0f}x")]
    for key, text, target in checks:
        value = result.get(key)
        if value is not None:
            ok = value >= TARGETS[key]
            out.append(f"{'met' if ok else 'MISSED'}: {text.format(value)} (target {target.format(TARGETS[key])})")
    student = result["models"]["student"]
    for name in ("compressed", "compressed_int8"):
        m = result["models"].get(name)
        if m is None:
            continue
        speedup, share = student["latency_p50_ms"] / m["latency_p50_ms"], m["size_mb"] / student["size_mb"]
        drop = 100 * (student["accuracy"] - m["accuracy"])
        ok = speedup >= COMPRESSION["speedup"] and share <= COMPRESSION["size_share"] and \
            drop <= COMPRESSION["max_drop_points"]
        out.append(f"{'met' if ok else 'MISSED'}: {name} {speedup:.2f}x faster than the student, {share:.0%} of its "
                   f"size, {abs(drop):.1f} points {'below' if drop > 0 else 'above'} it (target >= 2x, <= 50 %, "
                   "<= 0.5 below)")
    if result.get("kd"):
        lift = result["kd"]["lift_points"]
        out.append(f"{'met' if lift >= TARGETS['kd_lift_points'] else 'MISSED'}: KD lift {lift:+.1f} points over "
                   f"{result['kd']['seeds']} seeds (target +1.0)")
    return out


def print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for name, result in results.items():
        if "models" not in result:
            console.print(f"{name}: {result['rows']} rows, {result['minutes']:.1f} min: " + "; ".join(result["verdicts"]))
            continue
        table = Table(title=f"{name}: {result['rows']} rows, {result['minutes']:.1f} min end to end")
        for column in ("model", "accuracy", "95% CI", "macro-F1", "p50 ms", "params (M)", "size MB"):
            table.add_column(column, justify="left" if column == "model" else "right")
        for model, m in result["models"].items():
            table.add_row(model, f"{m['accuracy']:.3f}", f"{m['accuracy_ci_low']:.3f}-{m['accuracy_ci_high']:.3f}",
                          f"{m['macro_f1']:.3f}", f"{m['latency_p50_ms']:.2f}", f"{m['parameters'] / 1e6:.2f}",
                          f"{m['size_mb']:.1f}")
        console.print(table)
        for line in verdicts(result):
            console.print(f"  {line}")
        for v in result.get("registered", []):
            console.print(f"  registered v{v['version']} ({v['reason']}, {v['precision']}, aliases "
                          f"{', '.join(v['aliases']) or 'none'}): accuracy {v['accuracy']}, promotion gate "
                          f"{v['gates']}; compression: {v['compression']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data/byod", help="folder of byod_data.py's files")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the KD-lift comparison; 0 skips it")
    parser.add_argument("--work", type=Path, default=Path("/tmp/distill-byod"), help="where the projects are made")
    parser.add_argument("--out", type=Path, default=ROOT / "reports/benchmarks/byod.json")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the projects (and the recorded wall time) of an earlier run in --work; "
                             "only the KD-lift comparison runs")
    args = parser.parse_args()
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for name in args.sets:
        data_file = args.data / f"{name}.csv"
        if not data_file.is_file():
            print(f"{data_file}: missing; build the data sets first: python benchmarks/byod_data.py", file=sys.stderr)
            return 2
        project = args.work / name
        if args.reuse:
            if name not in results or not (project / "reports/teacher/gate.json").is_file():
                print(f"{project}: no earlier run to reuse; run without --reuse first", file=sys.stderr)
                return 2
            seconds = results[name]["minutes"] * 60
        else:
            shutil.rmtree(project, ignore_errors=True)
            project.mkdir(parents=True)
            copy_project(project)
            seconds = run_pipeline(project, data_file, args.work / f"{name}.log")
        result = {"rows": sum(1 for _ in data_file.open()) - 1, "minutes": seconds / 60}
        stop = gate_stop(project)
        if stop is not None:
            result |= stop
        else:
            result |= figures(project)
            if args.seeds:
                result["kd"] = kd_lift(project, args.seeds, args.work / f"{name}-methods.json")
            result["verdicts"] = verdicts(result)
        results[name] = result
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    print_table({name: results[name] for name in args.sets})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
