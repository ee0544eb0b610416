"""Which training prompts a paid black-box teacher answers (the lm_select stage, ``lm.select``).

- ``all``: every training prompt (nothing is chosen; a local teacher always works this way).
- ``random``: a seeded random sample of the call budget.
- ``active``: the budget spent in rounds. The first round is chosen for coverage before any student
  exists (on the starting student's embeddings of the requests: facility location, or k-center with the
  diversity rules, or at random with rule uncertainty). Each later round trains an
  interim student on every answer paid so far (sequence-level, from the same start as the real
  student), scores the unpaid prompts by its uncertainty (the mean entropy of its next-token
  distribution along its own greedy answer) and sends the next round by ``rule``: the most uncertain,
  the farthest from everything paid (k-center), the spread-out ones among a shortlist of the most
  uncertain, the ones that stand for most of the pool (facility location, which the coverage rules also
  use for the first round), or those weighted by uncertainty. It stops at the budget, when the pool is
  empty, or at a plateau (the pool's mean uncertainty stopped falling, ``min_uncertainty_drop``).

The stage writes the chosen prompt ids, each round's figures and what the teacher was paid to
``reports/lm_selection.json``; lm_generate then asks the teacher for exactly those prompts (and every
held-out one), which the response cache already holds for the prompts the rounds paid for.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from distill.config import LMSelectConfig, PipelineConfig
from distill.io import read_json, write_json
from distill.lm.prompts import LMDataError, PromptTemplate, read_prompts, render_prompt
from distill.lm.teacher import CausalLM

log = logging.getLogger("distill")
RESELECT = "rerun the lm_select stage (dvc repro lm_select)"
SPEND_KEYS = ("calls", "requests", "cache_hits", "total_tokens", "estimated_cost", "dataset_tokens", "dataset_cost",
              "skipped")


@dataclass
class SelectRound:
    """One round of active selection."""

    round: int
    sent: int                             # training prompts asked of the teacher this round
    answered: int                         # of which the teacher answered (a token/cost budget may stop it)
    paid_total: int                       # training prompts answered so far
    pool_uncertainty: float | None        # the unpaid prompts' mean uncertainty before this round (None: no student)
    interim_loss: float | None            # the interim student's last training loss (None: no student)
    seconds: float


@dataclass
class Selection:
    """What lm_select chose and paid (``reports/lm_selection.json``)."""

    strategy: str
    rule: str | None
    pool: int                             # training prompts in the prompt set
    budget: int                           # training prompts the teacher may answer
    selected: list[str] | None            # the chosen training prompt ids (None: all of them)
    stopped: str                          # all | budget | pool | plateau | teacher budget
    rounds: list[SelectRound] = field(default_factory=list)
    spend: dict = field(default_factory=dict)
    teacher_fingerprint: str = ""
    prompts_hash: str = ""
    seconds: float = 0.0

    @property
    def calls(self) -> int:
        return self.pool if self.selected is None else len(self.selected)


def add_spend(total: dict, part: dict) -> dict:
    """The sum of two teacher spend summaries (``api_completion_rows``'s), key by key."""
    out = dict(total)
    for key in SPEND_KEYS:
        out[key] = round(out.get(key, 0) + part.get(key, 0), 6)
    out["stopped_by_budget"] = bool(total.get("stopped_by_budget") or part.get("stopped_by_budget"))
    return out


def k_center(points: np.ndarray, chosen: Sequence[int], candidates: Sequence[int], n: int) -> list[int]:
    """Greedy k-center (farthest-first, Sener & Savarese 2018): ``n`` of ``candidates``, each in turn the one
    farthest (cosine distance on unit rows of ``points``) from every index chosen so far. With nothing chosen
    the first pick is the candidate nearest the candidates' mean; ties go to the earlier candidate."""
    candidates = list(candidates)
    if n >= len(candidates):
        return candidates
    pts, picks = points[candidates], []
    if len(chosen):
        dist = (1.0 - pts @ points[list(chosen)].T).min(axis=1)
    else:
        first = int(np.argmax(pts @ pts.mean(axis=0)))
        picks.append(first)
        dist = 1.0 - pts @ pts[first]
        dist[first] = -np.inf
    while len(picks) < n:
        at = int(np.argmax(dist))
        picks.append(at)
        dist = np.minimum(dist, 1.0 - pts @ pts[at])
        dist[picks] = -np.inf
    return [candidates[i] for i in picks]


def coverage(points: np.ndarray, chosen: Sequence[int], candidates: Sequence[int], n: int,
             weights: np.ndarray | None = None) -> list[int]:
    """Greedy weighted facility location (Wei et al. 2015; with uncertainty weights, the information density of
    Settles & Craven 2008): ``n`` of ``candidates``, each in turn the one that raises most the pool's coverage
    ``sum_i weights_i * max_j sim(i, j)`` over the indices chosen so far (``chosen`` first). The similarity is the
    cosine of the rows of ``points`` centred on their mean (language-model states all point one way; centred,
    they tell requests apart), clipped at 0. Unlike k-center, which reaches for the outliers first, it picks
    prompts that stand for many others. ``weights`` (one per row of ``points``; None: all 1) say how much each
    prompt needs covering; ties go to the earlier candidate."""
    candidates = list(candidates)
    if n >= len(candidates):
        return candidates
    centred = points - points.mean(axis=0)
    centred /= np.linalg.norm(centred, axis=1, keepdims=True).clip(min=1e-12)
    sim = np.clip(centred @ centred[candidates].T, 0.0, None)                  # (pool, candidates)
    w = np.ones(len(points)) if weights is None else np.nan_to_num(np.asarray(weights, dtype=np.float64))
    cover = np.clip(centred @ centred[list(chosen)].T, 0.0, None).max(axis=1) if len(chosen) else np.zeros(len(points))
    picks: list[int] = []
    for _ in range(n):
        gain = w @ np.maximum(sim - cover[:, None], 0.0)
        gain[picks] = -np.inf
        at = int(np.argmax(gain))
        picks.append(at)
        cover = np.maximum(cover, sim[:, at])
    return [candidates[i] for i in picks]


def pick(rule: str, uncertainty: np.ndarray, embeddings: np.ndarray, paid: Sequence[int], unpaid: Sequence[int], n: int,
         candidate_factor: float = 3.0) -> list[int]:
    """The next round: ``n`` of the ``unpaid`` indices by ``rule`` (a pure decision on the scores given)."""
    unpaid = list(unpaid)
    if n >= len(unpaid):
        return unpaid
    # Most uncertain first; ties in pool order.
    ranked = [unpaid[i] for i in np.lexsort((np.arange(len(unpaid)), -uncertainty[unpaid]))]
    if rule == "uncertainty":
        return ranked[:n]
    if rule == "diversity":
        return k_center(embeddings, paid, unpaid, n)
    if rule == "uncertainty_diversity":
        return k_center(embeddings, paid, ranked[:max(n, int(round(candidate_factor * n)))], n)
    if rule == "coverage":
        return coverage(embeddings, paid, unpaid, n)
    if rule == "uncertainty_coverage":  # cover the pool where the student is unsure; the paid prompts need none
        weights = np.zeros(len(embeddings))
        weights[unpaid] = np.nan_to_num(uncertainty[unpaid])
        return coverage(embeddings, paid, unpaid, n, weights)
    raise ValueError(f"unknown lm.select.rule {rule!r}")


def round_sizes(budget: int, rounds: int) -> list[int]:
    """The budget split into ``rounds`` near-equal rounds (the first ones larger by one), no empty round."""
    rounds = max(1, min(rounds, budget))
    return [budget // rounds + (i < budget % rounds) for i in range(rounds)]


@torch.inference_mode()
def student_uncertainty(lm: CausalLM, template: PromptTemplate, requests: Sequence[str], max_new_tokens: int,
                        batch_size: int = 16) -> np.ndarray:
    """Per request, the student's uncertainty: the mean entropy (nats) of its next-token distribution along its
    own greedy answer, up to and including its end token."""
    from tqdm.auto import tqdm

    from distill.lm.evaluate import left_padded
    from distill.lm.speculative import eos_ids

    tokenizer, model = lm.tokenizer, lm.model.eval()
    device = next(model.parameters()).device
    eos = sorted(eos_ids(model, tokenizer))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    out_of = torch.tensor(eos or [-1], device=device)
    uncertainty: list[float] = []
    starts = range(0, len(requests), batch_size)
    for start in tqdm(starts, desc="scoring the unpaid prompts", unit="batch", disable=not len(starts)):
        texts = [render_prompt(tokenizer, template, r) for r in requests[start:start + batch_size]]
        inputs, mask = left_padded(tokenizer, texts, pad, device)
        out = model.generate(input_ids=inputs, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=eos or None, pad_token_id=pad, temperature=None, top_p=None, top_k=None,
                             output_scores=True, return_dict_in_generate=True)
        logp = torch.stack(out.scores, dim=1).float().log_softmax(-1)          # (batch, steps, vocab)
        entropy = -(logp.exp() * logp).sum(-1)                                 # (batch, steps)
        is_eos = torch.isin(out.sequences[:, inputs.shape[1]:], out_of).long()
        alive = ((is_eos.cumsum(1) - is_eos) == 0).float()                    # up to the first end token
        uncertainty += ((entropy * alive).sum(1) / alive.sum(1).clamp(min=1)).tolist()
    return np.asarray(uncertainty, dtype=np.float64)


@torch.inference_mode()
def student_embeddings(lm: CausalLM, requests: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """Per request, the student's embedding of the bare request: its last hidden states' mean, unit length."""
    tokenizer, model = lm.tokenizer, lm.model.eval()
    device = next(model.parameters()).device
    rows = []
    for start in range(0, len(requests), batch_size):
        bare = tokenizer(list(requests[start:start + batch_size]), add_special_tokens=False, padding=True,
                         return_tensors="pt").to(device)
        hidden = model.base_model(input_ids=bare["input_ids"], attention_mask=bare["attention_mask"]).last_hidden_state
        weights = bare["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden.float() * weights).sum(1) / weights.sum(1).clamp(min=1)
        rows.append(torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy())
    return np.concatenate(rows) if rows else np.zeros((0, 1))


Ask = Callable[[pd.DataFrame], tuple[list[dict], dict]]
Score = Callable[[list[dict] | None, pd.DataFrame, list[int]], tuple[np.ndarray | None, np.ndarray, float | None]]


def _choose(number: int, rows: list[dict], pool: pd.DataFrame, paid: list[int], unpaid: list[int], size: int,
            score: Score, cfg: LMSelectConfig, rng: np.random.Generator
            ) -> tuple[list[int], float | None, float | None]:
    """One round's prompts, the unpaid prompts' mean uncertainty and the interim student's loss (None in round 1:
    no student has learnt anything yet, so the first round is spread out, or random with rule uncertainty)."""
    if number == 1:
        if cfg.rule == "uncertainty":
            return sorted(rng.choice(unpaid, size=size, replace=False).tolist()), None, None
        _, embeddings, _ = score(None, pool, unpaid)
        first = coverage if cfg.rule in ("coverage", "uncertainty_coverage") else k_center
        return first(embeddings, [], unpaid, size), None, None
    uncertainty, embeddings, loss = score(rows, pool, unpaid)
    chosen = pick(cfg.rule, uncertainty, embeddings, paid, unpaid, size, cfg.candidate_factor)
    return chosen, float(np.mean(uncertainty[unpaid])), loss


def select_active(pool: pd.DataFrame, ask: Ask, score: Score, cfg: LMSelectConfig, seed: int,
                  on_round: Callable[[SelectRound], None] | None = None) -> tuple[list[dict], list[SelectRound],
                                                                                   dict, str]:
    """Active selection over ``pool`` (training prompts, in prompt-set order).

    ``ask(frame)`` has the teacher answer a frame of prompts: ``(rows, spend)``, rows only for the prompts it
    answered. ``score(rows, pool, unpaid)`` trains a student on ``rows`` and returns the uncertainty of each pool
    prompt (those of ``unpaid`` at least), every pool prompt's embedding and the training's last loss; with
    ``rows`` None, the untrained starting student's embeddings only. Returns the answered
    rows, the rounds, the summed spend and why it stopped (budget, pool, plateau or teacher budget).
    """
    budget, rng = cfg.budget(len(pool)), np.random.default_rng(seed)
    paid: list[int] = []
    rows: list[dict] = []
    rounds: list[SelectRound] = []
    spend: dict = {}
    for number, size in enumerate(round_sizes(budget, cfg.rounds), start=1):
        started = time.perf_counter()
        taken = set(paid)
        unpaid = [i for i in range(len(pool)) if i not in taken]
        if not unpaid:
            return rows, rounds, spend, "pool"
        chosen, mean_u, loss = _choose(number, rows, pool, paid, unpaid, min(size, len(unpaid)), score, cfg, rng)
        previous = rounds[-1].pool_uncertainty if rounds else None
        plateau = previous is not None and mean_u is not None and cfg.min_uncertainty_drop > 0 and \
            previous - mean_u < cfg.min_uncertainty_drop * previous
        answered, part = ([], {}) if plateau else ask(pool.iloc[chosen])
        paid += [] if plateau else chosen
        rows += answered
        spend = add_spend(spend, part) if part else spend
        rounds.append(SelectRound(number, 0 if plateau else len(chosen), len(answered), len(rows),
                                  None if mean_u is None else round(mean_u, 4),
                                  None if loss is None else round(loss, 4), round(time.perf_counter() - started, 2)))
        if on_round:
            on_round(rounds[-1])
        if plateau:
            return rows, rounds, spend, "plateau"
        if part.get("stopped_by_budget"):
            return rows, rounds, spend, "teacher budget"
    return rows, rounds, spend, "budget"


def interim_scorer(cfg: PipelineConfig, lender: CausalLM, template: PromptTemplate) -> Score:
    """``score`` for :func:`select_active`: a fresh student (``lm.student``, as lm_train starts it, ``lender``
    the folder that lends the tokenizer) trained on the answers so far with lm.train's settings in sequence mode
    for ``lm.select.epochs``, then scored."""
    from distill.lm.student import student_for
    from distill.lm.teacher import tokenizer_fingerprint
    from distill.lm.train import retokenize, teacher_data, train_lm
    from distill.models import pick_device

    tcfg = cfg.lm.train.model_copy(update={"mode": "sequence", "alpha": 0.0, "epochs": cfg.lm.select.epochs,
                                           "checkpoint_every": 0})
    device = pick_device(tcfg.device)

    def score(rows: list[dict] | None, pool: pd.DataFrame,
              unpaid: list[int]) -> tuple[np.ndarray | None, np.ndarray, float | None]:
        student, _ = student_for(cfg.lm.student, lender, cfg.seed, cfg.lm.api is not None)
        student.model.to(device)
        requests = pool["request"].tolist()
        if rows is None:
            return None, student_embeddings(student, requests), None
        frame = pd.DataFrame(rows)
        same = tokenizer_fingerprint(student.tokenizer) == tokenizer_fingerprint(lender.tokenizer)
        data = teacher_data(frame, None) if same else retokenize(frame, template, student.tokenizer)
        history = train_lm(student, data, tcfg, cfg.seed, device)
        loss = float(np.mean([h["loss"] for h in history[-max(1, len(history) // 10):]]))
        uncertainty = np.full(len(pool), np.nan)  # only the unpaid prompts are scored: the paid ones are chosen
        uncertainty[unpaid] = student_uncertainty(student, template, [requests[i] for i in unpaid],
                                                  cfg.lm.generate.max_new_tokens, cfg.lm.generate.batch_size)
        return uncertainty, student_embeddings(student, requests), loss

    return score


def run(cfg: PipelineConfig, prompts_path: Path, teacher_dir: Path, out_path: Path) -> Selection:
    """Choose the training prompts the teacher answers (the lm_select stage); write ``out_path``."""
    from distill.lm.generate import GenerationSettings, api_completion_rows, teacher_identity

    started = time.perf_counter()
    scfg = cfg.lm.select
    prompts, meta = read_prompts(prompts_path)
    pool = prompts[prompts["split"] == "train"].reset_index(drop=True)
    budget = scfg.budget(len(pool))
    select_seed = cfg.seed if scfg.seed is None else scfg.seed
    selection = Selection(scfg.strategy, scfg.rule if scfg.strategy == "active" else None, len(pool), budget, None,
                          "all", teacher_fingerprint=teacher_identity(cfg, teacher_dir),
                          prompts_hash=str(meta.get("prompts_hash", "")))
    if scfg.strategy == "random":
        chosen = np.random.default_rng(select_seed).choice(len(pool), size=budget, replace=False)
        selection.selected, selection.stopped = pool["prompt_id"].iloc[np.sort(chosen)].tolist(), "budget"
    elif scfg.strategy == "active":
        from distill.lm.client import ChatClient
        from distill.lm.teacher import load_causal_lm

        lender = load_causal_lm(teacher_dir)  # lends the tokenizer (and a random student's vocabulary)
        settings = GenerationSettings.from_config(cfg.lm.generate, cfg.seed)
        template = PromptTemplate.of(meta, settings.chain_of_thought)
        with ChatClient(cfg.lm.api) as client:
            def ask(frame: pd.DataFrame) -> tuple[list[dict], dict]:
                return api_completion_rows(client, lender.tokenizer, frame, template, meta["answer_marker"], settings)

            def report(r: SelectRound) -> None:
                log.info("lm_select round %d: sent %d (%d answered so far)%s", r.round, r.sent, r.paid_total,
                         "" if r.pool_uncertainty is None else f", unpaid prompts' mean uncertainty "
                         f"{r.pool_uncertainty:.3f} nats")

            rows, rounds, spend, stopped = select_active(pool, ask, interim_scorer(cfg, lender, template), scfg,
                                                         select_seed, report)
        answered = {r["prompt_id"] for r in rows}
        selection.selected = [p for p in pool["prompt_id"] if p in answered]
        selection.rounds, selection.spend, selection.stopped = rounds, spend, stopped
        if not rows:
            raise LMDataError(f"the teacher endpoint answered none of the {len(pool)} training prompts lm_select sent "
                              f"(budget: lm.api.max_total_tokens / lm.api.max_cost)")
    selection.seconds = round(time.perf_counter() - started, 2)
    write_json(Path(out_path), selection_record(selection))
    return selection


def selection_record(selection: Selection) -> dict:
    """The selection as its file holds it: no timings, so an unchanged choice leaves the file (and so
    lm_generate, which depends on it) unchanged."""
    record = asdict(selection)
    record.pop("seconds")
    for r in record["rounds"]:
        r.pop("seconds")
    return record


def read_selection(path: Path, prompts_path: Path, teacher_fingerprint: str) -> set[str] | None:
    """The training prompt ids lm_select chose (None: all), checked against the prompt set and the teacher."""
    prompts, prompts_meta = read_prompts(prompts_path)
    try:
        chosen = read_json(Path(path))
    except (OSError, ValueError) as exc:
        raise LMDataError(f"{path}: cannot read the prompt selection ({exc}); {RESELECT}") from None
    if chosen.get("prompts_hash") != str(prompts_meta.get("prompts_hash", "")):
        raise LMDataError(f"{path}: made for another prompt set; {RESELECT}")
    if chosen.get("teacher_fingerprint") != teacher_fingerprint:
        raise LMDataError(f"{path}: made with teacher {str(chosen.get('teacher_fingerprint'))[:16]}, but the teacher "
                          f"is now {teacher_fingerprint[:16]}; {RESELECT}")
    if chosen.get("selected") is None:
        return None
    selected = set(chosen["selected"])
    unknown = selected - set(prompts.loc[prompts["split"] == "train", "prompt_id"])
    if unknown:
        raise LMDataError(f"{path}: {len(unknown)} selected prompt ids are not training prompts of the prompt set "
                          f"(e.g. {sorted(unknown)[0]}); {RESELECT}")
    return selected
