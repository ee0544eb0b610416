"""Distillation losses as pure functions of tensors.

The trainer runs the forward passes and hands logits, hidden states, attention
maps or embeddings here, so cached teacher outputs and a live teacher share one
code path. Every function returns a scalar tensor.

One long file on purpose: every loss term side by side (each a short pure function), with the
table that maps the names in ``train.losses`` to them, so a reader compares the terms in one place.

Three families:

- response-based: divergences between softened output distributions (or raw
  logits), for classifier logits (B, K) and token-level LM logits (B, L, K);
- feature-based: hidden states, attention maps and [CLS] states, already
  projected to a common width by the caller (projections are trainable and live
  in the trainer);
- relation-based: pairwise distances, triplet angles and batch similarity
  matrices, which compare relations and so allow different widths.

Conventions of the response-based losses:

- ``mask`` is an optional bool (or 0/1 integer) tensor of the leading shape,
  (B,) or (B, L), True = keep. Masked positions are dropped before any math, so
  whatever they hold (even NaN) changes neither the loss nor the gradient.
- Reduction: sum over the class/vocab dim, then mean over the kept positions.
  For (B, K) with no mask this is ``reduction="batchmean"``.
- Temperature divergences soften both sides by ``temperature`` and multiply by
  ``temperature**2`` (Hinton's factor; ``temperature=1`` is neutral).
- If nothing is kept the result is a zero that is still connected to the
  student tensor, so ``backward()`` works and yields zero gradients.

Teacher tensors are cast to the student's dtype. Non-finite teacher values are
not checked here; the caller checks once before training.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

_EPS = 1e-8


# ---- validation and reduction helpers -------------------------------------------------------

def _check_same_shape(student: torch.Tensor, teacher: torch.Tensor, what: str = "logits") -> None:
    """Raise ValueError naming both shapes when student and teacher shapes differ."""
    if student.shape != teacher.shape:
        raise ValueError(f"student {what} shape {tuple(student.shape)} does not match "
                         f"teacher {what} shape {tuple(teacher.shape)}")


def _check_mask(mask: torch.Tensor, leading: torch.Size) -> torch.Tensor:
    """Return the mask as bool after checking it has the leading shape."""
    if mask.shape != leading:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the leading shape "
                         f"{tuple(leading)} of the inputs")
    return mask if mask.dtype == torch.bool else mask != 0


def _kept_rows(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None,
               what: str = "logits") -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten the leading dims and keep the rows the mask keeps: (N, K) each."""
    _check_same_shape(student, teacher, what)
    teacher = teacher.to(student.dtype)
    if mask is None:
        return student.reshape(-1, student.shape[-1]), teacher.reshape(-1, teacher.shape[-1])
    keep = _check_mask(mask, student.shape[:-1])
    return student[keep], teacher[keep]


def _mean_rows(per_row: torch.Tensor) -> torch.Tensor:
    """Mean of per-row losses (N,); a zero connected to the inputs when N == 0."""
    # The sum of an empty selection is 0 and keeps its grad_fn; mean() would give NaN.
    return per_row.sum() / max(per_row.numel(), 1)


def _zero_like_loss(x: torch.Tensor) -> torch.Tensor:
    """A scalar zero that carries a grad_fn back to ``x`` (when x requires grad)."""
    return x.sum() * 0.0


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _log_probs(student: torch.Tensor, teacher: torch.Tensor,
               temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Temperature-softened log-probabilities of the student and teacher rows."""
    _check_temperature(temperature)
    return F.log_softmax(student / temperature, dim=-1), F.log_softmax(teacher / temperature, dim=-1)


def _kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row from log-probabilities (N, K) -> (N,)."""
    return F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)


def _log_mixture(log_p: torch.Tensor, log_q: torch.Tensor, weight_p: float) -> torch.Tensor:
    """log(weight_p * p + (1 - weight_p) * q), computed with logsumexp; 0 < weight_p < 1."""
    return torch.logsumexp(torch.stack([log_p + math.log(weight_p),
                                        log_q + math.log(1.0 - weight_p)]), dim=0)


# ---- response-based ---------------------------------------------------------------------------

def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """Forward KL(p_teacher || p_student) at a temperature, times T^2 (Hinton et al. 2015).

    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network" (2015).
    Mode-covering: the student is pushed to put mass wherever the teacher does.

    Args:
        student_logits: (B, K) or (B, L, K).
        teacher_logits: same shape as ``student_logits``.
        temperature: softens both sides; the result is multiplied by temperature**2.
        mask: optional bool (B,) or (B, L), True = keep.

    Returns:
        Scalar: sum over K, mean over kept positions (``batchmean`` for (B, K) unmasked).
    """
    s, t = _kept_rows(student_logits, teacher_logits, mask)
    log_ps, log_pt = _log_probs(s, t, temperature)
    return _mean_rows(_kl_rows(log_pt, log_ps)) * temperature ** 2


def kd_kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kd_temperature: float,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened distributions, times T^2 (Hinton et al. 2015).

    The T^2 factor keeps the gradient scale of the soft term comparable across
    temperatures. This is :func:`forward_kl` under the name the trainer uses;
    shapes, mask and reduction are the same: (B, K) or (B, L, K), sum over K,
    mean over kept positions ("batchmean" for (B, K) without a mask).
    """
    return forward_kl(student_logits, teacher_logits, temperature=kd_temperature, mask=mask)


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """Reverse KL(p_student || p_teacher) at a temperature, times T^2.

    Gu et al., "MiniLLM: Knowledge Distillation of Large Language Models" (ICLR 2024).
    Mode-seeking: the student may ignore low-probability teacher modes.

    Args:
        student_logits: (B, K) or (B, L, K).
        teacher_logits: same shape as ``student_logits``.
        temperature: softens both sides; the result is multiplied by temperature**2.
        mask: optional bool (B,) or (B, L), True = keep.

    Returns:
        Scalar: sum over K, mean over kept positions.
    """
    s, t = _kept_rows(student_logits, teacher_logits, mask)
    log_ps, log_pt = _log_probs(s, t, temperature)
    return _mean_rows(_kl_rows(log_ps, log_pt)) * temperature ** 2


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 0.5,
                    temperature: float = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Generalized Jensen-Shannon divergence of GKD, times T^2.

    Agarwal et al., "On-Policy Distillation of Language Models: Learning from
    Self-Generated Mistakes" (ICLR 2024); same convention as TRL's
    ``generalized_jsd_loss``: M = beta * p_teacher + (1 - beta) * p_student and
    loss = beta * KL(p_teacher || M) + (1 - beta) * KL(p_student || M), with the
    mixture computed in log space. The formula tends to 0 at both ends, so
    beta == 0 and beta == 1 are special-cased, as in TRL: beta == 0 is exactly
    forward KL(p_teacher || p_student), beta == 1 exactly reverse
    KL(p_student || p_teacher). beta == 0.5 is the symmetric JSD.

    Args:
        student_logits: (B, K) or (B, L, K).
        teacher_logits: same shape as ``student_logits``.
        beta: in [0, 1]; otherwise ValueError.
        temperature: softens both sides; the result is multiplied by temperature**2.
        mask: optional bool (B,) or (B, L), True = keep.

    Returns:
        Scalar: sum over K, mean over kept positions.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return forward_kl(student_logits, teacher_logits, temperature=temperature, mask=mask)
    if beta == 1.0:
        return reverse_kl(student_logits, teacher_logits, temperature=temperature, mask=mask)
    s, t = _kept_rows(student_logits, teacher_logits, mask)
    log_ps, log_pt = _log_probs(s, t, temperature)
    log_m = _log_mixture(log_pt, log_ps, beta)
    per_row = beta * _kl_rows(log_pt, log_m) + (1.0 - beta) * _kl_rows(log_ps, log_m)
    return _mean_rows(per_row) * temperature ** 2


def js_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric Jensen-Shannon divergence with the 0.5/0.5 mixture, times T^2.

    Lin, "Divergence Measures Based on the Shannon Entropy" (IEEE Trans. Inf.
    Theory, 1991); used for distillation as GKD's beta = 0.5 (Agarwal et al. 2024).
    JSD = 0.5 * KL(p_t || M) + 0.5 * KL(p_s || M), M = (p_t + p_s) / 2; bounded by ln 2.

    Args:
        student_logits: (B, K) or (B, L, K).
        teacher_logits: same shape as ``student_logits``.
        temperature: softens both sides; the result is multiplied by temperature**2.
        mask: optional bool (B,) or (B, L), True = keep.

    Returns:
        Scalar: sum over K, mean over kept positions.
    """
    return generalized_jsd(student_logits, teacher_logits, beta=0.5, temperature=temperature, mask=mask)


def skew_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, skew: float = 0.1,
            temperature: float = 1.0, mask: torch.Tensor | None = None, reverse: bool = False) -> torch.Tensor:
    """Skew KL or skew reverse KL of DistiLLM, times T^2.

    Ko et al., "DistiLLM: Towards Streamlined Distillation for Large Language
    Models" (ICML 2024). Forward: KL(p_t || skew * p_t + (1 - skew) * p_s).
    ``reverse=True``: KL(p_s || skew * p_s + (1 - skew) * p_t). Skewing keeps the
    second argument away from zero, which bounds the gradients. skew == 0 is
    exactly forward (or reverse) KL.

    Args:
        student_logits: (B, K) or (B, L, K).
        teacher_logits: same shape as ``student_logits``.
        skew: in [0, 1); otherwise ValueError.
        temperature: softens both sides; the result is multiplied by temperature**2.
        mask: optional bool (B,) or (B, L), True = keep.
        reverse: the skew reverse KL instead of the skew forward KL.

    Returns:
        Scalar: sum over K, mean over kept positions.
    """
    if not 0.0 <= skew < 1.0:
        raise ValueError(f"skew must be in [0, 1), got {skew}")
    if skew == 0.0:
        plain = reverse_kl if reverse else forward_kl
        return plain(student_logits, teacher_logits, temperature=temperature, mask=mask)
    s, t = _kept_rows(student_logits, teacher_logits, mask)
    log_ps, log_pt = _log_probs(s, t, temperature)
    log_p, log_other = (log_ps, log_pt) if reverse else (log_pt, log_ps)
    per_row = _kl_rows(log_p, _log_mixture(log_p, log_other, skew))
    return _mean_rows(per_row) * temperature ** 2


def total_variation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """Total variation distance 0.5 * sum |p_s - p_t| at a temperature, times T^2.

    Wen et al., "f-Divergence Minimization for Sequence-Level Knowledge
    Distillation" (ACL 2023). Symmetric and bounded by 1 (before the T^2 factor).
    The T^2 factor is applied for uniformity with the other divergences; TVD
    itself shrinks like 1/T rather than 1/T^2, so at large T the factor
    over-compensates and temperature=1 is the natural choice.

    Args:
        student_logits: (B, K) or (B, L, K).
        teacher_logits: same shape as ``student_logits``.
        temperature: softens both sides; the result is multiplied by temperature**2.
        mask: optional bool (B,) or (B, L), True = keep.

    Returns:
        Scalar: sum over K, mean over kept positions.
    """
    s, t = _kept_rows(student_logits, teacher_logits, mask)
    _check_temperature(temperature)
    p_s, p_t = F.softmax(s / temperature, dim=-1), F.softmax(t / temperature, dim=-1)
    return _mean_rows(0.5 * (p_s - p_t).abs().sum(-1)) * temperature ** 2


def logit_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error between raw logits (no temperature).

    Ba & Caruana, "Do Deep Nets Really Need to be Deep?" (NeurIPS 2014); Kim et
    al., "Comparing Kullback-Leibler Divergence and Mean Squared Error Loss in
    Knowledge Distillation" (IJCAI 2021).

    Args:
        student_logits: (B, K) or (B, L, K).
        teacher_logits: same shape as ``student_logits``.
        mask: optional bool (B,) or (B, L), True = keep.

    Returns:
        Scalar: mean over K, then mean over kept positions.
    """
    s, t = _kept_rows(student_logits, teacher_logits, mask)
    return _mean_rows((s - t).pow(2).mean(-1))


def cross_entropy(student_logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Hard-label cross-entropy over the positions whose label is not ``ignore_index``.

    The hard-label term of Hinton et al. (2015). Unlike ``F.cross_entropy`` it
    returns a zero (connected to ``student_logits``) instead of NaN when every
    label is ignored, e.g. a batch of teacher-labelled transfer rows.

    Args:
        student_logits: (B, K) or (B, L, K) (shift LM labels before calling).
        labels: integer (B,) or (B, L), the leading shape of ``student_logits``.
        ignore_index: label value that marks a position without a gold label.

    Returns:
        Scalar: mean over the labelled positions.
    """
    if labels.shape != student_logits.shape[:-1]:
        raise ValueError(f"labels shape {tuple(labels.shape)} does not match the leading shape "
                         f"{tuple(student_logits.shape[:-1])} of student logits {tuple(student_logits.shape)}")
    has_gold = labels != ignore_index
    if not has_gold.any():
        return _zero_like_loss(student_logits[has_gold])
    return F.cross_entropy(student_logits[has_gold], labels[has_gold])


def hinton_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor,
                kd_temperature: float, alpha: float, ignore_index: int = -100) -> torch.Tensor:
    """alpha * KD term + (1 - alpha) * cross-entropy on the rows that have a gold label.

    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network" (2015).
    ``labels`` holds ``ignore_index`` where no gold label exists (teacher-labelled
    transfer rows). With no teacher logits, or alpha = 0, this is plain cross-entropy.
    Shapes: logits (B, K), labels (B,); the KD term is "batchmean" over all rows.
    """
    hard = cross_entropy(student_logits, labels, ignore_index=ignore_index)
    if teacher_logits is None or alpha == 0:
        return hard
    soft = kd_kl_loss(student_logits, teacher_logits, kd_temperature)
    return alpha * soft + (1 - alpha) * hard


# ---- the divergence registry: uniform signature (s, t, *, temperature, mask, **options) -------

def _kl(student_logits, teacher_logits, *, temperature=1.0, mask=None):
    return kd_kl_loss(student_logits, teacher_logits, temperature, mask=mask)


def _forward_kl(student_logits, teacher_logits, *, temperature=1.0, mask=None):
    return forward_kl(student_logits, teacher_logits, temperature=temperature, mask=mask)


def _reverse_kl(student_logits, teacher_logits, *, temperature=1.0, mask=None):
    return reverse_kl(student_logits, teacher_logits, temperature=temperature, mask=mask)


def _js(student_logits, teacher_logits, *, temperature=1.0, mask=None):
    return js_divergence(student_logits, teacher_logits, temperature=temperature, mask=mask)


def _gjsd(student_logits, teacher_logits, *, temperature=1.0, mask=None, beta=0.5):
    return generalized_jsd(student_logits, teacher_logits, beta=beta, temperature=temperature, mask=mask)


def _skew_kl(student_logits, teacher_logits, *, temperature=1.0, mask=None, skew=0.1):
    return skew_kl(student_logits, teacher_logits, skew=skew, temperature=temperature, mask=mask)


def _skew_reverse_kl(student_logits, teacher_logits, *, temperature=1.0, mask=None, skew=0.1):
    return skew_kl(student_logits, teacher_logits, skew=skew, temperature=temperature, mask=mask, reverse=True)


def _tvd(student_logits, teacher_logits, *, temperature=1.0, mask=None):
    return total_variation(student_logits, teacher_logits, temperature=temperature, mask=mask)


def _logit_mse(student_logits, teacher_logits, *, temperature=1.0, mask=None):
    # Raw logits: the temperature is accepted for the uniform signature and ignored.
    return logit_mse(student_logits, teacher_logits, mask=mask)


# Options: beta for "gjsd", skew for the skew variants; an option a divergence does
# not take raises TypeError, so a misspelt config key fails loudly.
DIVERGENCES: dict[str, Callable[..., torch.Tensor]] = {
    "kl": _kl,
    "forward_kl": _forward_kl,
    "reverse_kl": _reverse_kl,
    "js": _js,
    "gjsd": _gjsd,
    "skew_kl": _skew_kl,
    "skew_reverse_kl": _skew_reverse_kl,
    "tvd": _tvd,
    "logit_mse": _logit_mse,
}


# ---- token-level LM distillation on a cached top-k -------------------------------------------

TAIL_FLOOR = 1e-8  # a teacher tail mass of 0 would put log(0) into the KL; floor it instead


def topk_tail_buckets(student_logits: torch.Tensor, teacher_indices: torch.Tensor, teacher_logprobs: torch.Tensor,
                      teacher_tail: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sides over the teacher's top-k tokens plus one tail bucket: (N, k + 1) log-probabilities each.

    The student's row is its full-vocabulary distribution regrouped: its log-probability of each of
    the teacher's top-k tokens, then the log of its mass on every other token (a logsumexp over the
    rest, exact even when that mass is tiny). The teacher's row is its cached top-k log-probabilities
    and the log of its leftover mass (floored at 1e-8); low-precision rounding leaves it close to,
    not exactly, normalised, and the divergences renormalise both rows with a log-softmax.

    Args:
        student_logits: (N, V).
        teacher_indices: (N, k) integer token ids.
        teacher_logprobs: (N, k) teacher log-probabilities of those tokens (any float dtype).
        teacher_tail: (N,) the teacher's probability mass outside its top k.
    """
    log_ps = F.log_softmax(student_logits, dim=-1)
    idx = teacher_indices.long()
    top = log_ps.gather(-1, idx)
    if idx.shape[-1] >= log_ps.shape[-1]:
        rest = torch.full_like(top[:, :1], math.log(TAIL_FLOOR))
    else:
        rest = log_ps.scatter(-1, idx, float("-inf")).logsumexp(-1, keepdim=True)
    teacher = torch.cat([teacher_logprobs.to(log_ps.dtype),
                         teacher_tail.to(log_ps.dtype).clamp_min(TAIL_FLOOR).log().unsqueeze(-1)], dim=-1)
    return torch.cat([top, rest], dim=-1), teacher


def topk_divergence(student_logits: torch.Tensor, teacher_indices: torch.Tensor, teacher_logprobs: torch.Tensor,
                    teacher_tail: torch.Tensor, *, divergence: str = "forward_kl", temperature: float = 1.0,
                    mask: torch.Tensor | None = None, **options) -> torch.Tensor:
    """A divergence of :data:`DIVERGENCES` between student logits and a cached teacher top-k plus tail.

    Token-level KD on a compact teacher cache (top-k ids, their log-probabilities and the leftover
    mass per position): both distributions are regrouped into the teacher's k tokens plus one tail
    bucket (:func:`topk_tail_buckets`) and compared there. With the whole vocabulary as the top-k
    this is the full-distribution divergence. ``temperature`` softens the k + 1 buckets (for the tail
    bucket that is not the same as softening the full distribution; 1 is exact).

    Args:
        student_logits: (B, L, V) or (N, V).
        teacher_indices: (B, L, k) or (N, k) integer token ids.
        teacher_logprobs: same shape as ``teacher_indices``.
        teacher_tail: (B, L) or (N,).
        divergence: a name in DIVERGENCES except ``logit_mse`` (log-probabilities are not logits).
        temperature: softens both sides; the result is multiplied by temperature**2.
        mask: optional bool (B, L) or (N,), True = keep; masked positions (padding, prompt) are
            dropped before any math, so whatever they hold changes neither the loss nor the gradient.
        **options: ``beta`` for gjsd, ``skew`` for the skew variants.

    Returns:
        Scalar: sum over the k + 1 buckets, mean over kept positions.
    """
    if divergence not in DIVERGENCES or divergence == "logit_mse":
        raise ValueError(f"unknown top-k divergence {divergence!r}; choose from "
                         f"{', '.join(n for n in DIVERGENCES if n != 'logit_mse')}")
    leading = student_logits.shape[:-1]
    if teacher_indices.shape != teacher_logprobs.shape or teacher_indices.shape[:-1] != leading \
            or teacher_tail.shape != leading:
        raise ValueError(f"teacher top-k shapes: indices {tuple(teacher_indices.shape)}, log-probs "
                         f"{tuple(teacher_logprobs.shape)}, tail {tuple(teacher_tail.shape)} do not fit student "
                         f"logits {tuple(student_logits.shape)}")
    s = student_logits.reshape(-1, student_logits.shape[-1])
    idx, lp, tail = (teacher_indices.reshape(-1, teacher_indices.shape[-1]),
                     teacher_logprobs.reshape(-1, teacher_logprobs.shape[-1]), teacher_tail.reshape(-1))
    if mask is not None:
        keep = _check_mask(mask, leading).reshape(-1)
        s, idx, lp, tail = s[keep], idx[keep], lp[keep], tail[keep]
    student_buckets, teacher_buckets = topk_tail_buckets(s, idx, lp, tail)
    return DIVERGENCES[divergence](student_buckets, teacher_buckets, temperature=temperature, **options)


# ---- feature-based ----------------------------------------------------------------------------

def hidden_mse(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error between hidden states (FitNets-style hints).

    Romero et al., "FitNets: Hints for Thin Deep Nets" (ICLR 2015); Jiao et al.,
    "TinyBERT: Distilling BERT for Natural Language Understanding" (2020).

    Args:
        student_hidden: (B, L, D), already projected to the teacher's width.
        teacher_hidden: (B, L, D).
        mask: optional bool (B, L), True = keep the token.

    Returns:
        Scalar: mean over D, then mean over kept tokens.
    """
    s, t = _kept_rows(student_hidden, teacher_hidden, mask, what="hidden")
    return _mean_rows((s - t).pow(2).mean(-1))


def hidden_cosine(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine embedding loss 1 - cos(s, t) between hidden states.

    Sanh et al., "DistilBERT, a distilled version of BERT: smaller, faster,
    cheaper and lighter" (2019): the cosine term that aligns hidden-state directions.

    Args:
        student_hidden: (B, L, D), already projected to the teacher's width.
        teacher_hidden: (B, L, D).
        mask: optional bool (B, L), True = keep the token.

    Returns:
        Scalar in [0, 2]: mean over kept tokens.
    """
    s, t = _kept_rows(student_hidden, teacher_hidden, mask, what="hidden")
    return _mean_rows(1.0 - F.cosine_similarity(s, t, dim=-1, eps=_EPS))


def _attention_rows(student_attn: torch.Tensor, teacher_attn: torch.Tensor,
                    mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Check shapes, average heads when counts differ, keep query rows: (N, H, Lk) each."""
    if student_attn.dim() != 4 or teacher_attn.dim() != 4 or (
            student_attn.shape[0], *student_attn.shape[2:]) != (teacher_attn.shape[0], *teacher_attn.shape[2:]):
        raise ValueError(f"student attention shape {tuple(student_attn.shape)} and teacher attention shape "
                         f"{tuple(teacher_attn.shape)} must be (B, H, Lq, Lk) with equal B, Lq, Lk")
    teacher_attn = teacher_attn.to(student_attn.dtype)
    if student_attn.shape[1] != teacher_attn.shape[1]:
        student_attn, teacher_attn = student_attn.mean(1, keepdim=True), teacher_attn.mean(1, keepdim=True)
    s, t = student_attn.transpose(1, 2), teacher_attn.transpose(1, 2)  # (B, Lq, H, Lk)
    if mask is None:
        return s.flatten(0, 1), t.flatten(0, 1)
    keep = _check_mask(mask, s.shape[:2])
    return s[keep], t[keep]


def attention_transfer(student_attn: torch.Tensor, teacher_attn: torch.Tensor,
                       mask: torch.Tensor | None = None, kind: str = "kl") -> torch.Tensor:
    """Self-attention transfer between attention probability maps.

    kind "kl": Wang et al., "MiniLM: Deep Self-Attention Distillation for
    Task-Agnostic Compression of Pre-Trained Transformers" (NeurIPS 2020),
    KL(teacher row || student row). kind "mse": Jiao et al., "TinyBERT" (2020).
    When head counts differ, both sides are first averaged over heads.

    Args:
        student_attn: (B, Hs, L, L) attention probabilities (rows sum to 1).
        teacher_attn: (B, Ht, L, L).
        mask: optional bool (B, L) over query rows, True = keep.
        kind: "kl" (sum over keys, probabilities clamped at 1e-8 before the log)
            or "mse" (mean over keys); otherwise ValueError.

    Returns:
        Scalar: mean over heads, then over kept query rows.
    """
    if kind not in ("kl", "mse"):
        raise ValueError(f"unknown attention transfer kind {kind!r}; expected 'kl' or 'mse'")
    s, t = _attention_rows(student_attn, teacher_attn, mask)
    if kind == "kl":
        per_head = (t * (t.clamp_min(_EPS).log() - s.clamp_min(_EPS).log())).sum(-1)
    else:
        per_head = (s - t).pow(2).mean(-1)
    return _mean_rows(per_head.mean(-1))


def pkd_loss(student_states: Sequence[torch.Tensor] | torch.Tensor,
             teacher_states: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """Patient KD loss between normalised [CLS] states of matched layers.

    Sun et al., "Patient Knowledge Distillation for BERT Model Compression"
    (EMNLP 2019): || s / ||s|| - t / ||t|| ||^2 for each matched layer pair.

    Args:
        student_states: list of (B, D) tensors, or a stacked (P, B, D) tensor.
        teacher_states: the same number of pairs, each the same shape as the student's.

    Returns:
        Scalar: sum over D, mean over the batch, mean over layer pairs.
    """
    students, teachers = list(student_states), list(teacher_states)
    if len(students) != len(teachers) or not students:
        raise ValueError(f"need the same, non-zero number of student and teacher layers, "
                         f"got {len(students)} and {len(teachers)}")
    losses = []
    for s, t in zip(students, teachers):
        _check_same_shape(s, t, what="[CLS] state")
        diff = F.normalize(s, dim=-1, eps=_EPS) - F.normalize(t.to(s.dtype), dim=-1, eps=_EPS)
        losses.append(diff.pow(2).sum(-1).mean())
    return torch.stack(losses).mean()


# ---- relation-based ---------------------------------------------------------------------------

def _check_batches(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.dim() < 2 or teacher.dim() < 2 or student.shape[0] != teacher.shape[0]:
        raise ValueError(f"student shape {tuple(student.shape)} and teacher shape {tuple(teacher.shape)} "
                         f"must be (B, ...) with the same batch size B")


def _pair_distances(emb: torch.Tensor) -> torch.Tensor:
    """Euclidean distances of the distinct pairs i < j of (B, D) -> (B*(B-1)/2,)."""
    sq = emb.pow(2).sum(-1)
    d2 = sq.unsqueeze(0) + sq.unsqueeze(1) - 2.0 * emb @ emb.t()
    i, j = torch.triu_indices(len(emb), len(emb), offset=1, device=emb.device)
    # Clamp before sqrt: equal rows would give a zero distance with an infinite gradient.
    return d2[i, j].clamp_min(1e-12).sqrt()


def rkd_distance(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    """Distance-wise relational KD loss.

    Park et al., "Relational Knowledge Distillation" (CVPR 2019). Pairwise
    distances on each side are divided by their mean over distinct pairs (so the
    loss ignores a uniform scale of either side); Huber (smooth L1) between them.
    The teacher side is computed under no_grad.

    Args:
        student_emb: (B, Ds); extra dims are flattened per example.
        teacher_emb: (B, Dt); widths may differ.

    Returns:
        Scalar: mean over distinct pairs; a zero with grad when B < 2.
    """
    _check_batches(student_emb, teacher_emb)
    if len(student_emb) < 2:
        return _zero_like_loss(student_emb)
    s = student_emb.flatten(1)
    with torch.no_grad():
        t_d = _pair_distances(teacher_emb.flatten(1).to(s.dtype))
        t_d = t_d / t_d.mean().clamp_min(_EPS)
    s_d = _pair_distances(s)
    s_d = s_d / s_d.mean().clamp_min(_EPS)
    return F.smooth_l1_loss(s_d, t_d)


def _triplet_cosines(emb: torch.Tensor) -> torch.Tensor:
    """cos of the angle at i between e_j - e_i and e_k - e_i, for distinct i, j, k."""
    n = len(emb)
    diff = F.normalize(emb.unsqueeze(0) - emb.unsqueeze(1), dim=-1, eps=_EPS)  # [i, j] = e_j - e_i
    cos = diff @ diff.transpose(1, 2)  # (B, B, B): [i, j, k]
    eye = torch.eye(n, dtype=torch.bool, device=emb.device)
    distinct = ~(eye.unsqueeze(2) | eye.unsqueeze(1) | eye.unsqueeze(0))
    return cos[distinct]


def rkd_angle(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    """Angle-wise relational KD loss.

    Park et al., "Relational Knowledge Distillation" (CVPR 2019): cosines of
    the angles formed by triplets of embeddings (normalised difference vectors),
    Huber (smooth L1) between student and teacher. Invariant to translation and
    scale. Unlike the reference code, degenerate triplets (repeated indices) are
    left out of the mean. The teacher side is computed under no_grad.

    Args:
        student_emb: (B, Ds); extra dims are flattened per example.
        teacher_emb: (B, Dt); widths may differ.

    Returns:
        Scalar: mean over ordered triplets of distinct examples; a zero with grad when B < 3.
    """
    _check_batches(student_emb, teacher_emb)
    if len(student_emb) < 3:
        return _zero_like_loss(student_emb)
    s = student_emb.flatten(1)
    with torch.no_grad():
        t_cos = _triplet_cosines(teacher_emb.flatten(1).to(s.dtype))
    return F.smooth_l1_loss(_triplet_cosines(s), t_cos)


def similarity_preserving(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving KD loss.

    Tung & Mori, "Similarity-Preserving Knowledge Distillation" (ICCV 2019):
    G = F F^T of per-example flattened features, rows L2-normalised,
    loss = ||G_s - G_t||_F^2 / B^2. The teacher side is computed under no_grad.

    Args:
        student_feat: (B, ...) student features, flattened per example.
        teacher_feat: (B, ...) teacher features; widths may differ.

    Returns:
        Scalar; a zero with grad when B < 2.
    """
    _check_batches(student_feat, teacher_feat)
    n = len(student_feat)
    if n < 2:
        return _zero_like_loss(student_feat)
    s = student_feat.flatten(1)
    with torch.no_grad():
        t = teacher_feat.flatten(1).to(s.dtype)
        g_t = F.normalize(t @ t.t(), dim=1, eps=_EPS)
    g_s = F.normalize(s @ s.t(), dim=1, eps=_EPS)
    return (g_s - g_t).pow(2).sum() / (n * n)
