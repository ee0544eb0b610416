"""How far below the exact divergence each LM loss falls when it is computed on the cached top-k plus tail.

    python benchmarks/lm_tail.py                  # the packaged SmolLM2 teacher, 16 prompts x 24 tokens
    python benchmarks/lm_tail.py --kept-mass 0.9 --json reports/lm_tail.json

Token-level LM distillation (``lm.train.mode: token``) compares the student with the teacher's cached
top-k plus one tail bucket holding the rest of the mass (``distill.losses.topk_divergence``). Merging
tokens into one bucket can only lower a divergence; how much depends on who puts mass in the tail. This
script measures it on the teacher's real next-token distributions: the packaged SmolLM2-135M-Instruct,
teacher-forced over its own greedy answers to a few requests. Each position keeps its most likely tokens
down to one probability threshold over all positions (the cache's water-filling), chosen so the mean kept
mass is ``--kept-mass`` (the default cache keeps 0.954, docs/llm.md). Three stand-in students, made from
the teacher so that the exact divergence is known and nonzero:

- **flatter** (the teacher's logits / 2): more mass in the tail than the teacher, like an early student;
- **spread** (90 % teacher + 10 % uniform over the vocabulary): mass on tokens the teacher rules out;
- **sharper** (the teacher's logits / 0.7): less mass in the tail than the teacher.

For every divergence of ``lm.train.loss`` it prints the exact value over the whole vocabulary, the value
on the cache, and their ratio (1 = the cache sees all of it). Runs on CPU in about a minute.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REQUESTS = ["turn on the lights in the kitchen", "what is the weather like tomorrow", "set a timer for ten minutes",
            "is the front door locked", "play some jazz in the living room", "turn off the bedroom fan",
            "what time is it in tokyo", "open the garage door please", "add milk to my shopping list",
            "how warm is it in the nursery", "dim the hallway lights to 30 percent", "lock the back door",
            "what's on my calendar today", "start the vacuum", "close the blinds in the office",
            "cancel my timer"]


def teacher_logits(prompts: int, tokens: int) -> torch.Tensor:
    """(N, V) logits of the packaged teacher at every position of its greedy answers."""
    from distill.lm.prompts import PromptTemplate, render_prompt
    from distill.lm.teacher import load_causal_lm, packaged_teacher_folder

    lm = load_causal_lm(packaged_teacher_folder(ROOT / ".cache" / "lm"))
    model, tokenizer = lm.model.eval(), lm.tokenizer
    rows = []
    with torch.inference_mode():
        for request in REQUESTS[:prompts]:
            text = render_prompt(tokenizer, PromptTemplate("You are a helpful smart-home assistant. Answer briefly."),
                                 request)
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
            out = model.generate(ids, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            logits = model(out).logits[0, ids.shape[1] - 1:-1]  # the positions that predicted the answer
            rows.append(logits.float())
    return torch.cat(rows)


def cache_of(logits: torch.Tensor, kept_mass: float) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per position, the teacher's top tokens down to one probability threshold over all positions (at least its
    top token), as (indices, log-probs, tail mass), the threshold chosen for a mean kept mass of ``kept_mass``."""
    probs = logits.softmax(-1)
    top = probs.max(-1).values
    low, high = 0.0, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        kept = torch.where(probs >= middle, probs, 0).sum(-1).maximum(top)
        low, high = (low, middle) if kept.mean() < kept_mass else (middle, high)
    rows = []
    for row, best in zip(probs, top):
        keep = torch.nonzero((row >= high) | (row == best)).squeeze(-1)
        rows.append((keep.unsqueeze(0), row[keep].log().unsqueeze(0), (1 - row[keep].sum()).clamp_min(0).view(1)))
    return rows


def students(teacher: torch.Tensor) -> dict[str, torch.Tensor]:
    uniform = torch.full_like(teacher, -math.log(teacher.shape[-1]))
    spread = torch.logaddexp(teacher.log_softmax(-1) + math.log(0.9), uniform + math.log(0.1))
    return {"flatter": teacher / 2, "spread": spread, "sharper": teacher / 0.7}


# every lm.train.loss at its default options, and gjsd across its beta (0 = forward KL, 1 = reverse KL)
LOSSES = [("forward_kl", "forward_kl", {}), ("reverse_kl", "reverse_kl", {}), ("js", "js", {}),
          ("skew_kl", "skew_kl", {"skew": 0.1}), ("skew_reverse_kl", "skew_reverse_kl", {"skew": 0.1}),
          ("tvd", "tvd", {})] + [(f"gjsd beta={b:g}", "gjsd", {"beta": b}) for b in (0.1, 0.25, 0.5, 0.75, 0.9)]


def measure(prompts: int, tokens: int, kept_mass: float) -> dict:
    from distill import losses

    teacher = teacher_logits(prompts, tokens)
    cache = cache_of(teacher, kept_mass)
    figures = {"positions": int(teacher.shape[0]), "vocabulary": int(teacher.shape[1]),
               "kept_mass": float(np.mean([1 - float(tail) for _, _, tail in cache])),
               "mean_kept_tokens": float(np.mean([idx.shape[-1] for idx, _, _ in cache])), "students": {}}
    for name, student in students(teacher).items():
        rows = {}
        for label, divergence, options in LOSSES:
            exact = float(losses.DIVERGENCES[divergence](student, teacher, **options))
            cached = float(np.mean([float(losses.topk_divergence(s.unsqueeze(0), idx, lp, tail, divergence=divergence,
                                                                 **options))
                                    for s, (idx, lp, tail) in zip(student, cache)]))
            rows[label] = {"exact": exact, "cached": cached, "ratio": cached / exact if exact else None}
        mass = student.softmax(-1)
        outside = float(np.mean([1 - float(m[idx[0]].sum()) for m, (idx, _, _) in zip(mass, cache)]))
        figures["students"][name] = {"tail_mass": outside, "divergences": rows}
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=16, help="requests the teacher answers (at most 16)")
    parser.add_argument("--tokens", type=int, default=24, help="greedy answer tokens per request")
    parser.add_argument("--kept-mass", type=float, default=0.954, help="mean teacher mass the cache keeps")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    np.random.seed(0)
    figures = measure(args.prompts, args.tokens, args.kept_mass)
    print(f"{figures['positions']} positions, vocabulary {figures['vocabulary']}; the cache keeps "
          f"{figures['kept_mass']:.3f} of the teacher's mass in {figures['mean_kept_tokens']:.1f} tokens per position")
    for name, student in figures["students"].items():
        print(f"\nstudent {name} (its mass outside the cached tokens: {student['tail_mass']:.3f})")
        print(f"  {'divergence':<18}{'exact':>10}{'cached':>10}{'cached/exact':>14}")
        for divergence, row in student["divergences"].items():
            ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}"
            print(f"  {divergence:<18}{row['exact']:>10.4f}{row['cached']:>10.4f}{ratio:>14}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
