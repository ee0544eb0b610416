"""How much faster can compression make a student at all? The batch-1 latency floor on the evaluation's harness.

    python benchmarks/latency_floor.py --project .                     # after distill run
    python benchmarks/latency_floor.py --project /tmp/byod/sentiment --json /tmp/floor.json
    python benchmarks/latency_floor.py --project . --student OLD/student --compressed OLD/student_compressed
    python benchmarks/latency_floor.py --project . --fused                 # + the graph fused for ONNX Runtime

Pruning and INT8 shrink a student's encoder layers; they cannot shrink what every request pays whatever
the layers: tokenization, the embedding lookup, the classifier head and ONNX Runtime's per-request cost.
This benchmark times the student (its served ONNX export) against the same model with part of every
layer's attention heads cut away (as the compression stage's head pruning cuts them,
``compress.heads_keep``), with its encoder layers cut away one by one (``k`` of ``L`` kept, down to
none), each exported and dynamically quantized as the compression stage does, and against tokenization
alone. The cut models start from the compressed student (its pruned
feed-forward layers) when there is one. The heads kept are the most important ones (each head's context
through its columns of the output projection, as the feed-forward pruning scores neurons),
``--heads-keep`` per layer (default half).

The weights are not retrained (latency does not depend on them, and a cut model's accuracy is not
reported) unless ``--recover``: then the head-pruned model is distilled again from the cached teacher
outputs as the compression stage recovers its pruned student (:func:`distill.compress.recover`), and it,
the student and the compressed student are scored on gold_test. So the figures say how fast a model of
that shape serves, and ``0 layers`` bounds the speed-up of *any* compression that keeps the tokenizer,
the embeddings and the head (a model no one would serve: with no layer, a BERT head reads the ``[CLS]``
embedding alone and answers every text alike). ``--student`` / ``--compressed`` time other folders (for
example a first run's student after a re-distillation replaced ``models/student``), scored on
``--project``'s gold_test texts.

Where the time goes: the column ``ORT alone`` times the same models' ONNX Runtime sessions on the same
texts encoded beforehand (``session.run`` and nothing else, the same rotating rounds), so the request's
cost splits into the session's and the harness's (tokenization, tensors, the Python call). ``--fused``
adds the student and the compressed student with their graphs fused for ONNX Runtime (onnxscript's
``optimize_for_ort``: attention, skip layer norm and bias-GELU kernels in place of some 300 small
nodes; the compressed one then dynamically quantized), to say how much of a model's time is the
runtime's per-node cost, which fusion removes from every model alike.

Timed with :func:`distill.evaluate.measure_latency` (``evaluate.threads``, ``evaluate.latency_rounds``
rounds that rotate the order, ``evaluate.latency_samples`` texts). Run it alone.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cut_to(clf, keep: int):
    """A copy of ``clf`` with only its first ``keep`` encoder layers (untrained: for timing)."""
    from torch import nn

    from distill.compress import encoder_layers
    from distill.models import Classifier

    model = copy.deepcopy(clf.model)
    model.base_model.encoder.layer = nn.ModuleList(list(encoder_layers(model))[:keep])
    model.config.num_hidden_layers = keep
    return Classifier(model, clf.tokenizer, clf.labels)


def heads_cut_to(clf, keep: int, texts: list[str], max_length: int):
    """A copy of ``clf`` whose layers keep only their ``keep`` most important attention heads, as the compression
    stage's head pruning cuts them (:mod:`distill.heads`)."""
    from distill.compress import head_importance
    from distill.heads import prune_heads
    from distill.models import Classifier

    model = copy.deepcopy(clf.model)
    prune_heads(model, keep, head_importance(clf, texts, max_length))
    return Classifier(model, clf.tokenizer, clf.labels)


def fuse_graph(source: Path, target: Path) -> None:
    """``source``'s graph fused for ONNX Runtime (onnxscript's optimizer, then its ORT fusions) into ``target``."""
    import onnx_ir as ir
    import onnxscript.optimizer
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    model = ir.load(str(source))
    onnxscript.optimizer.optimize(model)
    model, _ = optimize_for_ort(model)
    ir.save(model, str(target))


def session_ms(candidates, feeds: list[dict], rounds: int) -> dict[str, float]:
    """Median over ``rounds`` rotating rounds of each ONNX Runtime session's median ``run`` time (ms) on ``feeds``
    (the texts encoded beforehand): the model's cost without the harness's."""
    import time

    import numpy as np

    sessions = {c.name: c.clf.model.session for c in candidates if hasattr(c.clf.model, "session")}
    runs = {name: [{i.name: feed[i.name] for i in s.get_inputs()} for feed in feeds] for name, s in sessions.items()}
    names, per_round = list(sessions), {name: [] for name in sessions}
    for name in names:  # warm-up
        for feed in runs[name][:20]:
            sessions[name].run(None, feed)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times = []
            for feed in runs[name]:
                start = time.perf_counter()
                sessions[name].run(None, feed)
                times.append((time.perf_counter() - start) * 1000)
            per_round[name].append(np.median(times))
    return {name: float(np.median(values)) for name, values in per_round.items()}


class TokenizeOnly:
    """A 'model' that does nothing: the harness then times tokenization and tensor conversion alone."""

    def __call__(self, **batch):
        return None

    def to(self, *_):
        return self

    def eval(self):
        return self

    def parameters(self):
        return iter(())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, default=Path("."), help="a project after `distill run`")
    parser.add_argument("--student", type=Path, help="the fp32 student folder (default: the project's)")
    parser.add_argument("--compressed", type=Path, help="the compressed student folder (default: the project's)")
    parser.add_argument("--heads-keep", type=int, help="attention heads each layer keeps (default: half)")
    parser.add_argument("--recover", action="store_true",
                        help="recover the head-pruned model by distillation (compress.recover) and score it")
    parser.add_argument("--fused", action="store_true",
                        help="also time the student and the compressed student, graphs fused for ONNX Runtime")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from distill.compress import encoder_layers, recover
    from distill.heads import cut_heads_of
    from distill.config import load_config
    from distill.evaluate import Candidate, measure_latency
    from distill.lengths import with_teacher_lengths
    from distill.models import Classifier, encode, export_into, load_classifier, predict_logits, read_card
    from distill.quantize import quantize_onnx
    from distill.served import INT8_FILE, ONNX_FILE, OnnxClassifier
    from distill.students import distillation_set
    from distill.teacher import gold_data

    project = args.project.resolve()
    params = project / ".distill/params.yaml"  # what the stages ran with (the run's overrides applied)
    cfg = load_config(params if params.is_file() else project / "params.yaml")
    cfg = with_teacher_lengths(cfg, project / "models/teacher")
    max_length, threads = cfg.train.max_length, cfg.evaluate.threads
    student_dir = args.student or project / "models/student"
    compressed_dir = args.compressed or project / "models/student_compressed"
    if not (compressed_dir / INT8_FILE).is_file() or not read_card(compressed_dir).get("enabled", True):
        compressed_dir = None
    for folder in filter(None, (student_dir, compressed_dir)):
        if not (folder / ONNX_FILE).is_file():
            raise SystemExit(f"{folder}: no ONNX export ({ONNX_FILE}); the floor is timed as distill serves, on "
                             "ONNX Runtime: run the pipeline with evaluate.runtime: onnxruntime (the default)")
    student = load_classifier(student_dir)
    test = gold_data(project / "data/prepared", "gold_test", student.labels)
    texts = test.texts[:cfg.evaluate.latency_samples]

    console = Console(width=150)
    candidates, shapes, nodes = [], {}, {}
    trained = {"student", "student INT8", "compressed", "compressed INT8", "student, fused", "compressed INT8, fused"}

    def score_of(clf: Classifier) -> float:
        return float((predict_logits(clf, test.texts, 64, max_length).argmax(axis=1) == test.labels).mean())

    def add(name: str, file: Path, clf: Classifier) -> None:
        import onnx

        model = OnnxClassifier(file, threads, eager=clf.model)
        nodes[name] = len(onnx.load(str(file)).graph.node)
        candidates.append(Candidate(name, Classifier(model, clf.tokenizer, clf.labels), model.size_bytes,
                                    clf.num_parameters, quantized=True))
        config, layers = clf.model.config, encoder_layers(clf.model)
        heads = layers[0].attention.self.num_attention_heads if len(layers) else 0
        shapes[name] = (f"{len(layers)} x {config.hidden_size}, {heads} head{'' if heads == 1 else 's'}, "
                        f"feed-forward {config.intermediate_size}")

    with tempfile.TemporaryDirectory(prefix="distill-floor-") as scratch:
        scratch = Path(scratch)
        add("student", student_dir / ONNX_FILE, student)
        quantize_onnx(student_dir / ONNX_FILE, scratch / "student-int8.onnx")
        add("student INT8", scratch / "student-int8.onnx", student)
        base = student
        if compressed_dir is not None:
            base = load_classifier(compressed_dir)
            add("compressed", compressed_dir / ONNX_FILE, base)
            add("compressed INT8", compressed_dir / INT8_FILE, base)
        origin = "compressed" if compressed_dir is not None else "student"
        if args.fused:
            fuse_graph(student_dir / ONNX_FILE, scratch / "student-fused.onnx")
            add("student, fused", scratch / "student-fused.onnx", student)
            if compressed_dir is not None:
                fuse_graph(compressed_dir / ONNX_FILE, scratch / "compressed-fused.onnx")
                quantize_onnx(scratch / "compressed-fused.onnx", scratch / "compressed-fused-int8.onnx")
                add("compressed INT8, fused", scratch / "compressed-fused-int8.onnx", base)

        def add_cut(name: str, cut: Classifier) -> None:
            folder = scratch / f"cut-{len(candidates)}"
            folder.mkdir()
            served, why = export_into(cut, folder, max_length, texts[:16], threads)
            if served is None:
                raise SystemExit(f"{name} did not export: {why}")
            quantize_onnx(folder / ONNX_FILE, folder / INT8_FILE)
            add(name, folder / ONNX_FILE, cut)
            add(f"{name}, INT8", folder / INT8_FILE, cut)

        heads = base.model.config.num_attention_heads
        keep_heads = args.heads_keep or heads // 2
        if args.heads_keep is not None and not 0 < keep_heads < heads:
            raise SystemExit(f"--heads-keep {keep_heads}: the model has {heads} heads per layer; keep 1 to {heads - 1}")
        accuracy, before = {}, None
        if any(cut_heads_of(base.model)):  # the stage cut its heads already (compress.heads_keep)
            console.print(f"{origin}: its attention heads are cut already (compress.heads_keep); no heads variant")
            keep_heads = 0
        if keep_heads:
            data, _ = distillation_set(project / "data/teacher_outputs/logits.parquet",
                                       read_card(project / "models/teacher")["fingerprint"], base.labels)
            cut = heads_cut_to(base, keep_heads, data.texts[:cfg.compress.importance_texts], max_length)
            name = f"{origin}, {keep_heads} of {heads} heads kept"
            if args.recover:
                val = gold_data(project / "data/prepared", "gold_val", base.labels)
                before = score_of(cut)
                recover(cfg, cut, data, val, max_length)
                name += ", recovered"
                trained |= {name, f"{name}, INT8"}
            add_cut(name, cut)
        for keep in range(len(encoder_layers(base.model)) - 1, -1, -1):
            add_cut(f"{origin}, {keep} layer{'' if keep == 1 else 's'} kept", cut_to(base, keep))
        candidates.append(Candidate("tokenization alone", Classifier(TokenizeOnly(), student.tokenizer,
                                                                     student.labels), 0, 0, quantized=True))
        shapes["tokenization alone"] = "no model"
        latency = measure_latency(candidates, texts, max_length, cfg.evaluate.warmup, threads,
                                  cfg.evaluate.latency_rounds)
        feeds = [{k: v.numpy() for k, v in encode(student.tokenizer, [text], max_length).items()} for text in texts]
        alone = session_ms(candidates, feeds, cfg.evaluate.latency_rounds)
        if args.recover or args.fused:  # the cut layers are untrained: only the models with real weights are scored
            accuracy = {c.name: score_of(c.clf) for c in candidates if c.name in trained}

    reference = latency["student"]["latency_p50_ms"]
    table = Table(title=f"Batch-1 latency floor: {len(texts)} gold_test texts of {project.name}, {threads} thread(s), "
                        f"median of {cfg.evaluate.latency_rounds} rounds")
    for column in ("model", "shape", "nodes", "p50 ms", "student / model", "ORT alone ms", "student / model", "MB",
                   "gold_test"):
        table.add_column(column, justify="left" if column in ("model", "shape") else "right")
    figures = {}
    for c in candidates:
        p50 = latency[c.name]["latency_p50_ms"]
        own = alone.get(c.name)
        figures[c.name] = {"shape": shapes[c.name], "nodes": nodes.get(c.name), "latency_p50_ms": p50,
                           "speedup": reference / p50, "session_ms": own,
                           "session_speedup": alone["student"] / own if own else None,
                           "size_mb": c.size_bytes / 2**20, "accuracy": accuracy.get(c.name)}
        table.add_row(c.name, shapes[c.name], str(nodes.get(c.name, "")), f"{p50:.3f}", f"{reference / p50:.2f}x",
                      f"{own:.3f}" if own else "", f"{alone['student'] / own:.2f}x" if own else "",
                      f"{c.size_bytes / 2**20:.2f}" if c.size_bytes else "",
                      f"{accuracy[c.name]:.4f}" if c.name in accuracy else "")
    console.print(table)
    if before is not None:
        console.print(f"the head-pruned model before recovery: {before:.4f} on gold_test")
    if args.json:
        args.json.write_text(json.dumps({"project": str(project), "student": str(student_dir),
                                         "compressed": str(compressed_dir) if compressed_dir else None,
                                         "texts": len(texts), "threads": threads, "models": figures,
                                         "heads_before_recovery": before}, indent=2))


if __name__ == "__main__":
    main()
