"""INT8 of one distilled student three ways, on the evaluation's harness: dynamic, static, and
quantization-aware distillation followed by static (``compress.int8``: dynamic | static | qat).

    python benchmarks/quantize.py --project .                       # after distill run
    python benchmarks/quantize.py --project /tmp/byod/sentiment --json /tmp/quantize.json

The student is the project's compressed student (``models/student_compressed``), or its student when the
compression stage was off. Every variant starts from the same weights:

- **fp32**: the student's ONNX export (the reference);
- **dynamic**: ONNX Runtime's dynamic quantization of that export;
- **static**: ONNX Runtime's static quantization of it, activation scales calibrated on
  ``compress.calibration_texts`` distillation texts run one at a time;
- **qat**: a copy distils again from the cached teacher outputs for ``compress.qat_epochs`` with its
  weights and layer inputs fake-quantized as static INT8 rounds them, then the same static quantization;
- **qat fp32**: the quantization-aware weights in float (what the compression gate judges).

Each is scored on gold_test (accuracy, and agreement with the fp32 student's predictions) and timed at
batch 1 with ``distill.evaluate.measure_latency`` (``evaluate.threads``, ``evaluate.latency_rounds``
rounds that rotate the order). Prints a table; ``--json`` writes the figures. Run it alone.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, default=Path("."), help="a project after `distill run`")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="params override, k=v")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from distill.compress import quantization_aware_distillation
    from distill.config import load_config
    from distill.evaluate import Candidate, measure_latency
    from distill.lengths import with_teacher_lengths
    from distill.models import Classifier, export_into, load_classifier, predict_logits, read_card
    from distill.quantize import calibration_feeds, quantize_onnx, quantize_static_onnx
    from distill.served import ONNX_FILE, OnnxClassifier
    from distill.students import distillation_set
    from distill.teacher import gold_data

    project = args.project.resolve()
    params = project / ".distill/params.yaml"  # what the stages ran with (the run's overrides applied)
    cfg = load_config(params if params.is_file() else project / "params.yaml", args.overrides)
    cfg = with_teacher_lengths(cfg, project / "models/teacher")
    max_length = cfg.train.max_length
    folder = project / "models/student_compressed"
    if not read_card(folder).get("enabled", True):
        folder = project / "models/student"
    clf = load_classifier(folder)
    data, _ = distillation_set(project / "data/teacher_outputs/logits.parquet",
                               read_card(project / "models/teacher")["fingerprint"], clf.labels)
    val = gold_data(project / "data/prepared", "gold_val", clf.labels)
    test = gold_data(project / "data/prepared", "gold_test", clf.labels)
    feeds = calibration_feeds(clf, data.texts, cfg.compress.calibration_texts, max_length, cfg.seed)
    seconds = {}
    with tempfile.TemporaryDirectory(prefix="distill-quantize-") as scratch:
        scratch = Path(scratch)
        files = {"fp32": folder / ONNX_FILE, "dynamic": scratch / "dynamic.onnx", "static": scratch / "static.onnx"}
        start = time.perf_counter()
        quantize_onnx(files["fp32"], files["dynamic"])
        seconds["dynamic"] = time.perf_counter() - start
        start = time.perf_counter()
        quantize_static_onnx(files["fp32"], files["static"], feeds)
        seconds["static"] = time.perf_counter() - start
        aware = Classifier(copy.deepcopy(clf.model), clf.tokenizer, clf.labels)
        start = time.perf_counter()
        quantization_aware_distillation(cfg, aware, data, val, max_length, feeds)
        (scratch / "qat").mkdir()
        served, why = export_into(aware, scratch / "qat", max_length, data.texts[:16])
        if served is None:
            raise SystemExit(f"the quantization-aware student did not export: {why}")
        files["qat fp32"], files["qat"] = scratch / "qat" / ONNX_FILE, scratch / "qat.onnx"
        quantize_static_onnx(files["qat fp32"], files["qat"], feeds)
        seconds["qat"] = time.perf_counter() - start

        candidates, predictions = [], {}
        for name, path in files.items():
            model = OnnxClassifier(path, cfg.evaluate.threads, eager=clf.model)
            served = Classifier(model, clf.tokenizer, clf.labels)
            predictions[name] = predict_logits(served, test.texts, 64, max_length).argmax(axis=1)
            candidates.append(Candidate(name, served, model.size_bytes, clf.num_parameters, quantized=True))
        latency = measure_latency(candidates, test.texts[:cfg.evaluate.latency_samples], max_length,
                                  cfg.evaluate.warmup, cfg.evaluate.threads, cfg.evaluate.latency_rounds)
    figures = {}
    for c in candidates:
        figures[c.name] = {"accuracy": float((predictions[c.name] == test.labels).mean()),
                           "agreement_with_fp32": float((predictions[c.name] == predictions["fp32"]).mean()),
                           "latency_p50_ms": latency[c.name]["latency_p50_ms"],
                           "size_mb": c.size_bytes / 2**20, "seconds": seconds.get(c.name)}
    reference = figures["fp32"]
    table = Table(title=f"INT8 of {folder.relative_to(project)} ({clf.num_parameters / 1e6:.2f} M parameters), "
                        f"{len(test)} gold_test texts, batch-1 latency over {cfg.evaluate.latency_rounds} rounds")
    for column in ("variant", "accuracy", "vs fp32 (pt)", "agrees with fp32", "p50 ms", "speed-up", "MB",
                   "made in s"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for name, f in figures.items():
        table.add_row(name, f"{f['accuracy']:.4f}", f"{(f['accuracy'] - reference['accuracy']) * 100:+.2f}",
                      f"{f['agreement_with_fp32']:.4f}", f"{f['latency_p50_ms']:.3f}",
                      f"{reference['latency_p50_ms'] / f['latency_p50_ms']:.2f}x", f"{f['size_mb']:.2f}",
                      f"{f['seconds']:.1f}" if f["seconds"] is not None else "")
    Console(width=140).print(table)
    if args.json:
        args.json.write_text(json.dumps({"project": str(project), "student": str(folder), "test_texts": len(test),
                                         "threads": cfg.evaluate.threads, "variants": figures}, indent=2))


if __name__ == "__main__":
    main()
