"""Benchmark the distillation methods on one harness.

For each method (a list of loss terms, or none for the undistilled baseline) and
each seed, train the configured student on a project's prepared data and cached
teacher outputs, then score it on the gold test set. Prints a table of
accuracy and macro-F1 (mean ± std over seeds), training seconds per epoch and
the batch-1 CPU latency against the teacher's; writes every figure as JSON.

Run it inside a project after `dvc repro label` (or `distill run`):

    python benchmarks/methods.py --seeds 3
    python benchmarks/methods.py --methods kl kl+hidden_cosine --seeds 1 --out /tmp/m.json

Model choice uses the gold validation set only (early stopping); the test set is
scored once per trained model. Results are written after every run, so an
interrupted benchmark keeps what it measured (``--resume`` skips those).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill import students  # noqa: E402
from distill.config import config_from_dict, load_config  # noqa: E402
from distill.data import read_split  # noqa: E402
from distill.io import atomic_file  # noqa: E402
from distill.lengths import with_teacher_lengths  # noqa: E402
from distill.students import read_shape  # noqa: E402
from distill.models import encode, load_classifier, predict_logits, read_card, save_classifier  # noqa: E402
from distill.student_init import build_student  # noqa: E402
from distill.teacher import label_ids  # noqa: E402
from distill.trainer import steps_for  # noqa: E402

METHODS: dict[str, list[dict] | None] = {
    "baseline": None,
    "kl": [{"name": "kl"}],
    "logit_mse": [{"name": "logit_mse"}],
    "reverse_kl": [{"name": "reverse_kl"}],
    "gjsd": [{"name": "gjsd", "beta": 0.5}],
    "skew_kl": [{"name": "skew_kl", "skew": 0.1}],
    "tvd": [{"name": "tvd"}],
    "kl+hidden_cosine": [{"name": "kl"}, {"name": "hidden_cosine", "weight": 1.0}],
    "kl+attention": [{"name": "kl"}, {"name": "attention", "weight": 1.0}],
    "kl+pkd": [{"name": "kl"}, {"name": "pkd", "weight": 1.0}],
    "kl+rkd": [{"name": "kl"}, {"name": "rkd_distance", "weight": 1.0}, {"name": "rkd_angle", "weight": 2.0}],
    "kl+similarity": [{"name": "kl"}, {"name": "similarity", "weight": 100.0}],
    "assistant:kl": [{"name": "kl"}],
}


def scores(folder: Path, prepared: Path, max_length: int) -> dict:
    """Accuracy and macro-F1 on the gold test set."""
    from sklearn.metrics import accuracy_score, f1_score

    clf = load_classifier(folder)
    test = read_split(prepared, "gold_test")
    gold = label_ids(clf.labels, test["label"])
    pred = predict_logits(clf, test["text"].tolist(), batch_size=128, max_length=max_length).argmax(axis=1)
    return {"accuracy": float(accuracy_score(gold, pred)),
            "macro_f1": float(f1_score(gold, pred, average="macro", labels=range(len(clf.labels)),
                                       zero_division=0))}


def latency_ms(folder: Path, texts: list[str], max_length: int, runtime: str = "eager") -> float:
    """Median batch-1 latency (tokenisation included) on one CPU thread, torch.utils.benchmark, with the model
    served eager or by ONNX Runtime on its checked export, as the evaluation and the serving pyfunc serve it."""
    from torch.utils import benchmark

    from distill.runtime import with_runtime

    clf = with_runtime(load_classifier(folder), runtime, texts, max_length, folder, threads=1)
    model, tokenizer = clf.model.eval(), clf.tokenizer
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        state = {"i": 0}

        def once():
            text = texts[state["i"] % len(texts)]
            state["i"] += 1
            with torch.inference_mode():
                model(**encode(tokenizer, [text], max_length))

        for _ in range(20):
            once()
        timer = benchmark.Timer(stmt="once()", globals={"once": once}, num_threads=1)
        return timer.blocked_autorange(min_run_time=2.0).median * 1000
    finally:
        torch.set_num_threads(before)


def measure_latency(teacher_dir: Path, cfg, texts: list[str], rounds: int = 3) -> dict:
    """Teacher vs a fresh student of the configured shape (latency depends on the shape, not the weights),
    eager and ONNX Runtime, in alternating rounds so load from other processes hits both alike."""
    with tempfile.TemporaryDirectory() as scratch:
        teacher_clf = load_classifier(teacher_dir)
        # a smaller vocabulary (student.vocab_size) is trained on the timed texts: its size, not its tokens, counts
        save_classifier(build_student(teacher_clf, cfg.student, cfg.seed, texts=texts), Path(scratch),
                        {"role": "latency"})
        out = {}
        for runtime in ("eager", "onnxruntime"):
            pairs = [(latency_ms(teacher_dir, texts, cfg.teacher.max_length, runtime),
                      latency_ms(Path(scratch), texts, cfg.train.max_length, runtime)) for _ in range(rounds)]
            teacher_ms, student_ms = statistics.median(t for t, _ in pairs), statistics.median(s for _, s in pairs)
            out[runtime] = {"teacher_ms": float(teacher_ms), "student_ms": float(student_ms),
                            "speedup": float(teacher_ms / student_ms),
                            "speedup_per_round": [t / s for t, s in pairs]}
    return out


def train_one(project: Path, method: str, seed: int, epochs: int | None, overrides: list[str]) -> dict:
    """Train one (method, seed) into a scratch folder and score it."""
    params = load_config(project / "params.yaml", overrides).model_dump()
    params["seed"] = seed
    if epochs:
        params["train"]["epochs"] = epochs
    terms = METHODS[method]
    if terms is not None:
        params["train"]["losses"] = terms
    params["assistant"]["enabled"] = method.startswith("assistant:")
    params["student"]["warm_start"] = None  # every method is compared from fresh weights
    prepared, teacher_dir = project / "data/prepared", project / "models/teacher"
    cfg = read_shape(project / "models/student_shape.json", with_teacher_lengths(config_from_dict(params), teacher_dir))
    outputs = project / "data/teacher_outputs/logits.parquet"
    with tempfile.TemporaryDirectory(prefix="distill-bench-") as scratch:
        scratch = Path(scratch)
        start = time.perf_counter()
        assistant_dir = None
        if cfg.assistant.enabled:
            assistant_dir = scratch / "assistant"
            students.run_assistant(cfg, prepared, teacher_dir, outputs, assistant_dir)
        if terms is None:
            result = students.run_baseline(cfg, prepared, teacher_dir, scratch / "model")
        else:
            result = students.run_student(cfg, prepared, teacher_dir, outputs, scratch / "model",
                                          assistant_dir=assistant_dir)
        seconds = time.perf_counter() - start
        n = len(read_split(prepared, "gold_train")) + len(read_split(prepared, "transfer"))
        steps_per_epoch = steps_for(n, cfg.train.batch_size, 1)
        figures = scores(scratch / "model", prepared, cfg.train.max_length)
    return {"method": method, "seed": seed, **figures, "val_accuracy": result.best_val_accuracy,
            "steps": result.steps, "epochs_run": result.steps / steps_per_epoch,
            "train_seconds": seconds, "seconds_per_epoch": result.seconds / (result.steps / steps_per_epoch),
            "parameters": result.parameters,
            "kd_temperature": cfg.train.kd_temperature, "alpha": cfg.train.alpha}


def summarise(runs: list[dict], teacher: dict) -> list[dict]:
    rows = []
    for method in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == method]
        acc = [r["accuracy"] for r in mine]
        f1 = [r["macro_f1"] for r in mine]
        rows.append({"method": method, "seeds": len(mine), "accuracy_mean": statistics.fmean(acc),
                     "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                     "macro_f1_mean": statistics.fmean(f1), "macro_f1_std": statistics.stdev(f1) if len(f1) > 1 else 0.0,
                     "share_of_teacher": statistics.fmean(acc) / teacher["accuracy"],
                     "seconds_per_epoch": statistics.fmean(r["seconds_per_epoch"] for r in mine),
                     "epochs_run": statistics.fmean(r["epochs_run"] for r in mine)})
    return rows


def print_table(rows: list[dict], teacher: dict, latency: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    base = next((r for r in rows if r["method"] == "baseline"), None)
    table = Table(title=f"distillation methods on the gold test set (teacher accuracy {teacher['accuracy']:.3f}, "
                        f"macro-F1 {teacher['macro_f1']:.3f})")
    for column in ("method", "seeds", "accuracy", "macro-F1", "vs baseline", "share of teacher", "s / epoch",
                   "epochs"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for r in rows:
        delta = "" if base is None or r is base else f"{(r['accuracy_mean'] - base['accuracy_mean']) * 100:+.1f} pt"
        table.add_row(r["method"], str(r["seeds"]), f"{r['accuracy_mean']:.3f} ± {r['accuracy_std']:.3f}",
                      f"{r['macro_f1_mean']:.3f} ± {r['macro_f1_std']:.3f}", delta, f"{r['share_of_teacher']:.1%}",
                      f"{r['seconds_per_epoch']:.1f}", f"{r['epochs_run']:.1f}")
    console = Console()
    console.print(table)
    print_latency(latency, console)


def print_latency(latency: dict, console=None) -> None:
    from rich.console import Console

    console = console or Console()
    for runtime, figures in latency.items():
        if isinstance(figures, dict):
            console.print(f"batch-1 CPU latency (1 thread, median, {runtime}): teacher {figures['teacher_ms']:.2f} ms, "
                          f"student {figures['student_ms']:.2f} ms -> {figures['speedup']:.1f}x faster "
                          f"(rounds: {', '.join(f'{x:.1f}x' for x in figures['speedup_per_round'])})")


def sweep(project: Path, args, out: Path) -> int:
    """Train kl at every grid point of params.yaml's sweep section (one seed); write and print the grid."""
    from distill.sweep import grid

    cfg = load_config(project / "params.yaml", args.overrides)
    points = []
    for point in grid(cfg):
        run = train_one(project, "kl", args.first_seed, args.epochs, args.overrides + point.overrides())
        points.append(run)
        print(f"T={point.kd_temperature:g} alpha={point.alpha:g}: val {run['val_accuracy']:.3f} "
              f"test {run['accuracy']:.3f} ({run['train_seconds']:.0f} s)", flush=True)
        with atomic_file(out) as handle:
            json.dump({"sweep": points}, handle, indent=2)
    return print_sweep(points, out)


def print_sweep(points: list[dict], out: Path) -> int:
    from rich.console import Console
    from rich.table import Table

    from distill.sweep import PointResult, choose

    chosen = choose([PointResult(p["kd_temperature"], p["alpha"], p["val_accuracy"], p["steps"], p["train_seconds"])
                     for p in points])
    table = Table(title="T x alpha sweep (kl), chosen on gold_val")
    for column in ("T", "alpha", "val accuracy", "test accuracy", "seconds"):
        table.add_column(column, justify="right")
    for p in points:
        mark = " *" if (p["kd_temperature"], p["alpha"]) == (chosen.kd_temperature, chosen.alpha) else ""
        table.add_row(f"{p['kd_temperature']:g}", f"{p['alpha']:g}", f"{p['val_accuracy']:.3f}{mark}",
                      f"{p['accuracy']:.3f}", f"{p['train_seconds']:.0f}")
    Console().print(table)
    with atomic_file(out) as handle:
        json.dump({"sweep": points, "chosen": {"kd_temperature": chosen.kd_temperature, "alpha": chosen.alpha}},
                  handle, indent=2)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=Path("."), help="project with prepared data, teacher, outputs")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=13)
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs (default: params.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra params override")
    parser.add_argument("--out", type=Path, default=Path("reports/benchmarks/methods.json"))
    parser.add_argument("--resume", action="store_true", help="keep and skip runs already in --out")
    parser.add_argument("--sweep", action="store_true",
                        help="instead of the methods: sweep params.yaml's T x alpha grid with kl on the first seed, "
                             "choose on gold_val (the test accuracy is shown, never used)")
    parser.add_argument("--latency-only", action="store_true",
                        help="only time the teacher against a student of the configured shape, eager and ONNX Runtime")
    parser.add_argument("--merge", nargs="+", type=Path, default=None,
                        help="combine the runs of earlier --out files (e.g. two parallel halves) into --out")
    args = parser.parse_args(argv)
    project = args.project.resolve()
    out = args.out if args.out.is_absolute() else project / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.sweep:
        return sweep(project, args, out)
    if args.merge:
        parts = [json.loads(path.read_text()) for path in args.merge]
        if "sweep" in parts[0]:
            return print_sweep([point for part in parts for point in part["sweep"]], out)
        record = {**parts[0], "runs": [run for part in parts for run in part["runs"]]}
        record["latency"] = next((p["latency"] for p in parts if p.get("latency")), {})
        record["summary"] = summarise(record["runs"], record["teacher"])
        with atomic_file(out) as handle:
            json.dump(record, handle, indent=2)
        print_table(record["summary"], record["teacher"], record["latency"])
        return 0
    teacher_dir, prepared = project / "models/teacher", project / "data/prepared"
    if not (project / "data/teacher_outputs/logits.parquet").is_file():
        print(f"{project}: no teacher outputs; run `dvc repro label` (or `distill run`) there first", file=sys.stderr)
        return 2
    cfg = read_shape(project / "models/student_shape.json",
                     with_teacher_lengths(load_config(project / "params.yaml", args.overrides), teacher_dir))
    if args.latency_only:
        latency = measure_latency(teacher_dir, cfg, read_split(prepared, "gold_test")["text"].tolist())
        print_latency(latency)
        with atomic_file(out) as handle:
            json.dump({"latency": latency, "overrides": args.overrides}, handle, indent=2)
        return 0
    teacher = scores(teacher_dir, prepared, cfg.teacher.max_length)
    previous = json.loads(out.read_text()) if args.resume and out.is_file() else {}
    runs = previous.get("runs", [])
    done = {(r["method"], r["seed"]) for r in runs}
    record = {"teacher": teacher, "teacher_fingerprint": read_card(teacher_dir)["fingerprint"],
              "machine": {"torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()},
              "overrides": args.overrides, "epochs": args.epochs, "runs": runs}
    for method in args.methods:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            if (method, seed) in done:
                continue
            run = train_one(project, method, seed, args.epochs, args.overrides)
            runs.append(run)
            print(f"{method:18s} seed {seed}: accuracy {run['accuracy']:.3f} macro-F1 {run['macro_f1']:.3f} "
                  f"({run['train_seconds']:.0f} s, {run['epochs_run']:.1f} epochs)", flush=True)
            record["summary"] = summarise(runs, teacher)
            with atomic_file(out) as handle:
                json.dump(record, handle, indent=2)
    record["latency"] = measure_latency(teacher_dir, cfg, read_split(prepared, "gold_test")["text"].tolist())
    record["summary"] = summarise(runs, teacher)
    with atomic_file(out) as handle:
        json.dump(record, handle, indent=2)
    print_table(record["summary"], teacher, record["latency"])
    print(f"figures: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
