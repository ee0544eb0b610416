"""Text perturbations for the audit: counterfactual term swaps and robustness edits.

Every function is seeded and pure: the same texts and seed give the same variants,
so two audits of the same models report the same flip rates.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable

import numpy as np

_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


def term_pattern(terms: Iterable[str]) -> re.Pattern:
    """Case-insensitive whole-word match of any of ``terms`` (multi-word terms allowed)."""
    alternatives = sorted({t.strip().lower() for t in terms if t.strip()}, key=len, reverse=True)
    if not alternatives:
        return re.compile(r"(?!x)x")  # matches nothing
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(t) for t in alternatives) + r")(?!\w)", re.IGNORECASE)


def match_case(template: str, word: str) -> str:
    """``word`` in the casing of ``template`` (upper, title or lower)."""
    if template.isupper() and len(template) > 1:
        return word.upper()
    if template[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def counterfactuals(texts: list[str], group: list[str], seed: int) -> list[tuple[int, str, str, str]]:
    """One variant per text that holds a term of ``group``: that term swapped for another member.

    Every occurrence of the first term found is replaced, in its casing, by a member drawn
    at random (seeded) from the rest of the group. Grammar is not repaired ("they is").

    Returns:
        (index of the source text, the variant, term replaced, replacement) tuples.
    """
    members = [t.strip().lower() for t in group if t.strip()]
    if len(members) < 2:
        return []
    pattern, rng, out = term_pattern(members), np.random.default_rng(seed), []
    for i, text in enumerate(texts):
        found = pattern.search(text)
        if not found:
            continue
        term = found.group(0).lower()
        others = [m for m in members if m != term]
        new = others[int(rng.integers(len(others)))]
        swap = re.compile(r"(?<!\w)" + re.escape(term) + r"(?!\w)", re.IGNORECASE)
        out.append((i, swap.sub(lambda m: match_case(m.group(0), new), text), term, new))
    return out


def typo(text: str, rng: np.random.Generator) -> str:
    """Swap two adjacent letters inside one word of at least four letters (a common typing slip)."""
    words = [m for m in re.finditer(r"[^\W\d_]{4,}", text)]
    if not words:
        return text
    word = words[int(rng.integers(len(words)))]
    i = word.start() + 1 + int(rng.integers(len(word.group(0)) - 2))  # keep the first letter
    return text[:i] + text[i + 1] + text[i] + text[i + 2:]


def add_punctuation(text: str, rng: np.random.Generator) -> str:
    """A comma after a random word and an exclamation or question mark at the end."""
    words = text.split(" ")
    if len(words) > 2:
        k = int(rng.integers(len(words) - 1))
        words[k] = words[k] + ","
    return " ".join(words).rstrip() + str(rng.choice(["!", "?", "!!", "..."]))


PERTURBATIONS: dict[str, Callable[[str, np.random.Generator], str]] = {
    "typo": typo,
    "lowercase": lambda text, rng: text.lower(),
    "uppercase": lambda text, rng: text.upper(),
    "strip_punctuation": lambda text, rng: " ".join(_PUNCTUATION.sub(" ", text).split()),
    "add_punctuation": add_punctuation,
}


def perturb(texts: list[str], name: str, seed: int) -> list[tuple[int, str]]:
    """Apply perturbation ``name`` to every text; keep only the variants that differ from their source."""
    edit, rng = PERTURBATIONS[name], np.random.default_rng(seed)
    variants = [(i, edit(text, rng)) for i, text in enumerate(texts)]
    return [(i, variant) for i, variant in variants if variant != texts[i]]
