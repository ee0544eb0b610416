"""Paying a black-box teacher less: every training prompt vs a random sample vs active rounds (lm.select).

    python benchmarks/lm_select.py --prepared data/prepared --teacher models/lm_teacher \\
        --heldout-size 192 --random-seeds 0,1,2 --out reports/lm_select_benchmark.json
    python benchmarks/lm_select.py --rescore 512   # every arm's student (and the teacher) on 512 held-out prompts

The teacher is the local OpenAI-compatible endpoint (:mod:`distill.lm.server`, what ``distill lm-serve``
runs) serving ``--teacher`` on 127.0.0.1; the pipeline reaches it as ``lm.api`` through the cached,
budgeted client, exactly as a paid endpoint. Each arm runs the library's stages (nothing is reimplemented):
lm_select (:func:`distill.lm.select.run`), lm_generate with that selection, lm_train (sequence mode: a
black-box teacher gives text only), then the student's greedy answers on the held-out prompts, scored by
the task's metric. Arms:

- ``all``: every training prompt (lm.select.strategy all);
- ``random``: a random sample of the budget, once per ``--random-seeds`` seed;
- ``active``: the budget in rounds chosen by an interim student (lm.select's defaults unless overridden);
  ``active:RULE`` (e.g. ``active:coverage``) the same with ``lm.select.rule`` RULE, so rules compare in one run;
  ``active:RULE:ROUNDS`` with ``lm.select.rounds`` ROUNDS too (``active:coverage:1``: one choice, no interim student).

The random and active students train as many optimizer steps as the student of every prompt (more
epochs: ``lm.select.keep_steps``, the default); ``--set lm.select.keep_steps=false`` compares them at
equal epochs instead.

Every student starts from the same folder (``--student-blocks`` of the teacher's blocks, saved once and
given as ``lm.student.path``: with a black-box teacher there are no weights to copy, so a user brings a
small open model; this one stands in for it). One response cache serves all arms: the endpoint is
greedy, so a prompt's answer is the same whichever arm asks, and each arm's calls, tokens and estimated
cost are counted from the answers it used (cached or not), as a first run would pay them.

A few points of task score separate the arms, and on 192 held-out prompts one prompt is half a point:
``--rescore N`` scores every student a run left in ``--work`` (and the teacher, greedy as the endpoint)
again on N held-out prompts, the run's own and more (the sampler is nested), with no endpoint and no
training; the report is ``--out`` with ``-rescore`` added to its name.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

PRICES = {"price_prompt_per_1k": 0.15, "price_completion_per_1k": 0.6}  # an example price list (any unit)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--teacher", type=Path, default=Path("models/lm_teacher"), help="causal-LM teacher folder")
    parser.add_argument("--work", type=Path, default=Path("reports/lm_select_benchmark"), help="intermediate files")
    parser.add_argument("--out", type=Path, default=Path("reports/lm_select_benchmark.json"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every arm, e.g. lm.select.rounds=3 (repeatable)")
    parser.add_argument("--train-size", type=int, default=256)
    parser.add_argument("--heldout-size", type=int, default=192)
    parser.add_argument("--share", type=float, default=0.5, help="the call budget of random and active")
    parser.add_argument("--random-seeds", default="0,1,2")
    parser.add_argument("--arms", default="all,random,active")
    parser.add_argument("--student-blocks", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight (the server shares the CPU)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rescore", type=int, default=0, metavar="N",
                        help="only score the students of an earlier run (in --work) on N held-out prompts")
    return parser.parse_args(argv)


def arm_config(args, student_dir: Path, base_url: str, strategy: str, seed: int = 0, rule: str | None = None,
               rounds: str | None = None):
    from distill.config import load_config

    sets = {"lm.select.seed": seed, "lm.prompts.train_size": args.train_size,
            "lm.prompts.heldout_size": args.heldout_size, **({"lm.select.rule": rule} if rule else {}),
            **({"lm.select.rounds": rounds} if rounds else {}),
            "lm.api": json.dumps({"model": "teacher", "base_url": base_url, "api_key_env": None,
                                  "cache_dir": str(args.work / "responses"), "max_concurrency": args.concurrency,
                                  **PRICES}),
            "lm.student.path": str(student_dir), "lm.train.mode": "sequence", "lm.train.device": "cpu",
            "lm.train.checkpoint_every": 0, "lm.select.strategy": strategy, "lm.select.share": args.share}
    return load_config(args.params, [f"{k}={v}" for k, v in sets.items()] + args.overrides)


def heldout_score(cfg, student_dir: Path, completions: Path) -> dict:
    """The student's greedy answers on the held-out prompts, scored like the teacher gate (the task's metric)."""
    import pandas as pd

    from distill.lm.evaluate import task_accuracy
    from distill.lm.generate import read_completions
    from distill.lm.teacher import load_causal_lm

    frame, _ = read_completions(completions)
    held = frame[frame["split"] == "heldout"]
    answers = greedy_answers(load_causal_lm(student_dir), held["prompt"].tolist(), cfg.lm.generate.max_new_tokens)
    student = task_accuracy(answers, held["reference"].tolist())
    teacher = task_accuracy(held["answer"].tolist(), held["reference"].tolist())
    return {"student": student, "teacher": teacher, "heldout": len(held),
            "agreement_exact": float(pd.Series([a == t.strip() for a, t in zip(answers, held["answer"])]).mean())}


def greedy_answers(lm, texts: list[str], max_new_tokens: int) -> list[str]:
    """The model's greedy answers to rendered prompts, decoded."""
    from distill.lm.evaluate import generate_greedy

    outputs = generate_greedy(lm, texts, max_new_tokens, batch_size=16)
    return [lm.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in outputs]


def run_arm(args, name: str, cfg, teacher_dir: Path, prompts: Path, say) -> dict:
    from distill.lm import generate, select, train

    work = args.work / name
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    chosen = select.run(cfg, prompts, teacher_dir, work / "selection.json")
    selected_s = time.perf_counter() - started
    chosen_ids = select.read_selection(work / "selection.json", prompts, generate.teacher_identity(cfg, teacher_dir))
    gen = generate.run(cfg, prompts, teacher_dir, work / "completions.parquet", chosen_ids)
    frame, meta = generate.read_completions(work / "completions.parquet")
    train_rows = frame[frame["split"] == "train"]
    trained = train.run(cfg, work / "completions.parquet", teacher_dir, work / "student")
    score = heldout_score(cfg, work / "student", work / "completions.parquet")
    usage = train_spend(cfg, prompts, teacher_dir, train_rows)
    result = {"arm": name, "strategy": cfg.lm.select.strategy, "select_seed": cfg.lm.select.seed,
              "steps": trained.steps, "train_calls": len(train_rows),
              "train_tokens": usage["dataset_tokens"], "train_cost": round(usage["dataset_cost"], 4),
              "calls_with_heldout": gen.api["calls"], "tokens_with_heldout": gen.api["dataset_tokens"],
              "cost_with_heldout": gen.api["dataset_cost"], "stopped": chosen.stopped,
              "rounds": [vars(r) for r in chosen.rounds], "select_seconds": round(selected_s, 1),
              "train_seconds": trained.seconds, "task": score, "seconds": round(time.perf_counter() - started, 1)}
    say(f"{name}: {len(train_rows)} training calls, task {score['student']} (teacher {score['teacher']}), "
        f"{result['seconds']} s")
    return result


def train_spend(cfg, prompts: Path, teacher_dir: Path, rows) -> dict:
    """What the training prompts' answers alone cost (the held-out ones are the same in every arm): the same
    requests again through the client, every one a cache hit, so nothing is paid."""
    from transformers import AutoTokenizer

    from distill.lm.client import ChatClient
    from distill.lm.generate import GenerationSettings, api_completion_rows
    from distill.lm.prompts import PromptTemplate, read_prompts

    _, meta = read_prompts(prompts)
    settings = GenerationSettings.from_config(cfg.lm.generate, cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    with ChatClient(cfg.lm.api) as client:
        _, spend = api_completion_rows(client, tokenizer, rows, PromptTemplate.of(meta), meta["answer_marker"],
                                       settings)
    assert spend["requests"] == 0, "the training prompts' answers should all come from the response cache"
    return spend


def rescore(args: argparse.Namespace, say) -> list[dict]:
    """The teacher and every arm's student in ``--work`` on ``--rescore`` held-out prompts (greedy, task metric)."""
    import numpy as np
    import pandas as pd
    from scipy import stats

    from distill.config import load_config
    from distill.lm import prompts as lm_prompts
    from distill.lm.evaluate import task_accuracy
    from distill.lm.teacher import load_causal_lm

    cfg = load_config(args.params, [f"lm.prompts.train_size={args.train_size}",
                                    f"lm.prompts.heldout_size={args.rescore}"] + args.overrides)
    path = args.work / "rescore_prompts.parquet"
    lm_prompts.run(cfg, args.prepared, path)
    frame, meta = lm_prompts.read_prompts(path)
    held, template = frame[frame["split"] == "heldout"], lm_prompts.PromptTemplate.of(meta)
    before, _ = lm_prompts.read_prompts(args.work / "prompts.parquet")
    run_ids, ids = set(before.loc[before["split"] == "heldout", "prompt_id"]), set(held["prompt_id"])
    assert run_ids <= ids or ids <= run_ids, "the held-out prompts are not nested: another seed or data?"
    assert before.loc[before["split"] == "train", "prompt_id"].tolist() == \
        frame.loc[frame["split"] == "train", "prompt_id"].tolist(), "another training pool than the run's"
    results = []
    folders = [("teacher", args.teacher)] + [(f.parent.name, f) for f in sorted(args.work.glob("*/student"))]
    for name, folder in folders:
        lm = load_causal_lm(folder)
        texts = [lm_prompts.render_prompt(lm.tokenizer, template, r) for r in held["request"]]
        answers = greedy_answers(lm, texts, cfg.lm.generate.max_new_tokens)
        hits = [task_accuracy([a], [r])["task_contains"] for a, r in zip(answers, held["reference"])]
        results.append({"arm": name, "heldout": len(held), "task": task_accuracy(answers, held["reference"].tolist()),
                        "hits": hits, "answers": pd.Series(answers, index=held["prompt_id"]).to_dict()})
        say(f"{name}: task_contains {np.mean(hits):.4f} on {len(held)} held-out prompts")
    base = next((r for r in results if r["arm"] == "all"), None)
    for r in results:  # each arm minus the student of every prompt, prompt by prompt, with a 95 % interval
        if base is not None and r["arm"] not in ("all", "teacher"):
            diff = np.asarray(r["hits"]) - np.asarray(base["hits"])
            ci = stats.bootstrap((diff,), np.mean, confidence_level=0.95, random_state=0).confidence_interval
            r["vs_all"] = {"points": round(100 * diff.mean(), 2), "ci95": [round(100 * ci.low, 2),
                                                                             round(100 * ci.high, 2)]}
            low, high = r["vs_all"]["ci95"]
            say(f"{r['arm']} - all: {r['vs_all']['points']:+.2f} points (95 % interval {low:+.2f} to {high:+.2f})")
    return results


def write_report(args: argparse.Namespace, results: list[dict]) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "arms": results}, indent=2))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from rich.console import Console
    from rich.table import Table

    from distill.lm import prompts as lm_prompts
    from distill.lm.server import create_app, running_server
    from distill.lm.student import save_lm, teacher_layers_student
    from distill.lm.teacher import load_causal_lm

    torch.set_num_threads(args.threads)
    console = Console(width=150)
    say = lambda line: console.print(f"[dim]{time.strftime('%H:%M:%S')} {line}[/dim]")  # noqa: E731
    if args.rescore:
        results = rescore(args, say)
        args.out = args.out.with_name(f"{args.out.stem}-rescore{args.out.suffix}")
        write_report(args, results)
        say(f"report: {args.out}")
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    teacher = load_causal_lm(args.teacher)
    student_dir = args.work / "student_start"
    if not (student_dir / "config.json").is_file():
        start, keep = teacher_layers_student(teacher, args.student_blocks)
        save_lm(start, student_dir, {"kind": "lm_student_start", "source": f"teacher_layers {keep}"})
    results = []
    with running_server(create_app(teacher, "teacher", default_max_tokens=64)) as base_url:
        prompts = args.work / "prompts.parquet"
        lm_prompts.run(arm_config(args, student_dir, base_url, "all"), args.prepared, prompts)
        arms = [a.strip() for a in args.arms.split(",") if a.strip()]
        for arm in arms:
            strategy, _, rule = arm.partition(":")
            rule, _, rounds = rule.partition(":")
            seeds = [int(s) for s in args.random_seeds.split(",")] if strategy == "random" else [0]
            for seed in seeds:  # lm.select.seed draws the sample; the run's seed (training, sampling) stays
                cfg = arm_config(args, student_dir, base_url, strategy, seed, rule or None, rounds or None)
                name = f"random_{seed}" if strategy == "random" else "_".join(filter(None, (strategy, rule, rounds)))
                say(f"arm {name}")
                results.append(run_arm(args, name, cfg, args.teacher, prompts, say))
                write_report(args, results)  # after every arm: a long run killed late keeps what it measured
    table = Table(title=f"lm.select on {results[0]['task']['heldout']} held-out prompts (task metric: share of "
                        f"answers keeping the named value)")
    for column in ("arm", "training calls", "tokens", "est. cost", "student task_contains", "teacher", "minutes"):
        table.add_column(column, justify="left" if column == "arm" else "right")
    for r in results:
        table.add_row(r["arm"], str(r["train_calls"]), str(r["train_tokens"]), f"{r['train_cost']:.4f}",
                      f"{r['task']['student']['task_contains']:.3f}", f"{r['task']['teacher']['task_contains']:.3f}",
                      f"{r['seconds'] / 60:.1f}")
    console.print(table)
    say(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
