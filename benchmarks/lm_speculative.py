"""Speculative decoding with a student as the teacher's draft: acceptance rate and tokens/s, CPU, batch 1.

    python benchmarks/lm_speculative.py --draft models/lm_student --draft models/lm_undistilled
    python benchmarks/lm_speculative.py --teacher path/to/causal-lm --draft random:2 --draft truncated:6 --k 2 --k 4

--teacher is a causal-LM folder (default: the packaged SmolLM2 teacher, converted once under
--cache-dir). Each --draft is a causal-LM folder sharing the teacher's tokenizer, or a reference
draft built in memory: ``random:N`` (an N-layer Llama with random weights: the floor) or
``truncated:N`` (the teacher's first N layers and its head, no training) or ``self`` (the teacher itself:
acceptance 1.0, the draft as dear as the teacher). Prompts come from
--prompts (one user request a line) or a few built-in home-automation requests, wrapped in the
teacher's chat template. Every speculative output is checked against the teacher's greedy output.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

REQUESTS = ["turn on the kitchen lights", "what is the weather like in Paris today", "set a timer for ten minutes",
            "lock the front door", "what time is it", "turn off the lights in the bedroom",
            "add milk to my shopping list", "is the garage door open"]
INSTRUCTION = "Name the smart-home intent of this request in one word, then explain briefly."


def chat_prompt(tokenizer, request: str) -> str:
    """The request as the model sees it: the chat template with a generation prompt, if it has one."""
    content = f"{INSTRUCTION}\n{request}"
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True)
    return content + "\n"


def random_draft(teacher, layers: int, seed: int = 0):
    """A Llama draft with random weights on the teacher's vocabulary: what an untrained draft gets."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from distill.lm.teacher import CausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=teacher.model.config.vocab_size, hidden_size=128, intermediate_size=256,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=teacher.model.config.max_position_embeddings,
                         tie_word_embeddings=True, eos_token_id=teacher.model.config.eos_token_id)
    return CausalLM(LlamaForCausalLM(config).eval(), teacher.tokenizer)


def truncated_draft(teacher, layers: int):
    """The teacher's embeddings, first ``layers`` blocks, final norm and head: a training-free draft."""
    from distill.lm.teacher import CausalLM

    model = copy.deepcopy(teacher.model)
    model.model.layers = model.model.layers[:layers]
    model.config.num_hidden_layers = layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:layers]
    return CausalLM(model.eval(), teacher.tokenizer)


def load_draft(spec: str, teacher):
    from distill.lm.teacher import load_causal_lm

    if spec == "self":
        return teacher
    kind, _, layers = spec.partition(":")
    if kind == "random" and layers.isdigit():
        return random_draft(teacher, int(layers))
    if kind == "truncated" and layers.isdigit():
        return truncated_draft(teacher, int(layers))
    return load_causal_lm(Path(spec))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, help="causal-LM folder (default: the packaged SmolLM2 teacher)")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/lm"), 
                        help="where the packaged teacher is converted")
    parser.add_argument("--draft", action="append", default=[],
                        help="folder, random:N, truncated:N or self (repeatable)")
    parser.add_argument("--prompts", type=Path, help="a text file with one user request a line")
    parser.add_argument("--limit", type=int, default=8, help="the most prompts")
    parser.add_argument("--k", type=int, action="append", help="draft tokens per teacher pass (repeatable; default 4)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from distill.lm.speculative import measure_speculative
    from distill.lm.teacher import load_causal_lm, packaged_teacher_folder

    console = Console(width=140)
    teacher = load_causal_lm(args.teacher or packaged_teacher_folder(args.cache_dir))
    requests = args.prompts.read_text().splitlines() if args.prompts else REQUESTS
    prompts = [chat_prompt(teacher.tokenizer, r) for r in requests if r.strip()][:args.limit]
    table = Table(title=f"speculative decoding, {len(prompts)} prompts, <= {args.max_new_tokens} new tokens, "
                        f"{args.threads} thread(s)")
    for column in ("draft", "draft params", "k", "acceptance", "tokens/teacher pass", "teacher tok/s",
                   "speculative tok/s", "speed-up", "identical"):
        table.add_column(column, justify="left" if column == "draft" else "right")
    for spec in args.draft or ["random:2", "truncated:6"]:
        draft = load_draft(spec, teacher)
        params = sum(p.numel() for p in draft.model.parameters())
        for k in args.k or [4]:
            console.print(f"[dim]{spec}, k={k} ...[/dim]")
            r = measure_speculative(teacher, draft, prompts, args.max_new_tokens, k, args.threads)
            table.add_row(spec, f"{params / 1e6:.1f}M", str(k), f"{r['acceptance_rate']:.3f}",
                          f"{r['tokens_per_teacher_call']:.2f}", f"{r['teacher_tokens_per_s']:.1f}",
                          f"{r['speculative_tokens_per_s']:.1f}", f"{r['speedup']:.2f}x", f"{r['identical_rate']:.2f}")
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
