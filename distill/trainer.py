"""The training loop shared by the teacher bootstrap, the student and the baseline.

Checkpoints (``distill.checkpoint``) every ``checkpoint_every`` steps let a killed
run resume where it stopped and end bitwise where an uninterrupted run ends (CPU,
same thread count). Under torchrun the loop runs data-parallel (DDP): every rank
draws the same global batch and trains on its DistributedSampler share of it;
rank 0 logs and checkpoints.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from distill import checkpoint
from distill.config import LossTerm
from distill.io import hash_texts, is_primary
from distill.distributed import average_grads, init_distributed, local_share, mean_over_ranks
from distill.threads import CpuShare
from distill.models import Classifier, encode, pick_device, predict_logits
from distill.objective import ModelShape, Objective

IGNORE = -100
log = logging.getLogger("distill")


class TrainingError(RuntimeError):
    """Training went wrong in a way the settings can fix (the message says which); nothing is written."""


@dataclass
class TrainData:
    """Texts with gold label ids (IGNORE where unknown), optional cached teacher logits (N, K),
    and the teacher model itself when a feature or relation term needs its internals."""

    texts: list[str]
    labels: np.ndarray
    teacher_logits: np.ndarray | None = None
    teacher: Classifier | None = None

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class TrainSettings:
    """What one call of ``train`` needs; built from TrainConfig or TeacherConfig."""

    max_steps: int
    batch_size: int
    learning_rate: float
    weight_decay: float = 0.01
    max_length: int = 64
    kd_temperature: float = 1.0
    alpha: float = 0.0
    patience: int = 3
    eval_every: int = 50
    device: str = "auto"
    seed: int = 0
    checkpoint_dir: Path | None = None  # None: no checkpoints
    checkpoint_every: int = 0  # optimizer steps between checkpoints; 0: none
    validate_start: bool = False  # score the starting weights too (a warm start): training never ends worse


@dataclass
class TrainResult:
    steps: int
    best_step: int
    best_val_accuracy: float
    seconds: float
    stopped_early: bool
    history: list[dict]


def steps_for(n_examples: int, batch_size: int, epochs: int) -> int:
    """Optimizer steps in ``epochs`` passes over ``n_examples``."""
    return max(1, math.ceil(n_examples / batch_size)) * epochs


class Batches:
    """Endless shuffled index batches, epoch after epoch, that can say where they are.

    The state is the epoch, the offset in it and the generator state the epoch's
    permutation was drawn from, so a resumed stream yields the same batches.
    """

    def __init__(self, n: int, batch_size: int, rng: np.random.Generator):
        self.n, self.batch_size, self.rng = n, batch_size, rng
        self.epoch, self.offset = 0, 0
        self._new_epoch()

    def _new_epoch(self) -> None:
        self._epoch_rng = self.rng.bit_generator.state
        self._order = self.rng.permutation(self.n)

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        if self.offset >= self.n:
            self.epoch, self.offset = self.epoch + 1, 0
            self._new_epoch()
        idx = self._order[self.offset:self.offset + self.batch_size]
        self.offset += self.batch_size
        return idx

    def state(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset, "rng": self._epoch_rng}

    def restore(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self._new_epoch()
        self.epoch, self.offset = state["epoch"], state["offset"]


def check_schedule(settings: TrainSettings) -> TrainSettings:
    """Settings the loop can use: a validation interval longer than the whole run (a small data set)
    is shortened to a quarter of the run, with a warning naming the key, so early stopping can act."""
    if settings.eval_every <= settings.max_steps:
        return settings
    eval_every = max(1, settings.max_steps // 4)
    log.warning("train.eval_every (%d) is longer than the whole run (%d steps); validating every %d steps "
                "instead (lower train.eval_every to choose)", settings.eval_every, settings.max_steps, eval_every)
    return replace(settings, eval_every=eval_every)


def warmup_share(max_steps: int) -> float:
    """OneCycleLR warm-up share: 10 %, nudged where 10 % is exactly one step (it divides by zero there)."""
    return 0.1 if abs(0.1 * max_steps - 1.0) > 1e-9 else 0.15


def validate(clf: Classifier, val: TrainData, settings: TrainSettings, device: torch.device) -> float:
    """Accuracy on the validation set."""
    logits = predict_logits(clf, val.texts, batch_size=128, max_length=settings.max_length, device=device)
    clf.model.train()
    return float(np.mean(np.asarray(val.labels) == logits.argmax(axis=1)))


def default_objective(clf: Classifier, settings: TrainSettings) -> Objective:
    """Hinton KD (or plain cross-entropy when alpha is 0) for callers that configure no terms."""
    return Objective([LossTerm(name="kl")], settings.kd_temperature, settings.alpha, ModelShape.of(clf.model))


def use_eager_attention(model) -> None:
    """Attention maps are only returned by the eager attention implementation."""
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    else:
        model.config._attn_implementation = "eager"


def _run_key(clf: Classifier, data: TrainData, settings: TrainSettings, objective: Objective) -> str:
    """What makes a checkpoint belong to this run: settings, data, teacher outputs, objective, initial weights."""
    fields = {k: v for k, v in asdict(settings).items() if k not in ("checkpoint_dir", "checkpoint_every", "device")}
    logits = data.teacher_logits
    return checkpoint.run_key({
        "settings": fields, "texts": hash_texts(data.texts), "labels": data.labels.tolist(),
        "teacher_logits": None if logits is None else checkpoint.hash_state({"l": torch.from_numpy(np.array(logits))}),
        "terms": [t.model_dump() for t in objective.terms], "temperature": objective.temperature,
        "alpha": objective.alpha, "student": checkpoint.hash_state(clf.model.state_dict()),
        "objective": checkpoint.hash_state(objective.state_dict())})


@dataclass
class _Progress:
    """The loop's counters: what a checkpoint stores besides tensors."""

    step: int = 0
    stale: int = 0
    best_accuracy: float = -1.0
    best_step: int = 0
    history: list | None = None
    seconds: float = 0.0


@dataclass
class _Run:
    """What one training run holds between its steps."""

    clf: Classifier
    settings: TrainSettings
    device: torch.device
    rank: int
    world: int
    objective: Objective
    teacher: Classifier | None
    shared_tokens: bool
    internals: dict
    model: torch.nn.Module
    forward: torch.nn.Module
    params: list
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    warmup_steps: int
    use_amp: bool
    stream: Batches
    state: _Progress
    best_weights: dict
    key: str
    checkpointing: bool
    start: float = 0.0


def train(clf: Classifier, data: TrainData, val: TrainData, settings: TrainSettings,
          on_log: Callable[[int, dict], None] | None = None, progress: str | None = None,
          objective: Objective | None = None) -> TrainResult:
    """Train ``clf`` in place; keep the weights of the best validation accuracy.

    Args:
        clf: model, tokenizer and labels; its weights are updated.
        data: training texts, gold label ids and optional teacher logits.
        val: gold validation set for early stopping (never the test set).
        settings: step budget, optimiser and loss settings; checkpoint folder and interval.
        on_log: called as ``on_log(step, metrics)`` at each validation check (rank 0 only).
        progress: progress bar title; None hides it.
        objective: the loss terms (and their projections); None means Hinton KD from ``settings``.
    """
    from tqdm.auto import tqdm

    run = _start(clf, data, check_schedule(settings), objective)
    _resume(run, progress)
    _validate_warm_start(run, val)
    run.start = time.perf_counter() - run.state.seconds
    share = CpuShare.follow(run.device.type, run.world)  # torch's threads: the cores other processes leave free
    bar = tqdm(total=run.settings.max_steps, initial=run.state.step, desc=progress,
               disable=progress is None or not is_primary(), unit="step")
    while run.state.step < run.settings.max_steps and run.state.stale < run.settings.patience:
        if share:
            share.maybe_apply()
        loss, parts = _train_step(run, data)
        bar.update(1)
        if run.state.step % run.settings.eval_every == 0 or run.state.step == run.settings.max_steps:
            bar.set_postfix(val_acc=f"{_check(run, val, loss, parts, on_log):.3f}")
        _save_checkpoint(run)
    bar.close()
    return _finish(run)


def _start(clf: Classifier, data: TrainData, settings: TrainSettings, objective: Objective | None) -> _Run:
    """Devices, the teacher (when the loss terms need it in the step), optimiser, schedule, batch stream."""
    rank, world = init_distributed()
    torch.manual_seed(settings.seed)
    device = pick_device(settings.device)
    objective = (objective or default_objective(clf, settings)).to(device)
    checkpointing = bool(settings.checkpoint_every and settings.checkpoint_dir is not None)
    key = _run_key(clf, data, settings, objective) if checkpointing else ""
    teacher = data.teacher if objective.needs_teacher_model else None
    if objective.needs_teacher_model and teacher is None:
        raise ValueError("the configured loss terms need the teacher model in the training step; "
                         "pass TrainData(teacher=...)")
    if objective.needs_attentions:
        use_eager_attention(clf.model)
        use_eager_attention(teacher.model)
    if teacher is not None:
        teacher.model.to(device).eval().requires_grad_(False)
    model = clf.model.to(device).train()
    params = list(model.parameters()) + list(objective.parameters())
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.learning_rate, total_steps=settings.max_steps,
        pct_start=warmup_share(settings.max_steps))
    return _Run(clf=clf, settings=settings, device=device, rank=rank, world=world, objective=objective,
                teacher=teacher, shared_tokens=teacher is not None and teacher.tokenizer is clf.tokenizer,
                internals={"output_hidden_states": objective.needs_hidden_states,
                           "output_attentions": objective.needs_attentions},
                model=model, forward=model, params=params, optimizer=optimizer, scheduler=scheduler,
                warmup_steps=int(warmup_share(settings.max_steps) * settings.max_steps),
                use_amp=device.type == "cuda",
                stream=Batches(len(data), settings.batch_size, np.random.default_rng(settings.seed)),
                state=_Progress(history=[]), best_weights=copy.deepcopy(model.state_dict()), key=key,
                checkpointing=checkpointing)


def _resume(run: _Run, progress: str | None) -> None:
    """Continue from the run's checkpoint when there is one; wrap the model for DDP under torchrun."""
    ckpt = checkpoint.load(run.settings.checkpoint_dir, run.key) if run.checkpointing else None
    if ckpt is not None:
        checkpoint.restore(ckpt, run.model, run.objective, run.optimizer, run.scheduler)
        run.stream.restore(ckpt["batches"])
        run.state = _Progress(**ckpt["progress"])
        run.best_weights = ckpt["best"]
        log.info("resuming %s from the checkpoint at step %d of %d", progress or "training", run.state.step,
                 run.settings.max_steps)
    if run.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        run.forward = DistributedDataParallel(run.model)


def _validate_warm_start(run: _Run, val: TrainData) -> None:
    """A warm start begins from weights worth keeping: they are the first candidate for the best."""
    if run.settings.validate_start and run.state.step == 0 and not run.state.history:
        run.state.best_accuracy = validate(run.clf, val, run.settings, run.device)
        run.state.history.append({"step": 0, "val_accuracy": run.state.best_accuracy})


def _train_step(run: _Run, data: TrainData) -> tuple[torch.Tensor, dict]:
    """One optimiser step on the next batch (this rank's share of it); returns the loss and its terms."""
    device, settings = run.device, run.settings
    idx = local_share(next(run.stream), run.rank, run.world)
    texts = [data.texts[i] for i in idx]
    batch = {k: v.to(device) for k, v in encode(run.clf.tokenizer, texts, settings.max_length).items()}
    labels = torch.as_tensor(data.labels[idx], device=device)
    teacher_logits = (torch.as_tensor(data.teacher_logits[idx], device=device)
                      if data.teacher_logits is not None else None)
    teacher_out = None
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.use_amp):
        if run.teacher is not None:
            t_batch = batch if run.shared_tokens else {
                k: v.to(device) for k, v in encode(run.teacher.tokenizer, texts, settings.max_length).items()}
            with torch.no_grad():
                teacher_out = run.teacher.model(**t_batch, **run.internals)
        out = run.forward(**batch, **run.internals)
        loss, parts = run.objective(out, labels, batch["attention_mask"].bool(), teacher_logits, teacher_out)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if run.world > 1:
        average_grads(run.objective, run.world)
    torch.nn.utils.clip_grad_norm_(run.params, 1.0)
    run.optimizer.step()
    run.scheduler.step()
    run.state.step += 1
    return loss, parts


def _check(run: _Run, val: TrainData, loss: torch.Tensor, parts: dict,
           on_log: Callable[[int, dict], None] | None) -> float:
    """Validate, log, keep the best weights, count a check without progress; returns the accuracy."""
    state = run.state
    record = {"loss": mean_over_ranks(loss, run.world),
              **{f"loss_{k}": mean_over_ranks(v, run.world) for k, v in parts.items()},
              "learning_rate": run.scheduler.get_last_lr()[0]}
    if not all(math.isfinite(value) for value in record.values()):
        raise TrainingError(f"the training loss is not finite at step {state.step} ({record}): the weights "
                            f"diverged. Lower train.learning_rate (now {run.settings.learning_rate:g}), check "
                            f"train.kd_temperature and the loss weights, or the teacher outputs (dvc repro label)")
    accuracy = validate(run.clf, val, run.settings, run.device)
    record["val_accuracy"] = accuracy
    state.history.append({"step": state.step, **record})
    if on_log and is_primary():
        on_log(state.step, record)
    if accuracy > state.best_accuracy:
        state.best_accuracy, state.best_step, state.stale = accuracy, state.step, 0
        run.best_weights = copy.deepcopy(run.model.state_dict())
    elif state.step > run.warmup_steps:
        # Checks during the learning-rate warm-up do not count: on a large distillation set the
        # warm-up is long, and a still-cold student would otherwise be stopped before it learns.
        state.stale += 1
    return accuracy


def _save_checkpoint(run: _Run) -> None:
    """Every ``checkpoint_every`` steps, unless the loop is about to end anyway."""
    settings, state = run.settings, run.state
    if run.checkpointing and state.step % settings.checkpoint_every == 0 \
            and state.step < settings.max_steps and state.stale < settings.patience:
        state.seconds = time.perf_counter() - run.start
        checkpoint.save(settings.checkpoint_dir, key=run.key, model=run.model, best_state=run.best_weights,
                        objective=run.objective, optimizer=run.optimizer, scheduler=run.scheduler,
                        progress={"progress": asdict(state), "batches": run.stream.state()})


def _finish(run: _Run) -> TrainResult:
    """The best weights back in the model, everything back on the CPU, the run's figures."""
    run.model.load_state_dict(run.best_weights)
    run.model.to("cpu").eval()
    if run.teacher is not None:
        run.teacher.model.to("cpu")
    state = run.state
    return TrainResult(state.step, state.best_step, state.best_accuracy, time.perf_counter() - run.start,
                       state.step < run.settings.max_steps, state.history)
