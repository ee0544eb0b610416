"""Input length chosen from the data, recorded in the teacher's card, read by every later stage."""

import numpy as np

from distill import data, lengths, teacher
from distill.config import config_from_dict
from distill.models import packaged_encoder_path, read_card
from tests.conftest import tiny_params


def test_choose_length_takes_the_quantile_rounded_up_within_floor_and_cap():
    assert lengths.choose_length(np.arange(1, 101), 0.9, cap=128) == 96             # 90.1 -> 96
    assert lengths.choose_length(np.array([5, 6, 7]), 0.99, cap=128) == 32          # floor
    assert lengths.choose_length(np.array([400] * 10), 0.99, cap=128) == 128        # cap
    assert lengths.choose_length(np.array([], dtype=int), 0.99, cap=128) == 32


def test_profile_measures_with_the_tokenizer_and_reports_the_share_cut():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(packaged_encoder_path())
    texts = ["short text"] * 90 + [" ".join(["word"] * 200)] * 10
    cfg = config_from_dict({"teacher": {"max_length_cap": 64, "length_quantile": 0.95}})
    found = lengths.profile(tokenizer, texts, cfg)
    assert found.chosen and found.max_length == 64 and found.p50 == 4 and found.p99 == 202
    assert found.truncated_share == 0.1
    fixed = lengths.profile(tokenizer, texts, config_from_dict({"teacher": {"max_length": 16}}))
    assert not fixed.chosen and fixed.max_length == 16 and fixed.truncated_share == 0.1


def test_padded_batch_length_is_the_mean_longest_text_of_a_batch_cut_at_max_length():
    assert lengths.padded_batch_length(np.full(100, 12), 64, 32) == 12.0
    mixed = np.array([10] * 99 + [500])
    one_long = lengths.padded_batch_length(mixed, 64, 32, seed=1)
    assert 10 < one_long < 64 / 2  # about a third of the batches hold the long text, cut at 64
    assert lengths.padded_batch_length(mixed, 64, 32, seed=1) == one_long  # seeded: the same budget every run
    assert lengths.padded_batch_length(np.array([], dtype=int), 48, 32) == 48.0


def test_the_teacher_budget_in_tokens_gives_short_texts_more_steps_than_long_ones(capsys):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(packaged_encoder_path())
    base = {"epochs": 100, "batch_size": 8, "max_length": 64, "max_tokens": 8 * 64 * 10}
    short, long_ = ["turn it on"] * 80, [" ".join(["word"] * 100)] * 80

    def steps(cfg, texts):  # the budget from the lengths the teacher stage measured
        return teacher.budget_steps(cfg, len(texts), lengths.profile(tokenizer, texts, cfg).padded_batch)

    cfg = config_from_dict({"teacher": base})
    assert steps(cfg, long_) == 10  # every batch padded to 64 tokens
    assert steps(cfg, short) == 8 * 64 * 10 // (8 * 5)  # 5 tokens with [CLS] and [SEP]
    assert "teacher.max_tokens=5,120" in capsys.readouterr().out
    capped = config_from_dict({"teacher": {**base, "max_steps": 3}})
    assert steps(capped, short) == 3 and "teacher.max_steps=3" in capsys.readouterr().out
    epochs = config_from_dict({"teacher": {**base, "epochs": 2, "max_tokens": None}})
    assert steps(epochs, short) == 20 and "2 epochs of 80 texts" in capsys.readouterr().out


def test_null_lengths_are_filled_from_the_teacher_card_and_set_ones_win():
    card = {"length": {"max_length": 96}}
    cfg = lengths.with_lengths(config_from_dict({}), card)
    assert (cfg.teacher.max_length, cfg.train.max_length) == (96, 96)
    cfg = lengths.with_lengths(config_from_dict({"train": {"max_length": 48}}), card)
    assert (cfg.teacher.max_length, cfg.train.max_length) == (96, 48)
    assert lengths.with_lengths(config_from_dict({}), {}).teacher.max_length == lengths.FALLBACK_LENGTH
    assert lengths.model_length({"train": {"max_length": 40}}) == 40 and lengths.model_length(card) == 96


def test_the_teacher_stage_records_the_length_it_chose(tmp_path, tiny_teacher):
    import pandas as pd

    rows = [{"utterance": f"{label} request number {i} " + "and more words " * (30 if i % 10 == 0 else 0),
             "intent": label} for label in ("a", "b") for i in range(30)]
    pd.DataFrame(rows).to_csv(tmp_path / "long.csv", index=False)
    params = tiny_params(tmp_path / "long.csv")
    params["data"].update(gold="all", transfer_size=None)
    params["teacher"]["max_length_cap"] = 64
    cfg = config_from_dict(params)
    prepared = tmp_path / "prepared"
    data.run(cfg, prepared)
    labels = tmp_path / "labelled"
    # The tiny teacher has the wrong labels for this file; give it this file's labels through a copy.
    from distill.models import Classifier, load_classifier, save_classifier
    from transformers import BertConfig, BertForSequenceClassification

    source = load_classifier(tiny_teacher)
    config = BertConfig(**{**source.model.config.to_dict(), "num_labels": 2, "id2label": {0: "a", 1: "b"},
                           "label2id": {"a": 0, "b": 1}})
    save_classifier(Classifier(BertForSequenceClassification(config), source.tokenizer, ["a", "b"]), labels,
                    {"role": "teacher", "source": "test"})
    teacher.run(cfg, prepared, tmp_path / "t", teacher_path=labels)
    recorded = read_card(tmp_path / "t")["length"]
    assert recorded["chosen"] and recorded["max_length"] == 64
    assert 0.05 < recorded["truncated_share"] < 0.2
    assert lengths.with_teacher_lengths(cfg, tmp_path / "t").train.max_length == 64


def test_texts_the_tokenizer_cannot_read_are_refused_by_name(tmp_path):
    import pandas as pd
    import pytest

    from distill.models import ModelError

    runes = ["ᚠᚢᚦᚨᚱᚲ", "ᚷᚹᚺᚾᛁᛃ", "ᛇᛈᛉᛊᛏᛒ", "ᛖᛗᛚᛜᛞᛟ"]
    rows = [{"utterance": " ".join(runes[(i + j) % 4] for j in range(3 + i % 3)), "intent": label}
            for label in ("a", "b", "c", "d") for i in range(12)]
    rows = [dict(r, utterance=f"{r['utterance']} {i}") for i, r in enumerate(rows)]
    pd.DataFrame(rows).to_csv(tmp_path / "runes.csv", index=False)
    params = tiny_params(tmp_path / "runes.csv")
    params["data"].update(gold="all", transfer_size=None)
    cfg = config_from_dict(params)
    data.run(cfg, tmp_path / "prepared")
    with pytest.raises(ModelError, match=r"unknown to the teacher's tokenizer \(\[UNK\]\).*teacher.path"):
        teacher.run(cfg, tmp_path / "prepared", tmp_path / "t")  # the bootstrap teacher's tokenizer
    assert not (tmp_path / "t").exists()
