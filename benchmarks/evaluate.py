"""Compare a teacher and its students on any labelled data set, with the evaluate stage's harness.

    python benchmarks/evaluate.py --teacher models/teacher --student models/student --baseline models/baseline
    python benchmarks/evaluate.py --data my.csv --text-column review --label-column stars \\
        --teacher path/to/teacher --student path/to/student_a --student path/to/student_b --out reports/bench

--data is a prepared folder (its gold_test split is used; the default is data/prepared) or a
CSV / JSONL / Parquet file (its test split when it has a ``split`` column). Every model must share
the teacher's label set. Prints the comparison table; --out also writes the full report.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def read_test_set(path: Path, text_column: str, label_column: str, limit: int | None, seed: int) -> pd.DataFrame:
    """The labelled test examples as columns ``text`` and ``label``."""
    from distill import data

    if path.is_dir():
        frame = data.read_split(path, "gold_test")
    else:
        reader = data.READERS.get(path.suffix.lower())
        if reader is None:
            raise SystemExit(f"{path}: unsupported file type; use one of {sorted(data.READERS)}")
        frame = reader(path)
        missing = [c for c in (text_column, label_column) if c not in frame.columns]
        if missing:
            raise SystemExit(f"{path}: columns {missing} not found; the file has {list(frame.columns)}")
        if "split" in frame.columns and frame["split"].astype(str).str.lower().eq("test").any():
            frame = frame[frame["split"].astype(str).str.lower() == "test"]
        frame = frame.rename(columns={text_column: "text", label_column: "label"}).dropna(subset=["text", "label"])
    if limit and len(frame) > limit:
        frame = frame.sample(limit, random_state=seed)
    return frame.reset_index(drop=True).assign(label=lambda f: f["label"].astype(str))


def load(args: argparse.Namespace, cfg, texts: list[str]):
    """The candidates: teacher (+ INT8), each student (+ INT8), the baseline, served as the evaluate stage
    serves them (``evaluate.runtime``, ``evaluate.threads``; INT8 by ONNX Runtime)."""
    from distill.evaluate import Candidate, folder_size, with_runtime_candidate
    from distill.models import load_classifier
    from distill.runtime import quantized_classifier

    ev, length = cfg.evaluate, cfg.train.max_length

    def one(name: str, folder: Path) -> Candidate:
        clf = load_classifier(folder)
        return with_runtime_candidate(Candidate(name, clf, folder_size(folder), clf.num_parameters, folder=folder),
                                      ev.runtime, texts, length, ev.threads)

    def pair(name: str, folder: Path) -> list[Candidate]:
        out = [one(name, folder)]
        if args.int8:
            clf = load_classifier(folder)
            served, size = quantized_classifier(clf, folder, ev.threads, texts, length)
            out.append(Candidate(f"{name}_int8", served, size, clf.num_parameters, quantized=True, folder=folder))
        return out

    candidates = pair("teacher", args.teacher)
    for i, folder in enumerate(args.student or []):
        candidates += pair("student" if i == 0 else f"student_{folder.name}", folder)
    if args.baseline:
        candidates.append(one("baseline", args.baseline))
    return candidates


def print_table(metrics: dict[str, dict[str, float]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    columns = [("accuracy", "accuracy", ".3f"), ("macro-F1", "macro_f1", ".3f"), ("ECE", "ece", ".3f"),
               ("agree", "agreement_with_teacher", ".3f"), ("p50 ms", "latency_p50_ms", ".2f"),
               ("p95 ms", "latency_p95_ms", ".2f"), ("speed-up", "speedup_vs_teacher", ".1f"),
               ("seq/s", "throughput_per_s", ".0f"), ("peak MB", "peak_memory_mb", ".1f"),
               ("params M", "parameters", ".2f"), ("size MB", "size_mb", ".1f")]
    table = Table(title=title)
    table.add_column("model")
    for header, _, _ in columns:
        table.add_column(header, justify="right")
    for name, m in metrics.items():
        cells = [format(m[key] / 1e6 if key == "parameters" else m[key], fmt) for _, key, fmt in columns]
        table.add_row(name, *cells)
    console = Console()
    Console(width=max(console.width, 160)).print(table)  # a pipe reports 80 columns: never truncate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/prepared"), help="prepared folder or data file")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--teacher", type=Path, required=True, help="teacher model folder")
    parser.add_argument("--student", type=Path, action="append", help="student model folder (repeatable)")
    parser.add_argument("--baseline", type=Path, help="undistilled baseline student folder")
    parser.add_argument("--no-int8", dest="int8", action="store_false", help="skip the INT8 variants")
    parser.add_argument("--limit", type=int, help="evaluate on at most this many examples (sampled)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="evaluate / audit settings")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="e.g. evaluate.threads=2")
    parser.add_argument("--out", type=Path, help="also write metrics, plots and report.html here")
    args = parser.parse_args()

    from distill.config import load_config
    from distill.evaluate import score_candidates, write_outputs
    from distill.io import atomic_dir
    from distill.models import read_card

    cfg = load_config(args.params, args.overrides)
    test = read_test_set(args.data, args.text_column, args.label_column, args.limit, cfg.seed)
    result = score_candidates(cfg, test, load(args, cfg, test["text"].astype(str).tolist()))
    print_table(result["metrics"], f"{args.data} ({len(test)} examples), teacher {args.teacher}")
    if args.out:
        try:
            card = read_card(args.teacher)
        except ValueError:  # a teacher not written by distill has no card
            card = {"fingerprint": "unknown", "source": str(args.teacher)}
        with atomic_dir(args.out) as tmp:
            write_outputs(tmp, result, card)
        print(f"report: {args.out / 'report.html'}")


if __name__ == "__main__":
    main()
