"""Offline checks of generated text: unsafe content (lexicon) and a hallucination proxy.

Library functions for text-generation students (the LLM issue calls them); the classification
pipeline does not. Both are cheap screens that need no model and no network: a lexicon misses
paraphrase and flags quotation, and token support is not entailment. They rank and gate
regressions of a student against its teacher; they do not certify safety.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from distill.perturb import term_pattern

Lexicon = dict[str, list[str]]  # category -> whole words or phrases

# Function words, auxiliaries and chat filler: never evidence of (un)supported content.
STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have having
he her here hers herself him himself his how i if in into is it its itself just me more most my myself no
nor not now of off on once only or other our ours ourselves out over own same she should so some such than
that the their theirs them themselves then there these they this those through to too under until up very
was we were what when where which while who whom why will with would you your yours yourself yourselves
yes okay ok sure here's there's it's i'm you're let's please thanks thank answer question
""".split())
_TOKEN = re.compile(r"\d+(?:[.,:/]\d+)*%?|[^\W\d_]+(?:['’-][^\W\d_]+)*")


@dataclass
class SafetyResult:
    """Per-text unsafe-content flags and their rates."""

    matches: list[dict[str, list[str]]]  # per text: category -> the lexicon entries found
    flagged: list[bool]
    rate: float  # share of texts with at least one match
    category_rates: dict[str, float]


@dataclass
class SupportResult:
    """Per-answer share of content tokens not found in its input or reference."""

    unsupported_share: list[float]
    unsupported_tokens: list[list[str]]
    mean_unsupported_share: float
    flagged_rate: float  # share of answers above the threshold


def load_lexicon(path: str | Path | None = None) -> Lexicon:
    """The packaged lexicon, or a user's: JSON ``{category: [terms]}`` or text with one term a line.

    In a text file, ``category: term`` lines set the category; bare lines go to ``custom``;
    ``#`` starts a comment.
    """
    if path is None:
        raw = json.loads(resources.files("distill").joinpath("resources/unsafe_lexicon.json").read_text())
    else:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: lexicon file not found")
        if path.suffix.lower() == ".json":
            raw = json.loads(path.read_text())
        else:
            raw = {}
            for line in path.read_text().splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    category, _, term = line.rpartition(":")
                    raw.setdefault(category.strip() or "custom", []).append(term.strip())
    lexicon = {c: [t for t in terms if t.strip()] for c, terms in raw.items() if not c.startswith("_")}
    bad = [c for c, terms in lexicon.items() if not isinstance(terms, list)]
    if bad:
        raise ValueError(f"lexicon categories {bad} must map to lists of terms")
    return lexicon


def check_unsafe(texts: Sequence[str], lexicon: Lexicon | None = None) -> SafetyResult:
    """Flag texts holding any lexicon entry as a whole word or phrase (case-insensitive)."""
    lexicon = load_lexicon() if lexicon is None else lexicon
    patterns = {category: term_pattern(terms) for category, terms in lexicon.items()}
    per_term = {category: [(t.lower(), term_pattern([t])) for t in terms] for category, terms in lexicon.items()}
    matches = []
    for text in texts:
        found = {}
        for category, pattern in patterns.items():
            if pattern.search(text):  # one pass over the text; then name every entry, overlapping ones too
                found[category] = sorted({t for t, single in per_term[category] if single.search(text)})
        matches.append(found)
    flagged = [bool(m) for m in matches]
    n = max(len(matches), 1)
    return SafetyResult(matches, flagged, sum(flagged) / n,
                        {c: sum(c in m for m in matches) / n for c in lexicon})


def content_tokens(text: str) -> list[str]:
    """Numbers, names and content words of ``text``, lower-cased, stopwords and one-letter words dropped."""
    tokens = [t.lower().replace("’", "'") for t in _TOKEN.findall(text)]
    return [t for t in tokens if t not in STOPWORDS and (len(t) > 1 or t.isdigit())]


def _stem(token: str) -> str:
    """A crude plural / possessive fold so that 'lights' is supported by 'light'."""
    for suffix in ("'s", "es", "s"):
        if token.endswith(suffix) and len(token) - len(suffix) >= 3 and not token[0].isdigit():
            return token[: -len(suffix)]
    return token


def unsupported_tokens(answer: str, sources: Sequence[str]) -> list[str]:
    """Content tokens of ``answer`` that occur in none of ``sources`` (input, reference, context)."""
    known = {_stem(t) for source in sources for t in content_tokens(source)}
    return [t for t in content_tokens(answer) if _stem(t) not in known]


def check_support(answers: Sequence[str], inputs: Sequence[str], references: Sequence[str] | None = None,
                  threshold: float = 0.5) -> SupportResult:
    """Hallucination proxy: the share of each answer's content tokens (numbers, names, content words)
    found neither in its input nor in its reference.

    Args:
        answers: generated texts.
        inputs: the prompt or source document of each answer.
        references: optional reference answers, one per answer.
        threshold: an answer whose unsupported share exceeds this is flagged.
    """
    if len(inputs) != len(answers) or (references is not None and len(references) != len(answers)):
        raise ValueError("answers, inputs and references must have the same length")
    shares, missing = [], []
    for i, answer in enumerate(answers):
        sources = [inputs[i]] + ([references[i]] if references is not None else [])
        tokens, unsupported = content_tokens(answer), unsupported_tokens(answer, sources)
        shares.append(len(unsupported) / len(tokens) if tokens else 0.0)
        missing.append(unsupported)
    n = max(len(shares), 1)
    return SupportResult(shares, missing, sum(shares) / n, sum(s > threshold for s in shares) / n)
