"""The audit: planted biases must fail it with a reason naming them; fair models must pass."""

from __future__ import annotations

import numpy as np
import pandas as pd

from distill import perturb
from distill.audit import audit, flip_tests, slice_masks
from distill.config import AuditConfig

PLACES = ["paris", "tokyo", "lagos", "lima"]


def frame(n: int = 120) -> pd.DataFrame:
    """Three labels; a third of the texts mention a place; teacher, student and baseline all right."""
    rows = []
    for i in range(n):
        label = "abc"[i % 3]
        text = f"request {label} number {i}" + (f" in {PLACES[i % 4]}" if i % 3 == 1 else "")
        rows.append({"text": text, "label": label, "teacher": label, "student": label, "baseline": label})
    return pd.DataFrame(rows)


def config(**changes) -> AuditConfig:
    return AuditConfig(min_slice_size=10, term_lists={"places": PLACES}, counterfactual_groups={},
                       perturbations=[], **changes)


def test_a_fair_student_passes():
    report = audit(frame(), config())
    assert report.passed, report.reasons
    assert {s["slice"] for s in report.slices} >= {"label=a", "places=present"}


def test_a_planted_biased_teacher_fails_the_audit_naming_the_slice():
    # The teacher maps every "c" to "a"; the distilled student copies it; the baseline does not.
    biased = frame()
    biased.loc[biased["label"] == "c", ["teacher", "student"]] = "a"
    report = audit(biased, config())
    assert not report.passed
    failing = [r for r in report.reasons if "label=c" in r]
    assert failing and "teacher bias passed on" in failing[0] and "inherited" in failing[0], report.reasons
    # Only the flipped slice fails.
    assert not any("label=a" in r or "label=b" in r for r in report.reasons[:-1] if "not gating" not in r)


def test_a_student_worse_on_texts_with_places_fails_naming_that_slice():
    biased = frame()
    places = biased["text"].str.contains(" in ")
    biased.loc[places, "student"] = biased.loc[places, "label"].map({"a": "b", "b": "c", "c": "a"})
    report = audit(biased, config())
    assert not report.passed
    assert any(r.startswith("slice places=present") and "below the teacher's" in r for r in report.reasons)


def keys_on(word: str, n_classes: int = 2):
    """A fake model that answers class 1 exactly when ``word`` is in the text."""
    pattern = perturb.term_pattern([word])

    def predict(texts: list[str]) -> np.ndarray:
        hit = np.array([bool(pattern.search(t)) for t in texts])
        probs = np.full((len(texts), n_classes), 0.1)
        probs[np.arange(len(texts)), hit.astype(int)] = 0.9
        return probs

    return predict


def ignores_everything(texts: list[str]) -> np.ndarray:
    return np.tile([0.8, 0.2], (len(texts), 1))


PRONOUN_TEXTS = [f"he asked for item {i}" for i in range(15)] + [f"can she book table {i}" for i in range(15)]


def test_counterfactual_flip_rate_is_one_for_a_pronoun_keyed_model_and_zero_otherwise():
    cfg = AuditConfig(counterfactual_groups={"pronouns": ["he", "she"]}, perturbations=[])
    rows, examples = flip_tests(PRONOUN_TEXTS, {"teacher": ignores_everything, "student": keys_on("he")}, cfg, seed=0)
    row = rows.set_index("test").loc["counterfactual:pronouns"]
    assert row["n"] == 30
    assert row["student_flip_rate"] == 1.0 and row["teacher_flip_rate"] == 0.0
    assert examples and examples[0]["student"] == "1 -> 0"


def test_a_student_that_keys_on_a_pronoun_fails_and_one_that_does_not_passes():
    predictions = pd.DataFrame({"text": PRONOUN_TEXTS, "label": "x", "teacher": "x", "student": "x"})
    cfg = AuditConfig(min_slice_size=10, term_lists={}, counterfactual_groups={"pronouns": ["he", "she"]},
                      perturbations=["typo"])
    biased = audit(predictions, cfg, {"teacher": ignores_everything, "student": keys_on("he")})
    assert not biased.passed
    assert any(r.startswith("counterfactual:pronouns") and "exceeds the teacher's" in r for r in biased.reasons)
    fair = audit(predictions, cfg, {"teacher": ignores_everything, "student": ignores_everything})
    assert fair.passed, fair.reasons
    assert {f["test"] for f in fair.flips} == {"counterfactual:pronouns", "perturbation:typo"}


def test_robustness_flips_gate_too():
    texts = [f"Please, book table {i}." for i in range(40)]
    predictions = pd.DataFrame({"text": texts, "label": "x", "teacher": "x", "student": "x"})
    cfg = AuditConfig(min_slice_size=10, term_lists={}, counterfactual_groups={}, perturbations=["lowercase"])
    def cased(texts: list[str]) -> np.ndarray:  # a cased model that reads "Please" as a different intent
        return np.array([[0.1, 0.9] if "Please" in t else [0.9, 0.1] for t in texts])

    report = audit(predictions, cfg, {"teacher": ignores_everything, "student": cased})
    assert not report.passed and any(r.startswith("perturbation:lowercase (n=40)") for r in report.reasons)
    assert report.reasons[-1].startswith("no slice") is False


def test_perturbations_are_seeded_and_keep_casing():
    texts = ["Book a table for Sarah tonight", "no change here?"]
    assert perturb.perturb(texts, "typo", seed=3) == perturb.perturb(texts, "typo", seed=3)
    typo = perturb.perturb(texts, "typo", seed=3)[0][1]
    assert typo != texts[0] and sorted(typo) == sorted(texts[0])
    assert perturb.perturb(texts, "strip_punctuation", 0) == [(1, "no change here")]
    swapped = perturb.counterfactuals(["He said HE would call", "hello there"], ["he", "she"], seed=0)
    assert swapped == [(0, "She said SHE would call", "he", "she")]  # "hello" is not "he"


def test_slices_include_language_term_groups_and_user_columns():
    data = frame(30).assign(language=["en", "de", "fr"] * 10, channel=["web", "app"] * 15)
    names = {name for name, _ in slice_masks(data, config(), slice_columns=["channel"])}
    assert {"language=de", "channel=app", "places=present", "length=>8 words"} & names == {
        "language=de", "channel=app", "places=present"}
    masks = dict(slice_masks(data, config(), ["channel"]))
    assert masks["places=present"].sum() == 10


def test_audit_stage_writes_json_and_html_with_flip_chart(tiny_teacher, tmp_path):
    import json

    from distill import audit as stage
    from distill.config import config_from_dict

    predictions = tmp_path / "predictions.parquet"
    frame(30).to_parquet(predictions, index=False)
    cfg = config_from_dict({"audit": {"min_slice_size": 5, "max_perturbed": 10}})
    report = stage.run(cfg, predictions, tmp_path / "audit", tiny_teacher, tiny_teacher)
    written = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert written["passed"] is report.passed is True  # the same model twice flips the same way
    assert {f["test"] for f in written["flips"]} >= {"perturbation:typo", "counterfactual:places"}
    assert all(f["increase"] == 0 for f in written["flips"])
    assert "data:image/png;base64," in (tmp_path / "audit" / "audit.html").read_text()
    skipped = stage.run(cfg, predictions, tmp_path / "audit2")
    assert any("skipped" in n for n in skipped.notes)


def test_unsafe_lexicon_matches_whole_words_by_category_and_accepts_a_user_list(tmp_path):
    from distill.safety import check_unsafe, load_lexicon

    texts = ["I will kill you tomorrow", "the skill of a killer whale", "You IDIOT, shut up", "turn on the lights"]
    result = check_unsafe(texts)
    assert result.flagged == [True, False, True, False]  # "skill" and "killer" are not "kill you"
    assert result.matches[0] == {"violence": ["i will kill", "kill you"]}
    assert result.matches[2] == {"harassment": ["idiot", "shut up"]}
    assert result.rate == 0.5 and result.category_rates["harassment"] == 0.25
    assert set(load_lexicon()) >= {"violence", "self_harm", "harassment", "hate", "sexual"}
    own = tmp_path / "terms.txt"
    own.write_text("# my list\nspam: buy now\nlimited offer\n")
    assert load_lexicon(own) == {"spam": ["buy now"], "custom": ["limited offer"]}
    assert check_unsafe(["Buy now!", "hello"], load_lexicon(own)).flagged == [True, False]


def test_hallucination_proxy_counts_unsupported_numbers_and_names():
    from distill.safety import check_support

    source = "The meeting with Alice is on Tuesday at 10:30 in room 4."
    result = check_support(["Alice meets on Tuesday at 10:30 in room 4.",
                            "Bob meets on Friday at 11:00 in room 9."], [source, source])
    assert result.unsupported_share[0] < result.unsupported_share[1]
    assert set(result.unsupported_tokens[1]) >= {"bob", "friday", "11:00", "9"}
    assert "alice" not in result.unsupported_tokens[0] and "10:30" not in result.unsupported_tokens[0]
    assert result.flagged_rate == 0.5
    with_reference = check_support(["It is in Paris."], ["Where is the Louvre?"], ["The Louvre is in Paris."])
    assert with_reference.unsupported_share == [0.0]
