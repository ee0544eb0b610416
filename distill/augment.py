"""Transfer texts made from the labelled ones, for the teacher to label.

Distillation teaches through the teacher's outputs on many inputs; a fully labelled file
brings no unlabelled inputs, and the student then sees the teacher only on the texts the
teacher was trained on, where its outputs say little more than the gold labels. Variants of
those texts (TinyBERT and EDA did the same) are new inputs whose teacher outputs carry the
"dark knowledge": a sentence with words dropped, two neighbouring words swapped, or the start
of one text joined to the end of another sits between classes, and the teacher says how far.

The edits are language-agnostic (whitespace words, no word lists or models), seeded, and
never produce a text that is already in the data.
"""

from __future__ import annotations

import numpy as np

EDITS = ("drop", "swap", "join")


def drop_words(words: list[str], rng: np.random.Generator, rate: float = 0.15) -> list[str]:
    """Each word dropped with probability ``rate`` (at least one word kept)."""
    keep = rng.random(len(words)) >= rate
    if not keep.any():
        keep[rng.integers(len(words))] = True
    return [w for w, k in zip(words, keep) if k]


def swap_words(words: list[str], rng: np.random.Generator, swaps: int = 2) -> list[str]:
    """``swaps`` swaps of neighbouring words."""
    words = list(words)
    for _ in range(swaps):
        i = int(rng.integers(len(words) - 1))
        words[i], words[i + 1] = words[i + 1], words[i]
    return words


def join_halves(words: list[str], other: list[str]) -> list[str]:
    """The first half of one text followed by the second half of another."""
    return words[:max(1, len(words) // 2)] + other[len(other) // 2:]


def augment_texts(texts: list[str], n: int, seed: int, taken: set[str] | None = None) -> list[str]:
    """Up to ``n`` distinct new texts edited from ``texts`` (none equal to a text in ``texts`` or ``taken``).

    Source texts are used in turn (each about ``n / len(texts)`` times), each variant with one edit
    chosen at random; texts of one or two words can only be joined.
    """
    rng = np.random.default_rng(seed)
    split = [t.split() for t in texts]
    seen = set(texts) | (taken or set())
    out: list[str] = []
    attempts = 0
    while len(out) < n and attempts < 4 * n + 100 and texts:
        attempts += 1
        i = int(rng.integers(len(texts)))
        words = split[i]
        edit = EDITS[int(rng.integers(3))] if len(words) > 2 else "join"
        if edit == "drop":
            new = drop_words(words, rng)
        elif edit == "swap":
            new = swap_words(words, rng)
        else:
            new = join_halves(words, split[int(rng.integers(len(texts)))])
        text = " ".join(new)
        if text and text not in seen:
            seen.add(text)
            out.append(text)
    return out
