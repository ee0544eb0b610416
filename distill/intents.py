"""The default data set: Home Assistant intent sentences expanded with hassil.

Templates are sampled at random (a seeded walk over hassil's expression tree)
rather than fully expanded, which would yield millions of near-duplicates.
A held-out share of each intent's templates, new device and area names and a
few *emerging* intents make up the domain-shifted production traffic. Emerging
intents are in the label set (the small gold set has them, so the teacher knows
them) but absent from the transfer set and the early traffic: requests of a kind
that only became common after the transfer set was collected.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd

# Slot values hassil needs but the intent files leave to the user's home.
IN_DOMAIN_SLOTS: dict[str, list[str]] = {
    "area": ["kitchen", "living room", "bedroom", "bathroom", "office", "garage", "hallway",
             "dining room", "basement", "guest room", "kids room", "laundry room"],
    "floor": ["ground floor", "first floor", "upstairs", "downstairs"],
    "name": ["ceiling light", "desk lamp", "tv", "heater", "front door", "garage door",
             "coffee maker", "fan", "speaker", "thermostat", "blinds", "porch light",
             "vacuum", "lawn mower", "radio", "air purifier"],
    "message": ["dinner is ready", "time to go", "wake up", "the laundry is done"],
    "search_query": ["jazz", "the news", "my workout playlist", "relaxing music", "a podcast"],
    "zone": ["home", "work", "school"],
    "timer_name": ["pizza", "pasta", "eggs", "laundry", "tea"],
    "timer_command": ["turn off the oven", "start the dishwasher"],
    "shopping_list_item": ["milk", "eggs", "bread", "apples", "coffee", "butter"],
    "todo_list_item": ["call mom", "pay bills", "water the plants", "book a dentist"],
}

# Names that never appear before the shift: production inputs drift to these.
SHIFTED_SLOTS: dict[str, list[str]] = {
    "area": ["sauna", "wine cellar", "conservatory", "attic studio", "boathouse", "greenhouse"],
    "floor": ["mezzanine", "loft level"],
    "name": ["aquarium pump", "dehumidifier", "espresso grinder", "sprinkler valve",
             "projector screen", "heated towel rail", "pool heater", "skylight"],
    "message": ["the delivery arrived", "grandma is here"],
    "search_query": ["baroque harpsichord sonatas", "synthwave"],
    "zone": ["gym", "airport"],
    "timer_name": ["sourdough", "risotto", "kombucha"],
    "timer_command": ["close the skylight"],
    "shopping_list_item": ["quinoa", "oat milk", "kimchi"],
    "todo_list_item": ["renew passport", "defrost freezer"],
}


# The slots whose value a request names, most specific first: the reference of the LM rewrite task
# (a rewrite must keep it). Values are matched as whole words, longest first within a slot.
ENTITY_SLOTS = ("name", "area", "floor", "timer_name", "shopping_list_item", "todo_list_item", "search_query",
                "message", "zone")


def _entity_patterns() -> list[re.Pattern]:
    patterns = []
    for slot in ENTITY_SLOTS:
        values = sorted({*IN_DOMAIN_SLOTS[slot], *SHIFTED_SLOTS[slot]}, key=len, reverse=True)
        patterns.append(re.compile(r"\b(" + "|".join(re.escape(v) for v in values) + r")\b", re.IGNORECASE))
    return patterns + [re.compile(r"\b(\d+)\b")]


ENTITY_PATTERNS = _entity_patterns()


def named_entity(text: str) -> str | None:
    """The device, room or other slot value a built-in request names (the first of :data:`ENTITY_SLOTS`
    found; the longest value of that slot), else its longest number,
    else None: what a rewrite of the request must keep."""
    for pattern in ENTITY_PATTERNS:
        found = pattern.findall(text)
        if found:
            return max(found, key=len)
    return None


@dataclass(frozen=True)
class Template:
    """One sentence template of one intent, with the rules it may use."""

    intent: str
    index: int
    sentence: object  # hassil Sentence
    rules: dict


def languages() -> list[str]:
    """The languages home-assistant-intents has sentences for."""
    from home_assistant_intents import get_languages

    return list(get_languages())


def load_templates(language: str) -> tuple[list[Template], object]:
    """Parse the packaged intent file of ``language`` into templates."""
    from hassil.intents import Intents
    from home_assistant_intents import get_intents

    raw = get_intents(language)
    if raw is None:
        raise ValueError(f"home-assistant-intents has no sentences for language {language!r}")
    intents = Intents.from_dict(raw)
    templates = []
    for name, intent in sorted(intents.intents.items()):
        for data in intent.data:
            rules = {**intents.expansion_rules, **data.expansion_rules}
            for sentence in data.sentences:
                templates.append(Template(name, len(templates), sentence, rules))
    return templates, intents


def _walk(expr, rng: random.Random, rules: dict, lists: dict, slots: dict[str, list[str]]) -> Iterator[str]:
    """Yield the text pieces of one random expansion of a hassil expression."""
    from hassil.expression import Alternative, Group, ListReference, Permutation, RuleReference, TextChunk
    from hassil.intents import RangeSlotList, TextSlotList

    if isinstance(expr, TextChunk):
        yield expr.original_text
    elif isinstance(expr, Alternative):
        yield from _walk(rng.choice(expr.items), rng, rules, lists, slots)
    elif isinstance(expr, Permutation):
        items = list(expr.items)
        rng.shuffle(items)
        for item in items:
            yield " "
            yield from _walk(item, rng, rules, lists, slots)
            yield " "
    elif isinstance(expr, Group):
        for item in expr.items:
            yield from _walk(item, rng, rules, lists, slots)
    elif isinstance(expr, RuleReference):
        yield from _walk(rules[expr.rule_name].expression, rng, rules, lists, slots)
    elif isinstance(expr, ListReference):
        name = expr.list_name
        if name in slots:
            yield rng.choice(slots[name])
            return
        slot_list = lists.get(name)
        if isinstance(slot_list, TextSlotList):
            yield from _walk(rng.choice(slot_list.values).text_in, rng, rules, lists, slots)
        elif isinstance(slot_list, RangeSlotList):
            yield str(rng.randrange(slot_list.start, slot_list.stop + 1, slot_list.step or 1))
        else:
            raise KeyError(name)


def sample_sentence(template: Template, rng: random.Random, lists: dict, slots: dict[str, list[str]]) -> str | None:
    """One random sentence of a template, or None when it needs a list we lack."""
    try:
        text = "".join(_walk(template.sentence.expression, rng, template.rules, lists, slots))
    except KeyError:
        return None
    return " ".join(text.split())


def build_intent_examples(
    language: str = "en",
    seed: int = 13,
    samples_per_template: int = 60,
    holdout_share: float = 0.25,
    absent_intents: int = 2,
    min_sentences: int = 80,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Build in-domain examples and a domain-shifted pool.

    Returns ``(examples, shifted)``, each with columns ``text``, ``label`` and
    ``template``; ``examples`` also has ``emerging``, true for the rows of
    ``absent_intents`` intents. The prepare stage takes their gold examples and
    moves the rest to the shifted pool (``split_examples``). ``shifted`` uses
    held-out templates and new slot values. Intents with fewer than
    ``min_sentences`` distinct in-domain sentences are dropped.
    """
    rng = random.Random(seed)
    templates, intents = load_templates(language)
    by_intent: dict[str, list[Template]] = {}
    for template in templates:
        by_intent.setdefault(template.intent, []).append(template)

    in_rows, shift_rows = [], []
    for intent, group in by_intent.items():
        group = group[:]
        rng.shuffle(group)
        n_held = int(len(group) * holdout_share) if len(group) >= 4 else 0
        for position, template in enumerate(group):
            held_out = position < n_held
            for _ in range(samples_per_template):
                slots = SHIFTED_SLOTS if held_out or rng.random() < 0.5 else IN_DOMAIN_SLOTS
                target = shift_rows if held_out or slots is SHIFTED_SLOTS else in_rows
                text = sample_sentence(template, rng, intents.slot_lists, slots)
                if text:
                    target.append((text, intent, template.index))

    examples = pd.DataFrame(in_rows, columns=["text", "label", "template"]).drop_duplicates("text")
    counts = examples["label"].value_counts()
    kept = sorted(counts[counts >= min_sentences].index)
    examples = examples[examples["label"].isin(kept)]
    absent = rng.sample(kept, k=min(absent_intents, max(len(kept) - 2, 0)))
    shifted = pd.DataFrame(shift_rows, columns=["text", "label", "template"]).drop_duplicates("text")
    shifted = shifted[shifted["label"].isin(kept) & ~shifted["text"].isin(examples["text"])]
    examples = examples.assign(emerging=examples["label"].isin(absent))
    return examples.reset_index(drop=True), shifted.reset_index(drop=True)
