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


def labelled_file(tmp_path, counts: dict[str, int], unlabelled: int = 0, name: str = "data.csv"):
    """A file of distinct texts with ``counts[label]`` rows per label and ``unlabelled`` rows without one."""
    rows = [{"utterance": f"{label} example number {i}", "intent": label}
            for label, n in counts.items() for i in range(n)]
    rows += [{"utterance": f"unlabelled text {i}", "intent": None} for i in range(unlabelled)]
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def all_cfg(path, **data_overrides):
    return cfg_for(path, **({"gold": "auto", "transfer_size": None} | data_overrides))


def test_a_labelled_file_uses_every_label_with_held_out_sets_sized_from_the_data(tmp_path):
    path = labelled_file(tmp_path, {"pos": 600, "neg": 400}, unlabelled=50)
    result = data.run(all_cfg(path), tmp_path / "out")
    splits = {name: data.read_split(tmp_path / "out", name) for name in data.SPLITS}
    assert result.report.gold == "all"
    assert (len(splits["gold_test"]), len(splits["gold_val"]), len(splits["gold_train"])) == (200, 100, 700)
    # Stratified: each label keeps its share of the test set.
    assert splits["gold_test"]["label"].value_counts().to_dict() == {"pos": 120, "neg": 80}
    transfer = splits["transfer"]
    assert transfer["label"].isna().all() and (~transfer["augmented"]).sum() == 50
    # Few unlabelled texts: edited copies of training texts bring the transfer set to twice the training rows.
    assert transfer["augmented"].sum() == 2 * 700 - 50 == result.report.augmented
    texts = [t for name in ("gold_train", "gold_val", "gold_test", "transfer") for t in splits[name]["text"]]
    assert len(texts) == len(set(texts)) == 1000 + 1400
    # No spare labelled rows: the simulated traffic replays test rows, with their labels.
    assert set(splits["production"]["text"]) <= set(splits["gold_test"]["text"])
    assert splits["production"]["true_label"].notna().all()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["gold"] == "all" and report["labelled"] == 1000 and report["left_out"] == {}


def test_augmented_texts_come_from_training_texts_only_and_can_be_turned_off(tmp_path):
    path = labelled_file(tmp_path, {"pos": 60, "neg": 40})
    cfg = all_cfg(path, augment=1.5)
    splits, report = data.split_examples(data.load_examples(cfg.data), None, cfg.data, 1, "x")
    augmented = splits["transfer"][splits["transfer"]["augmented"]]["text"].tolist()
    assert len(augmented) == report.augmented == round(1.5 * len(splits["gold_train"]))
    train_words = {w for t in splits["gold_train"]["text"] for w in t.split()}
    held_out = set(splits["gold_test"]["text"]) | set(splits["gold_val"]["text"])
    assert all(set(t.split()) <= train_words for t in augmented) and not held_out & set(augmented)
    off = all_cfg(path, augment=0)
    assert data.split_examples(data.load_examples(off.data), None, off.data, 1, "x")[1].augmented == 0


def test_held_out_sets_are_capped_and_every_label_is_tested(tmp_path):
    counts = {f"label{i:02d}": 3 + i * 40 for i in range(30)}  # 3 to 1163 rows per label
    path = labelled_file(tmp_path, counts)
    splits = data.split_examples(data.load_examples(all_cfg(path).data), None,
                                 all_cfg(path, max_test_rows=500, max_val_rows=300).data, 1, "x")[0]
    assert abs(len(splits["gold_test"]) - 500) <= 30 and abs(len(splits["gold_val"]) - 300) <= 30
    for name in ("gold_train", "gold_val", "gold_test"):
        assert set(splits[name]["label"]) == set(counts), f"a label is missing from {name}"


def test_the_distillation_budget_samples_large_files_and_says_so(tmp_path):
    path = labelled_file(tmp_path, {"a": 900, "b": 300}, unlabelled=500)
    cfg = all_cfg(path, distill_rows=600)
    splits, report = data.split_examples(data.load_examples(cfg.data), None, cfg.data, 1, "x")
    assert len(splits["gold_train"]) + len(splits["transfer"]) <= 600
    assert set(splits["gold_train"]["label"]) == {"a", "b"}
    assert report.left_out == {
        "labelled training rows over data.distill_rows=600": 840 - len(splits["gold_train"]),
        "unlabelled texts over the transfer budget (data.transfer_size, data.distill_rows)": 500}


def test_per_label_mode_keeps_the_limited_label_scenario_and_reports_the_unused_labels(tmp_path):
    path = labelled_file(tmp_path, {"a": 100, "b": 100})
    cfg = all_cfg(path, gold="per_label", gold_per_label=20)
    splits, report = data.split_examples(data.load_examples(cfg.data), None, cfg.data, 1, "x")
    assert sum(len(splits[s]) for s in ("gold_train", "gold_val", "gold_test")) == 40
    assert report.gold == "per_label"
    assert any("160 labelled rows beyond data.gold_per_label=20" in note for note in report.notes)
    # the monitor's reference: traffic-pool texts that no other split holds, with their labels kept aside
    reference = splits["reference"]
    others = set().union(*(set(splits[s]["text"]) for s in data.SPLITS if s != "reference"))
    assert len(reference) and not set(reference["text"]) & others
    assert reference["label"].isna().all() and reference["true_label"].notna().all()
    assert len(reference) <= max(len(splits["transfer"]) // 9, 2 * cfg.data.window_size)


def test_the_reference_costs_the_builtin_transfer_set_nothing_and_is_empty_where_gold_is_the_traffic(tmp_path):
    from distill.intents import build_intent_examples

    cfg = config_from_dict({"seed": 5, "data": {"production_windows": 1, "shifted_windows": 0}})
    examples, _ = build_intent_examples(seed=5)
    splits, _ = data.split_examples(examples, None, cfg.data, 5, "x", builtin=True)
    assert len(splits["reference"]) == 2 * cfg.data.window_size
    assert len(splits["transfer"]) == data.BUILTIN_TRANSFER_SIZE  # taken from rows the budget leaves out
    path = labelled_file(tmp_path, {"a": 100, "b": 100})
    splits, report = data.split_examples(data.load_examples(all_cfg(path).data), None, all_cfg(path).data, 1, "x")
    assert report.gold == "all" and splits["reference"].empty  # the traffic replays gold_test: it is the reference


def test_a_split_column_still_wins(tmp_path):
    frame = make_examples().rename(columns={"text": "utterance", "label": "intent"}).sample(frac=1.0, random_state=0)
    frame["split"] = ["train"] * 80 + ["validation"] * 20 + ["test"] * 20
    path = tmp_path / "split.csv"
    frame.to_csv(path, index=False)
    splits, report = data.split_examples(data.load_examples(all_cfg(path).data), None, all_cfg(path).data, 1, "x")
    assert report.gold == "split column"
    assert [len(splits[s]) for s in ("gold_train", "gold_val", "gold_test")] == [80, 20, 20]


def test_a_label_column_of_unique_values_is_named_as_such(tmp_path):
    path = tmp_path / "ids.csv"
    pd.DataFrame({"utterance": [f"text {i}" for i in range(50)], "intent": [f"id{i}" for i in range(50)]}
                 ).to_csv(path, index=False)
    with pytest.raises(data.DataError, match=r"50 of 50 labels have fewer than 3 examples.*check data.label_column"):
        data.run(all_cfg(path), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_builtin_scenario_stays_limited_label(tmp_path):
    from distill.intents import build_intent_examples

    cfg = config_from_dict({"seed": 5, "data": {"production_windows": 1, "shifted_windows": 0}})
    examples, _ = build_intent_examples(seed=5)
    splits, report = data.split_examples(examples, None, cfg.data, 5, "x", builtin=True)
    assert report.gold == "per_label"
    assert len(splits["transfer"]) == data.BUILTIN_TRANSFER_SIZE
    assert splits["gold_test"]["label"].value_counts().max() <= cfg.data.gold_per_label


def test_a_file_of_fifty_rows_still_gets_every_split_and_says_what_it_did(tmp_path):
    path = labelled_file(tmp_path, {"yes": 30, "no": 20})
    result = data.run(all_cfg(path), tmp_path / "out")
    sizes = result.sizes
    assert (sizes["gold_test"], sizes["gold_val"], sizes["gold_train"]) == (10, 5, 35)
    for name in ("gold_train", "gold_val", "gold_test"):
        assert set(data.read_split(tmp_path / "out", name)["label"]) == {"yes", "no"}
    assert result.report.augmented == 70 and sizes["transfer"] == 70


def test_labels_are_read_as_the_file_writes_them(tmp_path, caplog):
    """'None' and 'NA' are labels, '001' and '010' stay apart, an empty cell is a missing label, and
    labels that differ only in spaces or case are kept apart with a warning."""
    import logging

    from distill.config import DataConfig
    from distill.data import load_examples

    rows = ["text,label"] + [f"{kind} {i},{label}" for i in range(5)
                             for kind, label in (("lights on", "None"), ("lights off", "NA"), ("timer", "001"),
                                                 ("alarm", "010"), ("stop", "timer "), ("cancel", "timer"))]
    path = tmp_path / "labels.csv"
    path.write_text("\n".join(rows + ["what time is it,"]) + "\n")
    with caplog.at_level(logging.WARNING, logger="distill"):
        frame = load_examples(DataConfig(path=str(path)))
    counts = frame["label"].value_counts(dropna=False).to_dict()
    assert {k: v for k, v in counts.items() if isinstance(k, str)} == {
        "None": 5, "NA": 5, "001": 5, "010": 5, "timer ": 5, "timer": 5}
    assert frame["label"].isna().sum() == 1
    assert "labels ['timer', 'timer '] differ only in case or spaces" in caplog.text
