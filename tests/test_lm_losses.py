"""Token-level LM losses: the top-k-plus-tail divergences and the training objective on masked sequences."""

from __future__ import annotations

import pytest
import torch

from distill import losses
from distill.config import LMTrainConfig
from distill.lm.batch import make_batch
from distill.lm.train import TeacherTargets, lm_objective

TOPK_NAMES = ["forward_kl", "reverse_kl", "js", "gjsd", "skew_kl", "skew_reverse_kl", "tvd"]


def _topk(teacher_logits, k):
    lp = torch.log_softmax(teacher_logits, -1)
    values, idx = lp.topk(k, -1)
    tail = lp.scatter(-1, idx, float("-inf")).logsumexp(-1).exp() if k < lp.shape[-1] else torch.zeros(lp.shape[:-1])
    return idx, values, tail


@pytest.mark.parametrize("name", TOPK_NAMES)
def test_full_vocabulary_topk_is_the_full_divergence(name):
    s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    idx, lp, tail = _topk(t, 11)
    got = losses.topk_divergence(s, idx, lp, tail, divergence=name)
    assert got == pytest.approx(float(losses.DIVERGENCES[name](s, t)), abs=1e-5)


@pytest.mark.parametrize("name", TOPK_NAMES)
def test_topk_divergence_is_zero_for_the_teacher_itself(name):
    t = torch.randn(3, 4, 50)
    idx, lp, tail = _topk(t, 6)
    assert float(losses.topk_divergence(t.clone(), idx, lp, tail, divergence=name)) == pytest.approx(0, abs=1e-5)


@pytest.mark.parametrize("name", TOPK_NAMES)
def test_masked_positions_change_neither_loss_nor_gradient(name):
    torch.manual_seed(0)
    s, t = torch.randn(2, 6, 40), torch.randn(2, 6, 40)
    idx, lp, tail = _topk(t, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    results = []
    for garbage in (False, True):
        s2, lp2, tail2, idx2 = s.clone(), lp.clone(), tail.clone(), idx.clone()
        if garbage:  # padding / prompt positions hold anything, even NaN and invalid ids
            s2[~mask], lp2[~mask], tail2[~mask], idx2[~mask] = float("nan"), float("nan"), float("nan"), 10**6
        s2.requires_grad_(True)
        loss = losses.topk_divergence(s2, idx2, lp2.half(), tail2.half(), divergence=name, mask=mask)
        loss.backward()
        results.append((float(loss), s2.grad[mask].clone()))
        assert torch.isfinite(s2.grad).all() and (s2.grad[~mask] == 0).all()
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-6) and results[0][0] > 0
    torch.testing.assert_close(results[0][1], results[1][1])


def test_topk_divergence_refuses_bad_names_and_shapes():
    s = torch.randn(4, 10)
    idx, lp, tail = _topk(torch.randn(4, 10), 3)
    with pytest.raises(ValueError, match="unknown top-k divergence 'logit_mse'"):
        losses.topk_divergence(s, idx, lp, tail, divergence="logit_mse")
    with pytest.raises(ValueError, match="do not fit student logits"):
        losses.topk_divergence(s, idx[:2], lp[:2], tail[:2])


def test_zero_tail_is_floored_not_nan():
    s = torch.randn(2, 8, requires_grad=True)
    idx, lp, _ = _topk(torch.randn(2, 8), 3)
    loss = losses.topk_divergence(s, idx, lp, torch.zeros(2))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


# ---- the LM objective: only completion positions count ---------------------------------------

def _tiny_student(vocab=30):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64))


def _targets(batch, k=4, vocab=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = int(batch.target_mask.sum())
    t = torch.randn(n, vocab, generator=g) * 2
    idx, lp, tail = _topk(t, k)
    return TeacherTargets(idx, lp, tail), t


@pytest.mark.parametrize("mode", ["sequence", "token", "online"])
def test_objective_ignores_padding_and_prompt_tokens(mode):
    student = _tiny_student().eval()
    prompts, completions = [[1, 2, 3, 4], [5, 6]], [[7, 8, 9], [10, 11, 12, 13]]
    cfg = LMTrainConfig(mode=mode, loss="gjsd", alpha=0.5)
    teacher = _tiny_student() if mode == "online" else None
    if teacher is not None:
        torch.nn.init.normal_(teacher.lm_head.weight)
    values = []
    for extra, pad in ((0, 0), (5, 29)):
        batch = make_batch(prompts, completions, [0, 0], pad_id=pad, max_length=64, extra_padding=extra)
        targets, _ = _targets(batch)
        loss, parts = lm_objective(student, batch, cfg, targets, teacher)
        values.append(float(loss))
        assert loss.requires_grad
    assert values[0] == pytest.approx(values[1], abs=1e-5)
    # the prompt tokens are context, not targets: changing them changes the loss only through the context
    batch = make_batch(prompts, completions, [0, 0], 0, 64)
    assert batch.targets.tolist() == [7, 8, 9, 10, 11, 12, 13]


def test_rationale_weight_splits_the_terms():
    student = _tiny_student().eval()
    batch = make_batch([[1, 2], [3, 4]], [[5, 6, 7, 8], [9, 10, 11]], [2, 0], 0, 64)
    assert batch.rationale_mask[batch.target_mask].tolist() == [True, True, False, False, False, False, False]
    targets, _ = _targets(batch)
    cfg = LMTrainConfig(mode="token", alpha=1.0, rationale_weight=0.0)
    answer_only, _ = lm_objective(student, batch, cfg, targets)
    from distill.lm.batch import selected_logits

    logits = selected_logits(student, batch.input_ids, batch.attention_mask, batch.target_mask)
    answer = ~batch.rationale_mask[batch.target_mask]
    expected = losses.topk_divergence(logits, targets.indices, targets.logprobs, targets.tail, mask=answer)
    assert float(answer_only) == pytest.approx(float(expected), abs=1e-6)
    cfg2 = LMTrainConfig(mode="token", alpha=1.0, rationale_weight=0.5)
    both, _ = lm_objective(student, batch, cfg2, targets)
    rationale = losses.topk_divergence(logits, targets.indices, targets.logprobs, targets.tail, mask=~answer)
    assert float(both) == pytest.approx(float(expected + 0.5 * rationale), abs=1e-6)


def test_the_cache_cannot_see_reverse_kl_of_a_student_that_spreads_mass_over_the_tail():
    """Why token mode refuses reverse KL: a student that puts 10 % of its mass on tokens the teacher rules out
    is punished by the exact reverse KL, and the tail bucket merges those tokens away (benchmarks/lm_tail.py
    measures the same on the packaged teacher)."""
    import math

    torch.manual_seed(0)
    teacher = torch.randn(64, 2000) * 4  # peaked: a few likely tokens per position
    uniform = torch.full_like(teacher, -math.log(teacher.shape[-1]))
    student = torch.logaddexp(teacher.log_softmax(-1) + math.log(0.9), uniform + math.log(0.1))
    idx, lp, tail = _topk(teacher, 20)
    seen = {name: float(losses.topk_divergence(student, idx, lp, tail, divergence=name))
            / float(losses.DIVERGENCES[name](student, teacher)) for name in ("reverse_kl", "forward_kl", "tvd")}
    assert seen["reverse_kl"] < 0.3 < seen["forward_kl"], seen
    assert seen["tvd"] > 0.9, seen


@pytest.mark.parametrize("loss, options", [("reverse_kl", {}), ("gjsd", {"beta": 0.9})])
def test_token_mode_refuses_a_loss_the_cache_cannot_estimate_and_says_what_to_use(loss, options):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"cannot be estimated on the cached top-k.*forward_kl.*mode=online"
                                              r".*allow_tail_blind_loss"):
        LMTrainConfig(mode="token", loss=loss, **options)
    LMTrainConfig(mode="online", loss=loss, **options)  # the live teacher's whole distribution: fine
    LMTrainConfig(mode="token", loss=loss, allow_tail_blind_loss=True, **options)  # the user's informed choice
    LMTrainConfig(mode="token", loss="gjsd", beta=0.5)  # up to half reverse: kept
