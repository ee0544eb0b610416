"""Figures for the evaluation report (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pareto_chart(metrics: dict[str, dict[str, float]], path: Path) -> Path:
    """Accuracy against batch-1 p50 latency and against size on disk, one point per candidate, each Pareto
    front joined (a point is on it when nothing cheaper is as accurate)."""
    plt = _pyplot()
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    names = list(metrics)
    accuracy = np.array([metrics[n]["accuracy"] for n in names])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    markers = "osD^vP*Xhp"  # a colour and a marker per candidate: close points stay readable (no text labels)
    for ax, key, label, subs in ((axes[0], "latency_p50_ms", "batch-1 latency p50 (ms, log scale, CPU)", (1, 2, 3, 5)),
                                 (axes[1], "size_mb", "size on disk (MB, log scale)", (1, 2, 5))):
        cost = np.array([metrics[n][key] for n in names])
        for i, (name, x, y) in enumerate(zip(names, cost, accuracy)):
            ax.scatter([x], [y], s=55, marker=markers[i % len(markers)], color=f"C{i % 10}", label=name,
                       edgecolors="black", linewidths=0.4, zorder=3)
        front, best = [], -np.inf
        for i in np.argsort(cost):  # cheapest first
            if accuracy[i] > best:
                front.append(i)
                best = accuracy[i]
        ax.plot(cost[front], accuracy[front], "--", color="grey", linewidth=1, label="Pareto front")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=subs))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(label)
    axes[0].set_ylabel("accuracy (gold test set)")
    axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
    axes[0].set_title("Accuracy vs latency")
    axes[1].set_title("Accuracy vs size")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def reliability_diagrams(probs_by_name: dict[str, np.ndarray], gold: np.ndarray, path: Path, bins: int = 10) -> Path:
    """Accuracy per confidence bin against the diagonal, one panel per candidate."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(probs_by_name), figsize=(3 * len(probs_by_name), 3), sharey=True)
    edges = np.linspace(0, 1, bins + 1)
    for ax, (name, probs) in zip(np.atleast_1d(axes), probs_by_name.items()):
        confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == gold
        which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
        acc = [correct[which == b].mean() if (which == b).any() else np.nan for b in range(bins)]
        ax.bar(edges[:-1], acc, width=1 / bins, align="edge", edgecolor="black", alpha=0.7)
        ax.plot([0, 1], [0, 1], "--", color="red", linewidth=1)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("confidence")
    np.atleast_1d(axes)[0].set_ylabel("accuracy")
    fig.suptitle("Reliability diagrams", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def confusion_matrices(matrices: dict[str, np.ndarray], labels: list[str], path: Path) -> Path:
    """Row-normalized confusion matrices (true label down, predicted across), one panel per candidate."""
    plt = _pyplot()
    k = len(labels)
    side = min(max(3.0, 0.18 * k + 1.5), 7.0)
    ncols = min(3, len(matrices))
    nrows = -(-len(matrices) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(side * ncols, (side + 0.4) * nrows), squeeze=False)
    for ax in axes.flat[len(matrices):]:
        ax.axis("off")
    for ax, (name, matrix) in zip(axes.flat, matrices.items()):
        rows = matrix.sum(axis=1, keepdims=True)
        ax.imshow(matrix / np.maximum(rows, 1), cmap="Blues", vmin=0, vmax=1)
        ax.set_title(name, fontsize=9)
        if k <= 40:  # beyond that the names are unreadable: the JSON keeps them
            ax.set_xticks(range(k), labels, rotation=90, fontsize=max(4, 9 - k // 8))
            ax.set_yticks(range(k), labels, fontsize=max(4, 9 - k // 8))
        ax.set_xlabel("predicted", fontsize=8)
    for row in axes:
        row[0].set_ylabel("true", fontsize=8)
    fig.suptitle("Confusion matrices (rows normalized)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def flip_rate_chart(flips: list[dict], path: Path) -> Path:
    """Prediction flip rate per counterfactual / perturbation test, bars per model."""
    plt = _pyplot()
    tests = [row["test"] for row in flips]
    models = [key[: -len("_flip_rate")] for key in flips[0] if key.endswith("_flip_rate")]
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(tests)), 3.5))
    width = 0.8 / max(len(models), 1)
    for j, model in enumerate(models):
        ax.bar(np.arange(len(tests)) + j * width, [row[f"{model}_flip_rate"] for row in flips], width, label=model)
    names = [("swap " if t.startswith("counterfactual:") else "") + t.split(":", 1)[1] for t in tests]
    ax.set_xticks(np.arange(len(tests)) + 0.4 - width / 2, names, rotation=30, ha="right", fontsize=8)
    highest = max((row[f"{m}_flip_rate"] for row in flips for m in models), default=0.0)
    ax.set_ylim(0, max(0.05, 1.15 * highest))
    ax.set_ylabel("prediction flip rate")
    ax.set_title("Counterfactual swaps and perturbations")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
