"""LLM distillation end to end on the default prompts: cache size and kept mass, students vs the teacher.

    python benchmarks/lm.py --quick                                    # tiny sizes, a couple of minutes
    python benchmarks/lm.py --train-size 128 --heldout-size 32 --max-new-tokens 20 \\
        --layers 4 --width 256 --epochs 6 --out reports/lm_benchmark.json

Steps, each through the library's own stage functions (nothing is reimplemented here):

1. the prompt set from a prepared folder (:mod:`distill.lm.prompts`), the teacher's greedy
   completions (:mod:`distill.lm.generate`) and its top-k cache (:mod:`distill.lm.topk`), with bytes
   per token and kept mass; a deeper cache (``--curve-depth``) gives the kept-mass-by-k curve and
   the kept mass of a global-threshold variable-k cache at the same byte budget;
2. the distilled students (:func:`distill.lm.train.run`, ``--modes``: token-level KD on the cached
   top-k, and / or sequence-level KD on the teacher's text);
3. the undistilled student (:func:`distill.lm.train.run_baseline`, the lm_baseline stage): the same
   architecture, seed, epochs, batch size and learning rate, trained with cross-entropy on the
   prompts' reference answers (the intent name, then EOS) instead of anything from the teacher;
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
         "kv_heads": 1, "intermediate": 128, "epochs": 2, "k": 8, "curve_depth": 64, "latency_samples": 2,
         "modes": "token"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"),
                        help="prepared folder (gold_train / gold_val / gold_test parquet, labels.json)")
    parser.add_argument("--teacher", type=Path, help="causal-LM folder (default: the packaged SmolLM2 teacher)")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/lm"), help="where the packaged teacher is "
                        "converted once")
    parser.add_argument("--work", type=Path, default=Path("reports/lm_benchmark"), help="intermediate files")
    parser.add_argument("--out", type=Path, default=Path("reports/lm_benchmark.json"), help="the JSON report")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="base configuration")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override, e.g. lm.train.loss=gjsd (repeatable)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of a couple of minutes")
    parser.add_argument("--train-size", type=int, default=128)
    parser.add_argument("--heldout-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--k", type=int, default=32, help="top-k of the training cache")
    parser.add_argument("--curve-depth", type=int, default=256, help="depth of the cache the kept-mass curve "
                        "and the variable-k figures are read from")
    parser.add_argument("--budget", type=float, action="append", help="bytes/token budgets for variable k "
                        "(repeatable; default 130 and 150)")
    parser.add_argument("--modes", default="token,sequence", help="distilled students: token and/or sequence")
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
    return args


def build_config(args: argparse.Namespace):
    """The pipeline config with the benchmark's sizes as overrides (the same keys params.yaml has)."""
    from distill.config import load_config

    sets = {"lm.prompts.train_size": args.train_size, "lm.prompts.heldout_size": args.heldout_size,
            "lm.generate.max_new_tokens": args.max_new_tokens, "lm.topk.k": args.k,
            "lm.student.num_layers": args.layers, "lm.student.hidden_size": args.width,
            "lm.student.num_heads": args.heads, "lm.student.num_kv_heads": args.kv_heads,
            "lm.student.intermediate_size": args.intermediate, "lm.train.epochs": args.epochs,
            "lm.train.batch_size": args.batch_size, "lm.train.learning_rate": args.learning_rate,
            "lm.train.device": "cpu"}
    return load_config(args.params, [f"{k}={v}" for k, v in sets.items()] + args.overrides)


def cache_figures(cfg, args, teacher_dir: Path, completions_path: Path, topk_path: Path, say) -> dict:
    """The training cache's bytes/token and kept mass, the fixed-k curve and variable k at each budget."""
    import torch

    from distill.lm import topk
    from distill.lm.generate import read_completions
    from distill.lm.teacher import load_causal_lm

    result = topk.run(cfg, completions_path, teacher_dir, topk_path)
    say(f"top-k cache k={result.stats.k}: {result.stats.bytes_per_token:.0f} B/token payload, "
        f"{result.stats.file_bytes_per_token} B/token on disk, kept mass {result.stats.kept_mass_mean:.3f} "
        f"(p05 {result.stats.kept_mass_p05:.3f}), {result.seconds:.1f} s")
    frame, _ = read_completions(completions_path)
    lm = load_causal_lm(teacher_dir)
    deep = topk.teacher_topk(lm, [list(v) for v in frame["prompt_ids"]], [list(v) for v in frame["completion_ids"]],
                             args.curve_depth, cfg.lm.topk.batch_size, torch.device("cpu"))
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= args.curve_depth]
    curve = topk.kept_mass_curve(deep, ks)
    variable = [asdict(topk.variable_k_at_budget(deep, b)) for b in args.budget]
    return {"fixed": asdict(result.stats), "seconds": result.seconds, "path": str(result.path),
            "kept_mass_by_k": {str(k): v for k, v in curve.items()},
            "bytes_per_token_by_k": {str(k): 4 * k + 2 for k in ks}, "variable_k": variable}


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


def print_cache_table(console, cache: dict) -> None:
    from rich.table import Table

    table = Table(title="top-k cache of the teacher over its completions (kept mass = mean over positions)")
    for column in ("format", "B/token (payload)", "kept mass", "kept mass p05", "mean k"):
        table.add_column(column, justify="left" if column == "format" else "right")
    fixed = cache["fixed"]
    table.add_row(f"fixed k={fixed['k']} (training cache; {fixed['file_bytes_per_token']} B/token on disk)",
                  f"{fixed['bytes_per_token']:.0f}", f"{fixed['kept_mass_mean']:.4f}", f"{fixed['kept_mass_p05']:.4f}",
                  str(fixed["k"]))
    for k, mass in cache["kept_mass_by_k"].items():
        table.add_row(f"fixed k={k}", str(cache["bytes_per_token_by_k"][k]), f"{mass:.4f}", "", k)
    for v in cache["variable_k"]:
        table.add_row(f"variable k, global threshold, budget {v['budget_bytes_per_token']:.0f} (cap {v['k_cap']})",
                      f"{v['bytes_per_token']:.1f}", f"{v['kept_mass_mean']:.4f}", f"{v['kept_mass_p05']:.4f}",
                      f"{v['k_mean']:.1f} (max {v['k_max']})")
    console.print(table)


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
    cache = cache_figures(cfg, args, teacher_dir, paths["completions"], paths["topk"], say)
    lap("topk_cache_and_curve")
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
