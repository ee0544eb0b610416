"""The LM prompt set's tasks: route (the gold label) and rewrite (what the request names), and their defaults."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from distill.config import config_from_dict
from distill.intents import named_entity
from distill.lm import prompts as lm_prompts
from distill.lm.evaluate import task_accuracy
from distill.lm.prompts import TASKS, LMDataError, PromptTemplate, read_prompts

REQUESTS = [("turn on the porch light in the kitchen", "HassTurnOn"), ("kitchen lights off", "HassTurnOff"),
            ("set a 5 minute pasta timer", "HassStartTimer"), ("pause the 10 minute timer", "HassPauseTimer"),
            ("what's the temperature", "HassClimateGetTemperature"), ("add oat milk to my list", "HassShoppingListAddItem"),
            ("turn off the fan in the sauna", "HassTurnOff"), ("how warm is it in the office", "HassClimateGetTemperature"),
            ("cancel my timer", "HassCancelTimer"), ("open the blinds", "HassTurnOn")]


@pytest.mark.parametrize("text, entity", [("turn the fan of our porch light to top", "porch light"),  # a device first,
                                          ("turn off the fan in the sauna", "fan"),                    # before a room
                                          ("continue basement timer", "basement"),
                                          ("set a 5 minute pasta timer", "pasta"),
                                          ("95 hours timer", "95"),                                   # else a number
                                          ("what's the temperature", None)])                          # else nothing
def test_named_entity_is_the_most_specific_value_the_request_names(text, entity):
    assert named_entity(text) == entity


def prepared(tmp_path):
    folder = tmp_path / "prepared"
    folder.mkdir(exist_ok=True)
    frame = pd.DataFrame(REQUESTS, columns=["text", "label"])
    for name, rows in (("gold_train", frame.iloc[:4]), ("gold_val", frame.iloc[4:6]), ("gold_test", frame.iloc[6:])):
        rows.to_parquet(folder / f"{name}.parquet")
    (folder / "labels.json").write_text(json.dumps({"labels": sorted(frame["label"].unique())}))
    return folder


def test_the_built_in_data_gets_the_rewrite_task_with_what_each_request_names(tmp_path):
    cfg = config_from_dict({"lm": {"prompts": {"train_size": 10, "heldout_size": 10}}})
    result = lm_prompts.run(cfg, prepared(tmp_path), tmp_path / "prompts.parquet")
    table, meta = read_prompts(tmp_path / "prompts.parquet")
    assert result.task == meta["task"] == "rewrite" and "labels" not in meta  # any ended answer is well formed
    references = dict(zip(table["request"], table["reference"]))
    assert references == {t: named_entity(t) for t, _ in REQUESTS if named_entity(t)}  # named nothing: left out
    assert references["turn on the porch light in the kitchen"] == "porch light" and len(references) == 8
    template = PromptTemplate.of(meta)
    assert template.system == TASKS["rewrite"]["instruction"] and len(template.examples) == 5
    # the task's score: a rewrite that keeps the name counts, one that drops it does not
    assert task_accuracy(["Could you please turn off the fan in the sauna?", "Please turn off the sauna."],
                         ["fan", "fan"])["task_contains"] == 0.5


def test_your_own_data_gets_the_route_task_and_rewrite_is_refused_with_what_to_set(tmp_path):
    own = config_from_dict({"data": {"path": str(tmp_path / "mine.csv")},
                            "lm": {"prompts": {"train_size": 10, "heldout_size": 10, "examples": [["hi", "greeting"]]}}})
    lm_prompts.run(own, prepared(tmp_path), tmp_path / "prompts.parquet")
    table, meta = read_prompts(tmp_path / "prompts.parquet")
    assert meta["task"] == "route" and meta["labels"] == sorted({label for _, label in REQUESTS})
    assert set(table["reference"]) <= set(meta["labels"]) and len(table) == len(REQUESTS)
    assert "HassTurnOn" in meta["instruction"] and meta["examples"] == [["hi", "greeting"]]  # configured examples win
    refused = own.model_copy(update={"lm": own.lm.model_copy(update={"prompts": own.lm.prompts.model_copy(
        update={"task": "rewrite"})})})
    with pytest.raises(LMDataError, match="only the built-in data's generator.*lm.prompts.task: route"):
        lm_prompts.run(refused, prepared(tmp_path), tmp_path / "refused.parquet")
    assert not (tmp_path / "refused.parquet").exists()
