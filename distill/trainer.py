"""The training loop shared by the teacher bootstrap, the student and the baseline."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import accuracy_score

from distill.losses import hinton_loss
from distill.models import Classifier, encode, pick_device, predict_logits

IGNORE = -100


@dataclass
class TrainData:
    """Texts with gold label ids (IGNORE where unknown) and optional teacher logits (N, K)."""

    texts: list[str]
    labels: np.ndarray
    teacher_logits: np.ndarray | None = None

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


def batches(n: int, batch_size: int, rng: np.random.Generator):
    """Endless shuffled index batches, epoch after epoch."""
    while True:
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            yield order[start:start + batch_size]


def validate(clf: Classifier, val: TrainData, settings: TrainSettings, device: torch.device) -> float:
    """Accuracy on the validation set."""
    logits = predict_logits(clf, val.texts, batch_size=128, max_length=settings.max_length, device=device)
    clf.model.train()
    return float(accuracy_score(val.labels, logits.argmax(axis=1)))


def train(clf: Classifier, data: TrainData, val: TrainData, settings: TrainSettings,
          on_log: Callable[[int, dict], None] | None = None, progress: str | None = None) -> TrainResult:
    """Train ``clf`` in place; keep the weights of the best validation accuracy.

    Args:
        clf: model, tokenizer and labels; its weights are updated.
        data: training texts, gold label ids and optional teacher logits.
        val: gold validation set for early stopping (never the test set).
        settings: step budget, optimiser and loss settings.
        on_log: called as ``on_log(step, metrics)`` at each validation check.
        progress: progress bar title; None hides it.
    """
    from tqdm.auto import tqdm

    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    device = pick_device(settings.device)
    model = clf.model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.learning_rate, total_steps=settings.max_steps, pct_start=0.1)
    use_amp = device.type == "cuda"
    best = (-1.0, 0, copy.deepcopy(model.state_dict()))
    history, stale, step, start = [], 0, 0, time.perf_counter()
    bar = tqdm(total=settings.max_steps, desc=progress, disable=progress is None, unit="step")
    for idx in batches(len(data), settings.batch_size, rng):
        batch = {k: v.to(device) for k, v in encode(clf.tokenizer, [data.texts[i] for i in idx],
                                                    settings.max_length).items()}
        labels = torch.as_tensor(data.labels[idx], device=device)
        teacher = (torch.as_tensor(data.teacher_logits[idx], device=device)
                   if data.teacher_logits is not None else None)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = model(**batch).logits.float()  # (B, K)
        loss = hinton_loss(logits, teacher, labels, settings.kd_temperature, settings.alpha)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        step += 1
        bar.update(1)
        if step % settings.eval_every == 0 or step == settings.max_steps:
            accuracy = validate(clf, val, settings, device)
            record = {"loss": loss.item(), "val_accuracy": accuracy}
            history.append({"step": step, **record})
            if on_log:
                on_log(step, record)
            bar.set_postfix(val_acc=f"{accuracy:.3f}")
            if accuracy > best[0]:
                best, stale = (accuracy, step, copy.deepcopy(model.state_dict())), 0
            else:
                stale += 1
        if step >= settings.max_steps or stale >= settings.patience:
            break
    bar.close()
    model.load_state_dict(best[2])
    model.to("cpu").eval()
    return TrainResult(step, best[1], best[0], time.perf_counter() - start,
                       step < settings.max_steps, history)
