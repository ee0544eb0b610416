import json

import pandas as pd
import pytest

from distill import data
from distill.config import config_from_dict
from tests.conftest import make_examples, tiny_params


def cfg_for(path, **data_overrides):
    params = tiny_params(path)
    params["data"].update(data_overrides)
    return config_from_dict(params)


def test_prepare_writes_every_split_without_overlap(tiny_cfg, tmp_path):
    out = tmp_path / "prepared"
    result = data.run(tiny_cfg, out)
    splits = {name: data.read_split(out, name) for name in data.SPLITS}
    assert result.labels == sorted(make_examples()["label"].unique())
    assert json.loads((out / "labels.json").read_text())["labels"] == result.labels
    texts = [t for name in ("gold_train", "gold_val", "gold_test", "transfer") for t in splits[name]["text"]]
    assert len(texts) == len(set(texts)), "a text occurs in two splits"
    assert splits["transfer"]["label"].isna().all(), "the transfer set must be unlabelled"
    assert splits["production"]["true_label"].notna().all() and splits["production"]["label"].isna().all()
    for name in ("gold_train", "gold_val", "gold_test"):
        assert set(splits[name]["label"]) == set(result.labels)
    assert len(splits["gold_train"]) + len(splits["gold_val"]) + len(splits["gold_test"]) == 12 * 4


def test_prepare_adds_incoming_traffic_to_the_transfer_set(tiny_cfg, tmp_path):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    pd.DataFrame({"text": ["open the pod bay doors", "open the pod bay doors", "turn on the den lights"]}
                 ).to_parquet(incoming / "window-0001.parquet")
    out = tmp_path / "prepared"
    data.run(tiny_cfg, out, incoming)
    transfer = data.read_split(out, "transfer")
    assert (transfer["text"] == "open the pod bay doors").sum() == 1


def test_missing_file_is_named(tmp_path):
    with pytest.raises(data.DataError, match="nope.csv: data file not found"):
        data.run(cfg_for(tmp_path / "nope.csv"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_column_names_the_column_and_the_key(tiny_csv, tmp_path):
    with pytest.raises(data.DataError, match=r"column 'text_body' \(data.text_column\) not found"):
        data.run(cfg_for(tiny_csv, text_column="text_body"), tmp_path / "out")


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(data.DataError, match="empty.jsonl"):
        data.run(cfg_for(path), tmp_path / "out")


def test_empty_text_fails_the_raw_contract(tmp_path):
    from distill.contracts import ContractError

    frame = make_examples().rename(columns={"text": "utterance", "label": "intent"})
    frame.loc[3, "utterance"] = ""
    path = tmp_path / "bad.parquet"
    frame.to_parquet(path)
    with pytest.raises(ContractError, match="raw_examples") as err:
        data.run(cfg_for(path), tmp_path / "out")
    assert "text" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_test_labels_unseen_in_training_are_refused(tmp_path):
    frame = make_examples().rename(columns={"text": "utterance", "label": "intent"})
    frame["split"] = "train"
    frame.loc[frame["intent"] == "timer", "split"] = "test"
    path = tmp_path / "split.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(data.DataError, match=r"labels \['timer'\] occur in the gold_test split but never in training"):
        data.run(cfg_for(path), tmp_path / "out")


def test_a_label_too_rare_to_split_is_refused(tmp_path):
    frame = make_examples().rename(columns={"text": "utterance", "label": "intent"})
    frame = pd.concat([frame, pd.DataFrame({"utterance": ["sing a song"], "intent": ["music"]})])
    path = tmp_path / "rare.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(data.DataError, match="music"):
        data.run(cfg_for(path), tmp_path / "out")


def test_failed_prepare_keeps_the_previous_good_output(tiny_cfg, tmp_path):
    out = tmp_path / "prepared"
    data.run(tiny_cfg, out)
    before = data.read_split(out, "gold_train")
    with pytest.raises(data.DataError):
        data.run(cfg_for(tmp_path / "missing.csv"), out)
    pd.testing.assert_frame_equal(data.read_split(out, "gold_train"), before)


def test_default_intent_data_has_a_real_shift():
    from distill.intents import build_intent_examples

    examples, shifted = build_intent_examples(seed=5)
    assert examples["label"].nunique() >= 10
    assert not set(shifted["text"]) & set(examples["text"])
    emerging = set(examples.loc[examples["emerging"], "label"])
    assert 1 <= len(emerging) < examples["label"].nunique()
    # Same seed, same data.
    again, _ = build_intent_examples(seed=5)
    pd.testing.assert_frame_equal(examples, again)


def test_emerging_intents_are_gold_only_until_the_shift(tmp_path):
    """Emerging intents are in the label set (gold) but only reach the transfer set with shifted traffic."""
    from distill.config import config_from_dict
    from distill.intents import build_intent_examples

    cfg = config_from_dict({"seed": 5, "data": {"gold_per_label": 12, "transfer_size": 400, "production_windows": 2,
                                                "shifted_windows": 2, "window_size": 100}})
    examples, _ = build_intent_examples(seed=5)
    emerging = set(examples.loc[examples["emerging"], "label"])
    prepared = data.run(cfg, tmp_path / "prepared")
    assert emerging <= set(prepared.labels)
    splits = {name: data.read_split(tmp_path / "prepared", name) for name in data.SPLITS}
    assert all("emerging" not in frame.columns for frame in splits.values())
    assert emerging <= set(splits["gold_train"]["label"]) and emerging <= set(splits["gold_test"]["label"])
    production = splits["production"]
    assert not set(splits["transfer"]["text"]) & set(production["text"])
    assert not set(splits["transfer"]["text"]) & set(examples.loc[examples["emerging"], "text"])
    early = production[~production["shifted"]]
    late = production[production["shifted"]]
    assert not emerging & set(early["true_label"]), "emerging intents must not appear before the shift"
    assert emerging & set(late["true_label"]), "the shifted traffic must bring the emerging intents"
