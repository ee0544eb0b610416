"""LM evaluation and speculative decoding on tiny random Llama models and a word-level tokenizer, all offline."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from distill.lm.evaluate import (encode_pairs, evaluate_lm, generate_greedy, greedy_agreement, normalize_answer,
                                 perplexity, print_lm_table, score_text, task_accuracy, token_kl)
from distill.lm.speculative import greedy_decode, measure_speculative, speculative_decode
from distill.lm.teacher import CausalLM

WORDS = [f"w{i}" for i in range(120)] + ["HassTurnOn", "HassTurnOff", "turn", "on", "off", "the", "lights"]
EOS = 2


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[EOS]"] + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")


def make_llama(seed: int, vocab_size: int, layers: int = 2) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    # A wide initializer gives peaked next-token distributions: no near-ties for argmax to flip on.
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=48, intermediate_size=96, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         initializer_range=0.2, bos_token_id=None, eos_token_id=EOS, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def teacher(tokenizer) -> CausalLM:
    return CausalLM(make_llama(0, len(tokenizer)), tokenizer)


@pytest.fixture(scope="module")
def student(tokenizer) -> CausalLM:
    return CausalLM(make_llama(1, len(tokenizer), layers=1), tokenizer)


@pytest.fixture(scope="module")
def near_teacher(teacher) -> CausalLM:
    """The teacher with noise on its weights: agrees with it often, not always."""
    model = copy.deepcopy(teacher.model)
    torch.manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.005)  # about half the proposals accepted
    return CausalLM(model, teacher.tokenizer)


PROMPTS = [[5], [20, 3, 44, 90, 11, 12, 13], list(range(30, 52))]


def hf_greedy(model: nn.Module, prompt: list[int], new_tokens: int, eos: int | None) -> list[int]:
    out = model.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False, eos_token_id=eos,
                         pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_speculative_equals_teacher_greedy(teacher, student, near_teacher):
    # Every path: all accepted (the teacher as draft), none (a random draft), some (a perturbed teacher).
    for prompt in PROMPTS:
        reference = hf_greedy(teacher.model, prompt, 12, None)
        assert greedy_decode(teacher.model, prompt, 12, ()) == reference
        for draft, ks in ((teacher, (1, 5)), (student, (2,)), (near_teacher, (1, 3, 4))):
            for k in ks:
                result = speculative_decode(teacher.model, draft.model, prompt, 12, k=k, eos_token_id=())
                assert result.tokens == reference, (prompt, k)


def test_speculative_stops_at_eos_like_teacher(teacher, near_teacher):
    prompt = PROMPTS[2]
    free = greedy_decode(teacher.model, prompt, 12, ())
    stop = free[3]  # pretend this token is EOS: generation must end right after its first occurrence
    expected = free[:free.index(stop) + 1]
    assert 2 <= len(expected) <= 5  # EOS falls among the first round's proposals, not on a teacher pass
    assert hf_greedy(teacher.model, prompt, 12, stop) == expected
    for k in (2, 4):
        assert speculative_decode(teacher.model, near_teacher.model, prompt, 12, k, stop).tokens == expected
    assert speculative_decode(teacher.model, near_teacher.model, prompt, 1, 4, ()).tokens == free[:1]
    # The teacher as draft: every proposal accepted, and no pass wasted past EOS (5 tokens a pass after prefill).
    same = speculative_decode(teacher.model, teacher.model, prompt, 12, 4, stop)
    assert same.tokens == expected and same.accepted == same.proposed
    assert same.teacher_calls == 1 + math.ceil((len(expected) - 1) / 5)


def test_acceptance_rate(teacher, student, near_teacher):
    same = [speculative_decode(teacher.model, teacher.model, p, 16, k=4, eos_token_id=()) for p in PROMPTS]
    assert all(r.acceptance_rate == 1.0 for r in same)
    assert all(r.teacher_calls == 1 + 3 for r in same)  # prefill, then 5 tokens a pass: 1 + 5 + 5 + 5 = 16
    rand = [speculative_decode(teacher.model, student.model, p, 16, k=4, eos_token_id=()) for p in PROMPTS]
    assert sum(r.accepted for r in rand) / sum(r.proposed for r in rand) < 0.2
    assert all(r.teacher_calls == 16 for r in rand if r.accepted == 0)  # no help: one token a teacher pass
    near = [speculative_decode(teacher.model, near_teacher.model, p, 16, k=4, eos_token_id=()) for p in PROMPTS]
    near_rate = sum(r.accepted for r in near) / sum(r.proposed for r in near)
    assert 0.2 < near_rate < 1.0


def test_measure_speculative(teacher, near_teacher, tokenizer):
    prompts = ["w1 w2 w3", "turn on the lights", "w50"]
    report = measure_speculative(teacher, near_teacher, prompts, max_new_tokens=8, k=3, warmup=1)
    assert report["identical_rate"] == 1.0
    assert 0 < report["acceptance_rate"] <= 1 and report["teacher_tokens_per_s"] > 0
    other = CausalLM(near_teacher.model, make_tokenizer())
    other.tokenizer.add_tokens(["extra"])
    with pytest.raises(ValueError, match="different tokenizers"):
        measure_speculative(teacher, other, prompts)


class Bigram(nn.Module):
    """A stub causal LM whose next-token logits depend only on the current token: easy to compute by hand."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table)

    def forward(self, input_ids, attention_mask=None, **_):
        return SimpleNamespace(logits=self.table[input_ids])


def log_softmax_row(row: list[float], i: int) -> float:
    return row[i] - math.log(sum(math.exp(v) for v in row))


def test_perplexity_and_kl_by_hand(tokenizer):
    torch.manual_seed(0)
    p_table, q_table = torch.randn(len(tokenizer), len(tokenizer)), torch.randn(len(tokenizer), len(tokenizer))
    p, q = CausalLM(Bigram(p_table), tokenizer), CausalLM(Bigram(q_table), tokenizer)
    pair = ("w1 w2", "w3 w4")
    a, b, c = (tokenizer.convert_tokens_to_ids(w) for w in ("w2", "w3", "w4"))  # scored: w2 -> w3, w3 -> w4
    nll = -log_softmax_row(p_table[a].tolist(), b) - log_softmax_row(p_table[b].tolist(), c)
    assert perplexity(p, [pair]) == pytest.approx(math.exp(nll / 2), rel=1e-5)

    def kl(row_p: list[float], row_q: list[float]) -> float:
        return sum(math.exp(log_softmax_row(row_p, i)) * (log_softmax_row(row_p, i) - log_softmax_row(row_q, i))
                   for i in range(len(row_p)))

    by_hand = (kl(p_table[a].tolist(), q_table[a].tolist()) + kl(p_table[b].tolist(), q_table[b].tolist())) / 2
    assert token_kl(p, q, [pair]) == pytest.approx(by_hand, rel=1e-4)
    assert token_kl(p, CausalLM(Bigram(p_table.clone()), tokenizer), [pair]) == pytest.approx(0.0, abs=1e-6)


def test_prompt_and_padding_positions_do_not_count(tokenizer, teacher, student):
    torch.manual_seed(0)
    table = torch.randn(len(tokenizer), len(tokenizer))
    bigram = CausalLM(Bigram(table), tokenizer)
    # The bigram only sees the previous token: changing every prompt token but the last changes nothing.
    assert perplexity(bigram, [("w1 w2", "w3 w4")]) == pytest.approx(perplexity(bigram, [("w9 w7 w8 w2", "w3 w4")]))
    batch = encode_pairs(tokenizer, [("w1 w2", "w3 w4"), ("w5", "w6 w7 w8 w9 w10")])
    assert batch["completion_mask"].sum(1).tolist() == [2, 5]
    assert batch["completion_mask"][0].tolist() == [False, False, True, True, False, False]

    pairs = [("w1 w2", "w3 w4"), ("turn on the lights w5 w6 w7 w8 w9", "HassTurnOn w10"), ("w5", "w6 w7 w8")]
    candidates = {"teacher": teacher, "student": student}
    together = score_text(candidates, pairs, batch_size=3)
    alone = [score_text(candidates, [pair], batch_size=1) for pair in pairs]
    for name in candidates:
        n = [a[name]["completion_tokens"] for a in alone]
        assert together[name]["completion_tokens"] == sum(n) == 2 + 2 + 3
        for key in ("nll_per_token", "kl_from_teacher", "top1_agreement"):
            pooled = sum(a[name][key] * k for a, k in zip(alone, n)) / sum(n)
            assert together[name][key] == pytest.approx(pooled, rel=1e-5, abs=1e-6), (name, key)
    assert together["teacher"]["kl_from_teacher"] == pytest.approx(0.0, abs=1e-7)
    assert together["teacher"]["top1_agreement"] == 1.0
    assert together["student"]["kl_from_teacher"] > 0.1


def test_batched_generation_equals_batch_one(teacher, tokenizer):
    prompts = ["w1", "turn on the lights w3 w4 w5", "w7 w8"]
    batched = generate_greedy(teacher, prompts, 10, batch_size=3)
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    assert batched == [greedy_decode(teacher.model, x, 10, EOS) for x in ids]


def test_agreement_and_task_metric():
    figures = greedy_agreement([[1, 2, 3], [1, 9, 9, 9], []], [[1, 2, 3], [1, 2, 3, 4], [5]])
    assert figures == {"greedy_exact_match": pytest.approx(1 / 3), "greedy_prefix_agreement": pytest.approx(1.25 / 3)}
    assert normalize_answer("  \nHassTurnOn.\nbecause") == "hass turn on"
    assert normalize_answer("hass_turn_on") == "hass turn on"
    acc = task_accuracy(["HassTurnOn", "The intent is HassTurnOn!", "HassTurnOff", ""],
                        ["HassTurnOn", "HassTurnOn", "HassTurnOn", "HassTurnOn"])
    assert acc == {"task_exact": 0.25, "task_contains": 0.5}


def test_evaluate_lm_table(teacher, student, near_teacher):
    from rich.console import Console

    pairs = [("turn on the lights", "HassTurnOn"), ("w1 w2 w3", "w4 w5 w6"), ("w9", "off the lights")]
    result = evaluate_lm({"teacher": teacher, "student": near_teacher, "undistilled": student}, pairs,
                         references=["HassTurnOn", "HassTurnOff", "HassTurnOff"], max_new_tokens=6,
                         latency_samples=2, warmup=1, draft_k=3, lexicon={"violence": ["w4", "kill"]})
    m = result["metrics"]
    assert m["teacher"]["kl_from_teacher"] == pytest.approx(0.0, abs=1e-7)
    assert m["teacher"]["greedy_exact_match"] == 1.0 and m["teacher"]["speedup_vs_teacher"] == 1.0
    assert m["student"]["draft_acceptance_rate"] > m["undistilled"]["draft_acceptance_rate"]
    assert m["student"]["speculative_identical_rate"] == 1.0
    for name in m:
        assert m[name]["kl_from_teacher"] >= 0 and m[name]["perplexity"] > 1
        assert m[name]["ms_per_token"] > 0 and m[name]["peak_memory_mb"] > m[name]["weights_mb"] > 0
        assert 0 <= m[name]["task_exact"] <= m[name]["task_contains"] <= 1
        assert 0 <= m[name]["unsafe_rate"] <= 1 and len(result["generations"][name]) == 3
    console = Console(record=True, width=160)
    print_lm_table(result, console)
    text = console.export_text()
    assert "undistilled" in text and "draft acceptance rate" in text


def test_the_lm_table_lists_teacher_student_baseline_whatever_order_the_file_has():
    from rich.console import Console

    from distill.lm.evaluate import print_lm_table

    console = Console(record=True, width=200)
    figures = {name: {"perplexity": value} for name, value in (("baseline", 9.0), ("student", 4.0), ("teacher", 2.0))}
    print_lm_table({"metrics": figures}, console)  # metrics.json is written with sorted keys
    header = next(line for line in console.export_text().splitlines() if "figure" in line)
    assert header.index("teacher") < header.index("student") < header.index("baseline")
