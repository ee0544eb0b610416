"""The temperature / alpha sweep: the grid and the choice, as pure functions.

The flow (flows/sweep.py) trains one student per grid point; the choice looks
at the gold validation accuracy only, never the test set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import product

from distill.config import PipelineConfig


@dataclass(frozen=True)
class GridPoint:
    kd_temperature: float
    alpha: float

    def overrides(self) -> list[str]:
        return [f"train.kd_temperature={self.kd_temperature}", f"train.alpha={self.alpha}"]


@dataclass
class PointResult:
    kd_temperature: float
    alpha: float
    val_accuracy: float
    steps: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def grid(cfg: PipelineConfig) -> list[GridPoint]:
    """Every (temperature, alpha) pair of the sweep section, in config order, without repeats."""
    points = [GridPoint(float(t), float(a)) for t, a in product(cfg.sweep.temperatures, cfg.sweep.alphas)]
    return list(dict.fromkeys(points))


def choose(results: list[PointResult]) -> PointResult:
    """The best validation accuracy; ties go to the earlier grid point (stable, so reruns agree)."""
    if not results:
        raise ValueError("the sweep produced no results")
    return max(results, key=lambda r: r.val_accuracy)  # max keeps the first of equals
