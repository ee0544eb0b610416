"""How a text longer than the input length is cut: its head (the tokenizer's own truncation), or head + tail.

Long documents often say what they are about at both ends (a subject line and a conclusion, a
question and a signature). ``head_tail`` keeps the first ``head_share`` of the token budget from the
start of the text and the rest from its end, as Sun et al. (2019, "How to Fine-Tune BERT for Text
Classification?") found best for long reviews. The cut happens on the text, at token boundaries
found with the tokenizer's offsets, so every path that tokenizes (training, labelling, evaluation,
the ONNX export, the served pyfunc) reads the same tokens through its ordinary tokenizer call.

A model folder records its cut in its card (``cut``); texts that fit are never touched. This module
imports nothing of distill, torch or transformers: the MLflow pyfunc ships it beside the model
(``code_paths``) so a served model cuts as it was trained where distill is not installed.
"""

from __future__ import annotations

import weakref

HOW = ("head", "head_tail")
_CUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> how its model cuts long texts


def card_cut(card: dict) -> dict:
    """The cut a model card records; folders written before cuts were recorded read their head."""
    found = card.get("cut") or {}
    return {"how": found.get("how", "head"), "head_share": float(found.get("head_share", 0.5))}


def set_cut(tokenizer, cut: dict) -> None:
    """Make every ``distill.models.encode`` of ``tokenizer`` cut long texts as ``cut`` says; the model's folder
    records it (``save_classifier``) and ``load_classifier`` restores it."""
    if cut.get("how") not in HOW:
        raise ValueError(f"unknown cut {cut.get('how')!r}; teacher.cut is one of {HOW}")
    _CUTS[tokenizer] = {"how": cut["how"], "head_share": float(cut.get("head_share", 0.5))}


def cut_of(tokenizer) -> dict:
    """How ``tokenizer``'s model cuts long texts (``set_cut``); the head by default."""
    return dict(_CUTS.get(tokenizer) or card_cut({}))


def head_tail(tokenizer, texts: list[str], max_length: int, head_share: float = 0.5) -> list[str]:
    """``texts`` with every text longer than ``max_length`` tokens cut to its head and tail.

    The head keeps ``round(head_share * budget)`` tokens and the tail the rest, where the budget is
    ``max_length`` less the tokenizer's special tokens. The two parts are joined with a space; the
    tokenizer's own truncation still applies after, so a join that tokenizes one token longer is cut
    at the end. A tokenizer without offsets (a slow, Python one) keeps the head.
    """
    special = tokenizer.num_special_tokens_to_add(pair=False)
    budget = max(1, max_length - special)
    # A token covers at least one byte of the text, so a text of at most ``budget`` bytes always fits.
    long_ = [i for i, text in enumerate(texts) if len(text.encode("utf-8")) > budget]
    if not long_ or not getattr(tokenizer, "is_fast", False):
        return list(texts)
    encoded = tokenizer([texts[i] for i in long_], add_special_tokens=False, truncation=False,
                        return_offsets_mapping=True)
    out = list(texts)
    for row, i in enumerate(long_):
        spans, words = encoded["offset_mapping"][row], encoded.word_ids(row)
        n = len(spans)
        if n <= budget:
            continue
        head = min(budget, max(0, round(head_share * budget)))
        start = n - (budget - head)
        # Cut between words, never inside one, so the spliced text tokenizes to exactly the kept tokens:
        # the head gives back a part-word, the tail starts at the next whole word.
        while 0 < head < n and words[head] is not None and words[head] == words[head - 1]:
            head -= 1
        while 0 < start < n and words[start] is not None and words[start] == words[start - 1]:
            start += 1
        text = texts[i]
        left = text[:spans[head - 1][1]] if head else ""
        right = text[spans[start][0]:] if start < n else ""
        out[i] = f"{left} {right}".strip()
    return out


def cut_texts(tokenizer, texts: list[str], max_length: int, cut: dict | None) -> list[str]:
    """``texts`` as a model with ``cut`` (``card_cut``'s form; None: head) reads them before truncation."""
    if not cut or cut.get("how", "head") == "head":
        return list(texts)
    if cut["how"] != "head_tail":
        raise ValueError(f"unknown cut {cut['how']!r}; expected one of {HOW}")
    return head_tail(tokenizer, texts, max_length, cut.get("head_share", 0.5))
