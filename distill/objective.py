"""The training objective: configured loss terms, their layer maps and projections.

The loss functions themselves live in ``distill.losses`` and take tensors. This
module decides which tensors each term gets (which student layer meets which
teacher layer, through which learned projection) and sums the terms:

    loss = alpha * sum(weight_i * term_i) + (1 - alpha) * cross-entropy on gold rows

Everything a configuration can get wrong (unknown layers, a layer map past the
model's depth, token-level terms across different tokenizers, teacher outputs
over another label set) is refused when the objective is built, before training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from distill import losses as L
from distill.config import RELATION_LOSSES, RESPONSE_LOSSES, TOKEN_FEATURE_LOSSES, LossTerm


class ObjectiveError(ValueError):
    """The configured loss terms do not fit the student and teacher."""


def layer_pairs(term: LossTerm, n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """(student, teacher) layer pairs of a feature term, counting layers from 1 (0 = embeddings).

    ``uniform`` pairs student layer i with teacher layer round(i * n_teacher / n_student);
    ``last`` pairs the last ``k`` layers of each; a list is taken as given and checked.
    Attention maps exist for layers 1..n only.
    """
    lowest = 1 if term.name == "attention" else 0
    if term.layers == "uniform":
        pairs = [(i, max(1, round(i * n_teacher / n_student))) for i in range(1, n_student + 1)]
    elif term.layers == "last":
        if term.k > min(n_student, n_teacher):
            raise ObjectiveError(f"loss {term.name}: layers 'last' with k={term.k} needs k <= the shallower "
                                 f"model's depth ({min(n_student, n_teacher)} layers)")
        pairs = [(n_student - j, n_teacher - j) for j in reversed(range(term.k))]
    else:
        pairs = [tuple(pair) for pair in term.layers]
        for s, t in pairs:
            if not lowest <= s <= n_student:
                raise ObjectiveError(f"loss {term.name}: layer map pair [{s}, {t}] points past the student's "
                                     f"depth ({n_student} layers, numbered {lowest}..{n_student})")
            if not lowest <= t <= n_teacher:
                raise ObjectiveError(f"loss {term.name}: layer map pair [{s}, {t}] points past the teacher's "
                                     f"depth ({n_teacher} layers, numbered {lowest}..{n_teacher})")
        if not pairs:
            raise ObjectiveError(f"loss {term.name}: the layer map is empty")
    return pairs


@dataclass
class ModelShape:
    """What the objective needs to know of a model."""

    num_layers: int
    hidden_size: int
    num_labels: int

    @classmethod
    def of(cls, model: nn.Module) -> "ModelShape":
        config = model.config
        return cls(config.num_hidden_layers, config.hidden_size, config.num_labels)


class Objective(nn.Module):
    """Configured loss terms with their learned projections (trained beside the student, not saved)."""

    def __init__(self, terms: list[LossTerm], temperature: float, alpha: float, student: ModelShape,
                 teacher: ModelShape | None = None, same_tokenizer: bool = True):
        super().__init__()
        self.terms, self.temperature, self.alpha = list(terms), temperature, alpha
        self.pairs: dict[int, list[tuple[int, int]]] = {}
        self.projections = nn.ModuleDict()
        if alpha == 0:
            return  # cross-entropy only: the undistilled baseline
        if teacher is not None and teacher.num_labels != student.num_labels:
            raise ObjectiveError(f"the teacher predicts {teacher.num_labels} labels but the student "
                                 f"{student.num_labels}; logit losses need the same label set")
        for i, term in enumerate(self.terms):
            if term.family == "response":
                continue
            if teacher is None:
                raise ObjectiveError(f"loss {term.name} needs the teacher model in the training step")
            if term.name in TOKEN_FEATURE_LOSSES and not same_tokenizer:
                raise ObjectiveError(
                    f"loss {term.name} compares token positions, so the student must share the teacher's "
                    "tokenizer; drop student.vocab_size / student.path, or use pkd or a relation loss")
            if term.name in RELATION_LOSSES:
                continue
            self.pairs[i] = layer_pairs(term, student.num_layers, teacher.num_layers)
            if term.name in ("hidden_mse", "hidden_cosine", "pkd") and student.hidden_size != teacher.hidden_size:
                # FitNets: a learned linear regressor from student to teacher width per matched layer
                self.projections[str(i)] = nn.ModuleList(
                    nn.Linear(student.hidden_size, teacher.hidden_size) for _ in self.pairs[i])

    @property
    def needs_teacher_model(self) -> bool:
        return self.alpha > 0 and any(t.family != "response" for t in self.terms)

    @property
    def needs_hidden_states(self) -> bool:
        return self.alpha > 0 and any(t.family != "response" and t.name != "attention" for t in self.terms)

    @property
    def needs_attentions(self) -> bool:
        return self.alpha > 0 and any(t.name == "attention" for t in self.terms)

    def _project(self, i: int, j: int, hidden: torch.Tensor) -> torch.Tensor:
        return self.projections[str(i)][j](hidden) if str(i) in self.projections else hidden

    def term_value(self, i: int, term: LossTerm, student_out, teacher_logits: torch.Tensor | None,
                   teacher_out, mask: torch.Tensor) -> torch.Tensor:
        """One term's value on a batch."""
        if term.name in RESPONSE_LOSSES:
            if teacher_logits is None:
                raise ObjectiveError(f"loss {term.name} needs teacher logits for the batch")
            return L.DIVERGENCES[term.name](student_out.logits.float(), teacher_logits.float(),
                                            temperature=self.temperature, mask=None,
                                            **_options(term))
        if term.name in RELATION_LOSSES:
            s_cls = student_out.hidden_states[-1][:, 0].float()
            t_cls = teacher_out.hidden_states[-1][:, 0].float()
            fn = {"rkd_distance": L.rkd_distance, "rkd_angle": L.rkd_angle,
                  "similarity": L.similarity_preserving}[term.name]
            return fn(s_cls, t_cls)
        pairs = self.pairs[i]
        if term.name == "attention":
            values = [L.attention_transfer(student_out.attentions[s - 1].float(),
                                           teacher_out.attentions[t - 1].float(), mask=mask, kind=term.kind)
                      for s, t in pairs]
            return torch.stack(values).mean()
        if term.name == "pkd":
            s_states = [self._project(i, j, student_out.hidden_states[s][:, 0].float()) for j, (s, _) in enumerate(pairs)]
            t_states = [teacher_out.hidden_states[t][:, 0].float() for _, t in pairs]
            return L.pkd_loss(s_states, t_states)
        fn = L.hidden_mse if term.name == "hidden_mse" else L.hidden_cosine
        values = [fn(self._project(i, j, student_out.hidden_states[s].float()),
                     teacher_out.hidden_states[t].float(), mask=mask) for j, (s, t) in enumerate(pairs)]
        return torch.stack(values).mean()

    def forward(self, student_out, labels: torch.Tensor, mask: torch.Tensor,
                teacher_logits: torch.Tensor | None = None, teacher_out=None) -> tuple[torch.Tensor, dict]:
        """The total loss and each part's value (for logging)."""
        hard = L.cross_entropy(student_out.logits.float(), labels)
        parts = {"cross_entropy": hard.detach()}
        if self.alpha == 0:
            return hard, parts
        soft = student_out.logits.sum() * 0.0
        for i, term in enumerate(self.terms):
            value = self.term_value(i, term, student_out, teacher_logits, teacher_out, mask)
            parts[f"{term.name}#{i}" if _repeats(self.terms, term.name) else term.name] = value.detach()
            soft = soft + term.weight * value
        return self.alpha * soft + (1 - self.alpha) * hard, parts


def _options(term: LossTerm) -> dict:
    if term.name == "gjsd":
        return {"beta": term.beta}
    if term.name in ("skew_kl", "skew_reverse_kl"):
        return {"skew": term.skew}
    return {}


def _repeats(terms: list[LossTerm], name: str) -> bool:
    return sum(t.name == name for t in terms) > 1


def capacity_warning(student_parameters: int, teacher_parameters: int, terms: list[LossTerm],
                     alpha: float) -> str | None:
    """A warning when a student under 25 % of the teacher's size learns from logits alone (capacity gap)."""
    share = student_parameters / max(teacher_parameters, 1)
    logit_only = alpha > 0 and all(t.family == "response" for t in terms)
    if share >= 0.25 or not logit_only:
        return None
    return (f"the student has {share:.0%} of the teacher's parameters and learns from logits only; a large "
            "capacity gap can make logit distillation fall short. A feature term (train.losses: [{name: kl}, "
            "{name: hidden_cosine, weight: 0.5}]) or a teacher assistant (assistant.enabled: true) may help, or "
            "not: measured in docs/byod.md, the feature term gained 4.7 points on the built-in intents and "
            "lost 0.8 and 3.8 on sentiment and news. Compare on your validation set (benchmarks/recipe.py)")
