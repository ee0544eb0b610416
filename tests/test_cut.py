"""Long texts cut to their head and tail, the same way on every path that reads them."""

import json

import pytest

from distill import cut
from distill.cut import cut_of, set_cut
from distill.models import (Classifier, encode, load_classifier, model_fingerprint, packaged_encoder_path, read_card,
                            save_classifier)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(packaged_encoder_path())


NUMBERS = " ".join(str(i) for i in range(100, 300))  # 200 words of one token each


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_head_tail_keeps_the_first_and_last_tokens_of_a_long_text(tokenizer):
    whole = ids(tokenizer, NUMBERS)
    assert len(whole) == 200
    (spliced,) = cut.head_tail(tokenizer, [NUMBERS], max_length=18, head_share=0.5)  # 16 besides [CLS] [SEP]
    assert ids(tokenizer, spliced) == whole[:8] + whole[-8:]
    assert spliced == "100 101 102 103 104 105 106 107 292 293 294 295 296 297 298 299"
    (quarter,) = cut.head_tail(tokenizer, [NUMBERS], max_length=18, head_share=0.25)
    assert ids(tokenizer, quarter) == whole[:4] + whole[-12:]
    (tail,) = cut.head_tail(tokenizer, [NUMBERS], max_length=18, head_share=0.0)
    assert ids(tokenizer, tail) == whole[-16:]


def test_the_cut_falls_between_words_so_the_kept_tokens_are_the_texts_own(tokenizer):
    words = " ".join(f"w{i}" for i in range(100, 300))  # "w", "##10", "##0": three pieces a word
    whole = ids(tokenizer, words)
    (spliced,) = cut.head_tail(tokenizer, [words], max_length=18)
    got = ids(tokenizer, spliced)
    head = next(k for k in range(len(got)) if got[k] != whole[k])
    assert got == whole[:head] + whole[len(whole) - (len(got) - head):]  # a prefix and a suffix, nothing new
    assert 8 < len(got) <= 16 and spliced.startswith("w100 w101") and spliced.endswith("w298 w299")


def test_texts_that_fit_are_never_touched(tokenizer):
    texts = ["turn on the lights", "  odd   spacing kept  ", ""]
    assert cut.head_tail(tokenizer, texts, max_length=32) == texts
    exactly = " ".join(["word"] * 30)  # 30 tokens + 2 specials = 32
    assert cut.head_tail(tokenizer, [exactly], max_length=32) == [exactly]
    assert cut.cut_texts(tokenizer, [NUMBERS], 18, None) == [NUMBERS]
    with pytest.raises(ValueError, match="unknown cut 'middle'"):
        cut.cut_texts(tokenizer, [NUMBERS], 18, {"how": "middle"})


def test_encode_cuts_as_the_tokenizer_is_set_and_the_folder_remembers_it(tokenizer, tiny_teacher, tmp_path):
    whole = ids(tokenizer, NUMBERS)
    clf = load_classifier(tiny_teacher)
    assert cut_of(clf.tokenizer)["how"] == "head"
    head = encode(clf.tokenizer, [NUMBERS], 18)["input_ids"][0].tolist()
    assert head[1:-1] == whole[:16]
    set_cut(clf.tokenizer, {"how": "head_tail", "head_share": 0.5})
    for batch in ([NUMBERS], [NUMBERS, "short"]):  # the batch-1 fast path and the padded batch
        got = encode(clf.tokenizer, batch, 18)["input_ids"][0].tolist()
        assert got[1:-1] == whole[:8] + whole[-8:]
    fingerprint = save_classifier(Classifier(clf.model, clf.tokenizer, clf.labels), tmp_path / "m",
                                  {"role": "teacher", "source": "test"})
    assert read_card(tmp_path / "m")["cut"] == {"how": "head_tail", "head_share": 0.5}
    assert fingerprint != read_card(tiny_teacher)["fingerprint"]  # same weights, read another way
    again = load_classifier(tmp_path / "m")
    assert cut_of(again.tokenizer) == {"how": "head_tail", "head_share": 0.5}
    # A folder written before cuts were recorded reads its head.
    card = json.loads((tmp_path / "m/distill.json").read_text())
    del card["cut"]
    card["fingerprint"] = model_fingerprint(tmp_path / "m", {"how": "head"})
    (tmp_path / "m/distill.json").write_text(json.dumps(card))
    assert cut_of(load_classifier(tmp_path / "m").tokenizer)["how"] == "head"
    with pytest.raises(ValueError, match="teacher.cut is one of"):
        set_cut(clf.tokenizer, {"how": "middle"})
