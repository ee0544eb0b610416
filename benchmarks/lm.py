"""LLM distillation end to end on the default prompts: cache size and kept mass, students vs the teacher.

A benchmark script, long because it runs the whole study in one command; it reimplements nothing.

    python benchmarks/lm.py --quick                                    # tiny sizes, a couple of minutes
    python benchmarks/lm.py --train-size 128 --heldout-size 32 --max-new-tokens 20 \\
        --layers 4 --width 256 --epochs 6 --out reports/lm_benchmark.json

Steps, each through the library's own stage functions (nothing is reimplemented here):

1. the prompt set from a prepared folder (:mod:`distill.lm.prompts`), the teacher's greedy
   completions (:mod:`distill.lm.generate`) and its top-k cache (:mod:`distill.lm.topk`), with bytes
   per token on disk and kept mass; from a deeper teacher pass (``--curve-depth``), cache files of
   each format (fixed k = 32, the ragged cache at each ``--budget``; float16 or uint8 values) measured
   on disk, the smallest file that keeps ``--target-mass``, and the KL loss's quantisation error on
   the trained students (``--cache-only`` stops after these);
2. the distilled students (:func:`distill.lm.train.run`, ``--modes``: token-level KD on the cached
   top-k, and / or sequence-level KD on the teacher's text);
3. the undistilled student (:func:`distill.lm.train.run_baseline`, the lm_baseline stage): the same
   architecture, seed, epochs, batch size and learning rate, trained with cross-entropy on the
   prompts' reference answers (the label, or the value a rewrite keeps, then EOS) instead of anything from
   the teacher;
4. one harness for all (:func:`distill.lm.evaluate.evaluate_lm`): perplexity, KL and top-1 agreement
   on held-out teacher text, greedy agreement, task accuracy, latency / token, memory, the
   unsafe-content screens, and each student's acceptance rate as the teacher's speculative draft.

Prints the tables and writes every figure as JSON (``--out``). Intermediate files go to ``--work``;
a rerun with the same settings reuses the teacher's completions (generation resumes, never repeats).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

QUICK = {"train_size": 16, "heldout_size": 8, "max_new_tokens": 8, "layers": 2, "width": 64, "heads": 2,
         "kv_heads": 1, "intermediate": 128, "epochs": 2, "k": 64, "curve_depth": 128, "latency_samples": 2,
         "modes": "token"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"),
                        help="prepared folder (gold_train / gold_val / gold_test parquet, labels.json)")
    parser.add_argument("--teacher", type=Path, help="causal-LM folder (default: the packaged SmolLM2 teacher)")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/lm"), help="where the packaged teacher is "
                        "converted once")
    parser.add_argument("--work", type=Path, default=Path("reports/lm_benchmark"), help="intermediate files")
    parser.add_argument("--out", type=Path, help="the JSON report (default reports/lm_benchmark.json, "
                        "reports/lm_cache.json with --cache-only)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="base configuration")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override, e.g. lm.train.loss=gjsd (repeatable)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of a couple of minutes")
    parser.add_argument("--train-size", type=int, default=128)
    parser.add_argument("--heldout-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--k", type=int, help="most tokens a position keeps (default: lm.topk.k of --params)")
    parser.add_argument("--curve-depth", type=int, default=1024, help="depth of the teacher pass the format "
                        "figures are read from")
    parser.add_argument("--budget", type=float, action="append", help="bytes/token budgets of the compared cache "
                        "files (repeatable; default 130 and 150)")
    parser.add_argument("--target-mass", type=float, default=0.95, help="mean kept mass whose smallest file "
                        "is reported")
    parser.add_argument("--cache-only", action="store_true", help="only the cache figures (prompts and "
                        "completions reused or made); the quantisation error uses students already in --work")
    parser.add_argument("--modes", default="token,sequence", help="distilled students: token and/or sequence")
    parser.add_argument("--init", choices=["random", "teacher_layers"], default="random",
                        help="how the students start (lm.student.init): random, the shape below (the figures in "
                        "docs/llm.md), or teacher_layers, --layers of the teacher's blocks (the pipeline's default)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=1)
    parser.add_argument("--intermediate", type=int, default=768)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for everything")
    parser.add_argument("--latency-samples", type=int, default=8, help="prompts timed (and drafted) per model")
    parser.add_argument("--draft-k", type=int, default=4, help="draft tokens per teacher pass")
    args = parser.parse_args(argv)
    if args.quick:
        defaults = {a.dest: a.default for a in parser._actions}
        for key, value in QUICK.items():
            if getattr(args, key) == defaults[key]:  # explicit flags still win over --quick
                setattr(args, key, value)
    args.budget = args.budget or [130.0, 150.0]
    args.out = args.out or Path("reports/lm_cache.json" if args.cache_only else "reports/lm_benchmark.json")
    return args


def build_config(args: argparse.Namespace):
    """The pipeline config with the benchmark's sizes as overrides (the same keys params.yaml has)."""
    from distill.config import load_config

    sets = {"lm.prompts.train_size": args.train_size, "lm.prompts.heldout_size": args.heldout_size,
            "lm.generate.max_new_tokens": args.max_new_tokens,
            "lm.student.init": args.init, "lm.student.num_layers": args.layers, "lm.student.hidden_size": args.width,
            "lm.student.num_heads": args.heads, "lm.student.num_kv_heads": args.kv_heads,
            "lm.student.intermediate_size": args.intermediate, "lm.train.epochs": args.epochs,
            "lm.train.batch_size": args.batch_size, "lm.train.learning_rate": args.learning_rate,
            "lm.train.device": "cpu"}
    if args.k is not None:
        sets["lm.topk.k"] = args.k
    return load_config(args.params, [f"{k}={v}" for k, v in sets.items()] + args.overrides)


def train_undistilled(cfg, prompts_path: Path, teacher_dir: Path, out_dir: Path) -> dict:
    """The same student trained on (prompt, reference answer) pairs only: the lm_baseline stage."""
    from distill.lm import train

    result = train.run_baseline(cfg, prompts_path, teacher_dir, out_dir)
    return {k: v for k, v in asdict(result).items() if k != "history"} | {"path": str(out_dir)}


def train_distilled(cfg, mode: str, completions_path: Path, teacher_dir: Path, topk_path: Path,
                    out_dir: Path) -> dict:
    """A student distilled in ``mode`` (token: cached top-k KD; sequence: the teacher's text) by the lm_train stage."""
    from distill.lm import train

    cfg = cfg.model_copy(deep=True)
    cfg.lm.train.mode = mode
    result = train.run(cfg, completions_path, teacher_dir, out_dir, topk_path if mode == "token" else None)
    return {k: v for k, v in asdict(result).items() if k != "history"} | {"path": str(out_dir)}


def cache_figures(cfg, args, teacher_dir: Path, completions_path: Path, topk_path: Path, say) -> tuple[dict, dict]:
    """The training cache (the lm_topk stage as configured), then every format from one deeper teacher pass.

    Each format row is a file written by the library's writer and measured on disk: fixed k = 32 and the
    ragged water-filled cache at each byte budget, each with float16 and uint8 on 256, 64, 32 and 16 levels;
    then the smallest files whose mean kept mass reaches ``--target-mass`` (positions keep up to
    the deep pass's depth). Also returns the first budget's uint8 entries with exact (float32) values and
    with each stored format, for the quantisation error of the KL loss (:func:`quantisation_error`).
    """
    import numpy as np
    import torch

    from distill.lm import topk
    from distill.lm.generate import read_completions
    from distill.lm.teacher import load_causal_lm

    result = topk.run(cfg, completions_path, teacher_dir, topk_path)
    s = result.stats
    say(f"top-k cache (k <= {s.k}, budget {cfg.lm.topk.bytes_per_token} B/token, {s.logprob_dtype}): "
        f"{s.file_bytes_per_token} B/token on disk, mean k {s.k_mean}, kept mass {s.kept_mass_mean:.4f} "
        f"(p10 {s.kept_mass_p10:.4f}), {result.seconds:.1f} s")
    frame, _ = read_completions(completions_path)
    lm = load_causal_lm(teacher_dir)
    deep = topk.teacher_topk(lm, [list(v) for v in frame["prompt_ids"]], [list(v) for v in frame["completion_ids"]],
                             args.curve_depth, cfg.lm.topk.batch_size, torch.device("cpu"))
    vocab, ids = int(lm.model.get_output_embeddings().weight.shape[0]), frame["prompt_id"].tolist()
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 255, 512, 1024) if k <= args.curve_depth]
    cap = min(cfg.lm.topk.k, args.curve_depth)

    def write(name: str, caches, layout, k: int, threshold) -> dict:
        path = args.work / f"topk_{name}.parquet"
        topk.write_topk(path, ids, caches, {"k": k}, layout)
        stats = topk.cache_stats(caches, layout, k, path.stat().st_size, threshold)
        say(f"  {name}: {stats.file_bytes_per_token} B/token on disk, kept mass {stats.kept_mass_mean:.4f}")
        return {"format": name, "path": str(path), **asdict(stats)}

    def fit(name: str, caches, k: int, budget: float | None, dtype: str, levels: int) -> tuple[dict, list]:
        tcfg = cfg.lm.topk.model_copy(update={"k": k, "bytes_per_token": budget, "logprob_dtype": dtype,
                                              "logprob_levels": levels})
        fitted, layout, threshold = topk.fit_budget(ids, caches, tcfg, vocab, {"k": k})
        return write(name, fitted, layout, k, threshold), fitted

    rows, comparison = [], {}
    fixed = [c.truncate(np.minimum(c.counts, 32)) for c in deep]
    capped = [c.truncate(np.minimum(c.counts, cap)) for c in deep]
    values = {"float16": ("float16", 256), "uint8": ("uint8", 256), "uint8_64levels": ("uint8", 64),
              "uint8_32levels": ("uint8", 32), "uint8_16levels": ("uint8", 16)}
    for name, (dtype, levels) in values.items():
        rows.append(fit(f"fixed_k32_{name}", fixed, 32, None, dtype, levels)[0])
    for budget in args.budget:
        for name, (dtype, levels) in values.items():
            row, fitted = fit(f"budget{budget:g}_{name}", capped, cap, budget, dtype, levels)
            rows.append(row)
            if name == "uint8" and not comparison:  # the same entries with each value format
                comparison = {"float32 (exact)": fitted}
                for other, (other_dtype, other_levels) in values.items():
                    layout = topk.make_layout(fitted, cap, vocab, other_dtype, other_levels)
                    comparison[other] = [topk.TopK(c.counts, c.indices,
                                                   layout.decode_logprobs(layout.encode_logprobs(c.logprobs)),
                                                   c.tail.astype(np.float16).astype(np.float32)) for c in fitted]
    target = smallest_for_mass(deep, args.target_mass)
    if target is not None:
        for name, (dtype, levels) in values.items():
            layout = topk.make_layout(target, args.curve_depth, vocab, dtype, levels)
            rows.append(write(f"mass{args.target_mass:g}_{name}", target, layout, args.curve_depth, None))
    figures = {"training_cache": asdict(s) | {"budget": cfg.lm.topk.bytes_per_token, "seconds": result.seconds,
                                              "path": str(result.path)},
               "deep_depth": args.curve_depth, "kept_mass_by_k": {str(k): v for k, v in
                                                                   topk.kept_mass_curve(deep, ks).items()},
               "formats": rows, "target_mass": args.target_mass, "target_mass_reachable_at_depth": target is not None}
    return figures, {name: dict(zip(ids, caches)) for name, caches in comparison.items()}


def smallest_for_mass(deep: list, mass: float) -> list | None:
    """The water-filled cache with the fewest entries whose mean kept mass reaches ``mass`` (None: even all do not)."""
    import numpy as np

    from distill.lm import topk

    def kept(entries: int):
        caches, _ = topk.water_fill(deep, entries)
        return caches, float(np.mean(np.concatenate([1 - c.tail for c in caches])))

    low, high = sum(c.positions for c in deep), sum(len(c.indices) for c in deep)
    best, reached = kept(high)
    if reached < mass:
        return None
    while high - low > max(1, low // 1000):
        middle = (low + high) // 2
        caches, reached = kept(middle)
        if reached >= mass:
            high, best = middle, caches
        else:
            low = middle
    return best


def cached_kl(cache_sets: dict[str, dict], completions_path: Path, students: dict[str, Path], batch_size: int,
              teacher_dir: Path | None = None) -> tuple[dict, dict]:
    """Forward KL(teacher || student) per position from each set of caches (name -> caches by prompt id), per
    student; with ``teacher_dir`` also the exact KL over the whole vocabulary (the teacher's full
    distribution, recomputed). One pass over the completions: each student runs once per batch.
    """
    import torch

    from distill.lm.batch import make_batch, selected_logits
    from distill.lm.generate import read_completions
    from distill.lm.teacher import load_causal_lm
    from distill.lm.train import TeacherTargets, cached_divergence

    frame, _ = read_completions(completions_path)
    loaded = {name: load_causal_lm(folder) for name, folder in students.items()}
    teacher = load_causal_lm(teacher_dir) if teacher_dir is not None else None
    pad = next(iter(loaded.values())).tokenizer.pad_token_id
    sums = {name: dict.fromkeys(cache_sets, 0.0) for name in loaded}
    exact = dict.fromkeys(loaded, 0.0)
    positions = 0
    for start in range(0, len(frame), batch_size):
        rows = frame.iloc[start:start + batch_size]
        batch = make_batch([list(v) for v in rows["prompt_ids"]], [list(v) for v in rows["completion_ids"]],
                           [0] * len(rows), pad, 100_000)
        lengths = batch.target_mask.sum(1).tolist()
        with torch.inference_mode():
            target = None if teacher is None else torch.log_softmax(selected_logits(
                teacher.model.eval(), batch.input_ids, batch.attention_mask, batch.target_mask).float(), -1)
            for name, lm in loaded.items():
                logits = selected_logits(lm.model.eval(), batch.input_ids, batch.attention_mask,
                                         batch.target_mask).float()
                if target is not None:
                    exact[name] += float((target.exp() * (target - torch.log_softmax(logits, -1))).sum())
                for fmt, caches in cache_sets.items():
                    targets = TeacherTargets.from_caches([caches[p] for p in rows["prompt_id"]], 0, lengths)
                    sums[name][fmt] += len(logits) * float(cached_divergence(logits, targets, "forward_kl"))
        positions += int(batch.target_mask.sum())
    return ({name: {fmt: total / positions for fmt, total in kl.items()} for name, kl in sums.items()},
            {name: total / positions for name, total in exact.items()} if teacher is not None else {})


def quantisation_error(comparison: dict, completions_path: Path, students: dict[str, Path], batch_size: int) -> dict:
    """Forward KL(teacher || student) per position on the same cache entries with each value format.

    The students are real (trained) ones, so the KL is not at its minimum and the value error shows
    up to first order; the difference from the exact float32 values is the quantisation error.
    """
    import numpy as np

    out = {}
    for name, kl in cached_kl(comparison, completions_path, students, batch_size)[0].items():
        exact = kl["float32 (exact)"]
        out[name] = {"kl_per_token": {fmt: round(v, 6) for fmt, v in kl.items()},
                     "difference_from_exact": {fmt: float(np.format_float_scientific(v - exact, 2))
                                               for fmt, v in kl.items() if fmt != "float32 (exact)"}}
    return out


def loss_fidelity(files: dict[str, Path], completions_path: Path, teacher_dir: Path, students: dict[str, Path],
                  batch_size: int) -> dict:
    """Forward KL(teacher || student) per position from each cache file, against the exact figure over
    the whole vocabulary (the teacher's full distribution, recomputed).

    A cache lumps the tokens it does not keep into one tail bucket, which can only lower the KL, and
    rounds what it keeps; the gap to the exact KL is the error the training loss inherits from the
    file. Comparing files of the same size tells which use of the bytes keeps the loss most faithful.
    """
    from distill.lm.topk import read_topk

    caches = {name: read_topk(path)[0] for name, path in files.items()}  # all made from these completions
    cached, exact = cached_kl(caches, completions_path, students, batch_size, teacher_dir)
    return {name: {"exact_kl_per_token": round(exact[name], 6),
                   "cached_kl_per_token": {fmt: round(v, 6) for fmt, v in kl.items()},
                   "error": {fmt: round(v - exact[name], 6) for fmt, v in kl.items()}}
            for name, kl in cached.items()}


def fidelity_files(cache: dict, training_cache: Path) -> dict[str, Path]:
    """The files whose loss fidelity is measured: the training cache and every format at the largest budget."""
    largest = max((r for r in cache["formats"] if r["format"].startswith("budget")),
                  key=lambda r: float(r["format"][len("budget"):].split("_")[0]), default=None)
    prefix = largest["format"].split("_")[0] + "_" if largest else None
    files = {"training cache": training_cache}
    files.update({r["format"]: Path(r["path"]) for r in cache["formats"] if prefix and r["format"].startswith(prefix)})
    return files


def print_cache_table(console, cache: dict) -> None:
    from rich.table import Table

    table = Table(title=f"teacher top-k cache over its completions ({cache['training_cache']['positions']} "
                        f"positions; B/token = the file on disk / positions)")
    for column in ("format", "B/token on disk", "B/token payload", "kept mass", "p10", "p05", "mean k (max)"):
        table.add_column(column, justify="left" if column == "format" else "right")
    t = cache["training_cache"]
    table.add_row(f"training cache (lm_topk: k <= {t['k']}, budget {t['budget']}, {t['logprob_dtype']})",
                  str(t["file_bytes_per_token"]), f"{t['bytes_per_token']:.1f}", f"{t['kept_mass_mean']:.4f}",
                  f"{t['kept_mass_p10']:.4f}", f"{t['kept_mass_p05']:.4f}", f"{t['k_mean']:.1f} ({t['k_max']})")
    for r in cache["formats"]:
        table.add_row(r["format"], str(r["file_bytes_per_token"]), f"{r['bytes_per_token']:.1f}",
                      f"{r['kept_mass_mean']:.4f}", f"{r['kept_mass_p10']:.4f}", f"{r['kept_mass_p05']:.4f}",
                      f"{r['k_mean']:.1f} ({r['k_max']})")
    console.print(table)
    console.print("fixed k from the deep pass (mean kept mass): " + ", ".join(
        f"k={k}: {v:.4f}" for k, v in cache["kept_mass_by_k"].items()))
    if not cache["target_mass_reachable_at_depth"]:
        console.print(f"mean kept mass {cache['target_mass']} is not reached even keeping {cache['deep_depth']} "
                      f"tokens at every position")
    for student, q in cache.get("quantisation", {}).items():
        console.print(f"KL(teacher || {student}) per token on the same entries: {q['kl_per_token']}; "
                      f"difference from exact: {q['difference_from_exact']}")
    for student, f in cache.get("fidelity", {}).items():
        console.print(f"KL(teacher || {student}) per token over the whole vocabulary: {f['exact_kl_per_token']}; "
                      f"from each file, minus that: {f['error']}")


def evaluate(cfg, args, teacher_dir: Path, completions_path: Path, students: dict[str, Path], say) -> dict:
    """Every candidate on the held-out prompts with evaluate_lm."""
    from distill.lm.evaluate import evaluate_lm
    from distill.lm.generate import read_completions
    from distill.lm.teacher import load_causal_lm

    frame, _ = read_completions(completions_path)
    held = frame[frame["split"] == "heldout"]
    pairs = list(zip(held["prompt"], held["completion"]))
    candidates = {"teacher": load_causal_lm(teacher_dir)} | {name: load_causal_lm(p) for name, p in students.items()}
    return evaluate_lm(candidates, pairs, list(held["reference"]), max_new_tokens=args.max_new_tokens,
                       batch_size=args.batch_size, latency_samples=args.latency_samples, threads=args.threads,
                       draft_k=args.draft_k, log=say)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from rich.console import Console

    from distill.lm import generate, prompts
    from distill.lm.evaluate import print_lm_table
    from distill.lm.teacher import packaged_teacher_folder

    torch.set_num_threads(args.threads)
    console = Console(width=150)
    say = lambda line: console.print(f"[dim]{time.strftime('%H:%M:%S')} {line}[/dim]")  # noqa: E731
    cfg, work, times = build_config(args), args.work, {}
    work.mkdir(parents=True, exist_ok=True)
    teacher_dir = args.teacher or packaged_teacher_folder(args.cache_dir)
    paths = {"prompts": work / "prompts.parquet", "completions": work / "completions.parquet",
             "topk": work / "topk.parquet"}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        times[name] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()

    built = prompts.run(cfg, args.prepared, paths["prompts"])
    say(f"prompts: {built.train} train, {built.heldout} held-out; generating teacher completions")
    gen = generate.run(cfg, paths["prompts"], teacher_dir, paths["completions"])
    say(f"completions: {gen.rows} ({gen.generated} generated, {gen.reused} reused), {gen.completion_tokens} tokens")
    lap("prompts_and_generation")
    cache, comparison = cache_figures(cfg, args, teacher_dir, paths["completions"], paths["topk"], say)
    lap("topk_cache_and_formats")
    if args.cache_only:
        trained = {p.name: p for p in sorted(work.glob("*distilled*")) if (p / "config.json").is_file()}
        cache["quantisation"] = quantisation_error(comparison, paths["completions"], trained, args.batch_size)
        cache["fidelity"] = loss_fidelity(fidelity_files(cache, paths["topk"]), paths["completions"], teacher_dir,
                                          trained, args.batch_size)
        print_cache_table(console, cache)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        args.out.write_text(json.dumps({"args": settings, "cache": cache, "seconds": times}, indent=2, default=str))
        console.print(f"times (s): {times}; report: {args.out}")
        return 0
    students, training = {}, {}
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        say(f"training the distilled student ({mode})")
        name = f"distilled_{mode}"
        training[name] = train_distilled(cfg, mode, paths["completions"], teacher_dir, paths["topk"], work / name)
        students[name] = work / name
        lap(f"train_{name}")
    say("training the undistilled student (reference answers only)")
    training["undistilled"] = train_undistilled(cfg, paths["prompts"], teacher_dir, work / "undistilled")
    students["undistilled"] = work / "undistilled"
    lap("train_undistilled")
    cache["quantisation"] = quantisation_error(comparison, paths["completions"], students, args.batch_size)
    cache["fidelity"] = loss_fidelity(fidelity_files(cache, paths["topk"]), paths["completions"], teacher_dir,
                                      students, args.batch_size)
    evaluation = evaluate(cfg, args, teacher_dir, paths["completions"], students, say)
    lap("evaluate")

    print_cache_table(console, cache)
    print_lm_table(evaluation, console, title=f"LM distillation, {built.heldout} held-out prompts, greedy, "
                                              f"<= {args.max_new_tokens} new tokens, {args.threads} thread(s)")
    metrics = evaluation["metrics"]
    gaps = {name: round(100 * (m["draft_acceptance_rate"] - metrics["undistilled"]["draft_acceptance_rate"]), 1)
            for name, m in metrics.items() if name.startswith("distilled") and m.get("draft_acceptance_rate") is not None}
    for name, gap in gaps.items():
        console.print(f"{name}: draft acceptance {gap:+.1f} points vs the undistilled student "
                      f"(target >= +10): {'met' if gap >= 10 else 'missed'}")
    report = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "teacher": str(teacher_dir), "prompts": asdict(built) | {"path": str(built.path)},
              "generation": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(gen).items()},
              "cache": cache, "training": training, "evaluation": evaluation,
              "acceptance_gap_points": gaps, "seconds": times, "torch_threads": torch.get_num_threads()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    console.print(f"times (s): {times}; report: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
