"""Data contracts (distill.contracts) against a temporary copy of the committed gx/ context."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from distill import contracts
from distill.contracts import ContractError, ContractReport, check_frame

REPO = Path(__file__).resolve().parents[1]
REPO_GX = REPO / "gx"
LABELS = ["lights_on", "lights_off", "weather"]
PARAMS = {"max_text_chars": 50, "label_set": LABELS, "num_labels": 3}


@pytest.fixture(scope="module")
def gx_root(tmp_path_factory) -> Path:
    """A copy of the committed GX context (without run results), so tests never write to gx/."""
    assert (REPO_GX / "great_expectations.yml").is_file(), "run `python -m distill.contracts gx`"
    root = tmp_path_factory.mktemp("contracts") / "gx"
    shutil.copytree(REPO_GX, root, ignore=shutil.ignore_patterns("uncommitted"))
    return root


def raw_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "text": ["turn on the lights", "lights off please", "will it rain", "is it sunny"],
        "label": ["lights_on", "lights_off", "weather", "weather"],
    })


def prepared_frame() -> pd.DataFrame:
    rows = [
        ("turn on the lights", "lights_on", "gold_train"),
        ("switch the lamp off", "lights_off", "gold_train"),
        ("what is the weather", "weather", "gold_val"),
        ("lights on in the kitchen", "lights_on", "gold_test"),
        ("will it snow tomorrow", pd.NA, "transfer"),
        ("dim the hallway", None, "production"),
    ]
    return pd.DataFrame(rows, columns=["text", "label", "split"])


def teacher_frame(n: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(n, 3))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return pd.DataFrame({
        "text": [f"text {i}" for i in range(n)],
        "split": ["transfer"] * n,
        "prob_sum": probs.sum(axis=1),
        "max_abs_logit": np.abs(logits).max(axis=1),
        "num_logits": np.full(n, 3),
    })


def check(df, suite, root, **kwargs) -> ContractReport:
    kwargs.setdefault("source", "data/raw/examples.csv")
    kwargs.setdefault("parameters", PARAMS)
    return check_frame(df, suite, context_root=root, **kwargs)


def failure_of(df, suite, root, **kwargs) -> str:
    with pytest.raises(ContractError) as info:
        check(df, suite, root, **kwargs)
    return str(info.value)


# --------------------------------------------------------------------------- passing frames


@pytest.mark.parametrize(
    ("suite", "make"),
    [("raw_examples", raw_frame), ("prepared_splits", prepared_frame), ("teacher_outputs", teacher_frame)],
)
def test_good_frame_passes(gx_root, suite, make):
    report = check(make(), suite, gx_root)
    assert report == ContractReport(suite=suite, passed=True, failures=[], docs_path=report.docs_path)
    # the run result went to the temporary context, not to the repository's gx/
    assert list((gx_root / "uncommitted" / "validations" / suite).glob("*/*/*.json"))


def test_null_labels_of_unlabelled_splits_are_not_checked_against_label_set(gx_root):
    frame = prepared_frame()
    assert frame["label"].isna().sum() == 2  # pd.NA and None, in transfer and production
    assert check(frame, "prepared_splits", gx_root).passed


# --------------------------------------------------------------------------- raw_examples


def test_empty_text_fails_raw_examples_naming_expectation_column_and_source(gx_root):
    frame = raw_frame()
    frame.loc[1, "text"] = ""
    message = failure_of(frame, "raw_examples", gx_root, source="data/raw/user.csv")
    assert message.startswith("data/raw/user.csv: data contract 'raw_examples' failed: ")
    assert "expect_column_value_lengths_to_be_between on column 'text'" in message
    assert "1 unexpected values such as ['']" in message


def test_too_long_text_fails_with_the_parameter_as_bound(gx_root):
    frame = raw_frame()
    frame.loc[0, "text"] = "x" * 51
    message = failure_of(frame, "raw_examples", gx_root)
    assert "expect_column_value_lengths_to_be_between" in message
    assert "max_value=50" in message
    # the same frame passes with a larger max_text_chars
    assert check(frame, "raw_examples", gx_root, parameters={"max_text_chars": 51}).passed


def test_null_text_and_label_fail_raw_examples(gx_root):
    frame = raw_frame()
    frame.loc[0, "text"] = None
    frame.loc[2, "label"] = np.nan
    report = check(frame, "raw_examples", gx_root, raise_on_failure=False)
    assert not report.passed
    assert "expect_column_values_to_not_be_null on column 'text': 1 null values out of 4 (rows [0])" in report.failures
    assert "expect_column_values_to_not_be_null on column 'label': 1 null values out of 4 (rows [2])" in report.failures


def test_empty_frame_fails(gx_root):
    message = failure_of(raw_frame().iloc[:0], "raw_examples", gx_root)
    assert "expect_table_row_count_to_be_between: observed 0; expected min_value=1" in message


def test_missing_column_fails(gx_root):
    frame = raw_frame().drop(columns=["label"])
    message = failure_of(frame, "raw_examples", gx_root)
    assert "expect_column_to_exist on column 'label': the column is missing (columns are ['text'])" in message
    report = check(frame, "raw_examples", gx_root, raise_on_failure=False)
    assert report.failures[0].startswith("expect_column_to_exist on column 'label'")
    assert "expect_column_values_to_not_be_null on column 'label': not evaluated, the column is missing" in report.failures


# --------------------------------------------------------------------------- prepared_splits


def test_label_outside_label_set_fails_prepared_splits(gx_root):
    frame = prepared_frame()
    frame.loc[0, "label"] = "make_coffee"
    message = failure_of(frame, "prepared_splits", gx_root, source="prepared/")
    assert "data contract 'prepared_splits' failed" in message
    assert "expect_column_values_to_be_in_set on column 'label': 1 unexpected values such as ['make_coffee']" in message
    # ... and passes once the label is in the run's label set
    assert check(frame, "prepared_splits", gx_root,
                 parameters={**PARAMS, "label_set": [*LABELS, "make_coffee"]}).passed


def test_numpy_and_integer_label_sets_are_accepted(gx_root):
    frame = prepared_frame().assign(label=[0, 1, 2, 0, None, None])
    assert check(frame, "prepared_splits", gx_root, parameters={**PARAMS, "label_set": np.arange(3)}).passed
    message = failure_of(frame, "prepared_splits", gx_root, parameters={**PARAMS, "label_set": np.arange(2)})
    assert "on column 'label': 1 unexpected values such as [2]" in message


def test_duplicate_text_across_splits_fails(gx_root):
    frame = prepared_frame()
    frame.loc[4, "text"] = frame.loc[0, "text"]  # a gold_train text again in transfer
    message = failure_of(frame, "prepared_splits", gx_root)
    assert "expect_column_values_to_be_unique on column 'text': 2 duplicated values such as " \
           "['turn on the lights', 'turn on the lights']" in message


def test_unknown_split_and_unlabelled_gold_row_fail(gx_root):
    frame = prepared_frame()
    frame.loc[5, "split"] = "holdout"
    frame.loc[1, "label"] = None  # a gold_train row without label
    report = check(frame, "prepared_splits", gx_root, raise_on_failure=False)
    assert not report.passed
    assert any(f.startswith("expect_column_values_to_be_in_set on column 'split': 1 unexpected values such as ['holdout']")
               for f in report.failures)
    assert any(f.startswith("expect_column_values_to_not_be_null on column 'label' where split IN")
               and "(rows [1])" in f for f in report.failures)
    assert len(report.failures) == 2


def test_prepared_splits_text_length(gx_root):
    frame = prepared_frame()
    frame.loc[3, "text"] = ""
    message = failure_of(frame, "prepared_splits", gx_root)
    assert "expect_column_value_lengths_to_be_between on column 'text'" in message


# --------------------------------------------------------------------------- teacher_outputs


def test_nan_logits_fail_teacher_outputs(gx_root):
    frame = teacher_frame()
    frame.loc[2, "max_abs_logit"] = np.nan
    frame.loc[2, "prob_sum"] = np.nan  # softmax of a NaN row
    report = check(frame, "teacher_outputs", gx_root, raise_on_failure=False)
    assert not report.passed
    assert "expect_column_values_to_not_be_null on column 'max_abs_logit': 1 null values out of 6 (rows [2])" in report.failures
    assert "expect_column_values_to_not_be_null on column 'prob_sum': 1 null values out of 6 (rows [2])" in report.failures


def test_nan_prob_sum_alone_fails(gx_root):
    # GX's range checks skip nulls, so a NaN prob_sum is only caught by the not-null check
    frame = teacher_frame()
    frame.loc[0, "prob_sum"] = np.nan
    message = failure_of(frame, "teacher_outputs", gx_root)
    assert "expect_column_values_to_not_be_null on column 'prob_sum'" in message


@pytest.mark.parametrize("bad", [np.inf, -np.inf, 1e5])
def test_infinite_or_huge_logits_fail_teacher_outputs(gx_root, bad):
    frame = teacher_frame()
    frame.loc[4, "max_abs_logit"] = bad
    message = failure_of(frame, "teacher_outputs", gx_root, source="teacher_outputs/outputs.parquet")
    assert message.startswith("teacher_outputs/outputs.parquet: data contract 'teacher_outputs' failed: ")
    assert "expect_column_values_to_be_between on column 'max_abs_logit': 1 unexpected values" in message
    assert "(rows [4])" in message


def test_probabilities_not_summing_to_one_fail(gx_root):
    frame = teacher_frame()
    frame.loc[1, "prob_sum"] = 0.98
    message = failure_of(frame, "teacher_outputs", gx_root)
    assert "expect_column_values_to_be_between on column 'prob_sum': 1 unexpected values such as [0.98]" in message


def test_wrong_num_logits_fails(gx_root):
    frame = teacher_frame()
    message = failure_of(frame, "teacher_outputs", gx_root, parameters={"num_labels": 4})
    assert "expect_column_values_to_be_between on column 'num_logits': 6 unexpected values such as [3, 3, 3, 3, 3]" in message
    assert "min_value=4, max_value=4" in message
    frame.loc[0, "num_logits"] = 2
    message = failure_of(frame, "teacher_outputs", gx_root, parameters={"num_labels": 3})
    assert "on column 'num_logits': 1 unexpected values such as [2]" in message


# --------------------------------------------------------------------------- API behaviour


def test_raise_on_failure_false_returns_report(gx_root):
    frame = raw_frame()
    frame.loc[[0, 3], "text"] = ""
    report = check(frame, "raw_examples", gx_root, raise_on_failure=False)
    assert isinstance(report, ContractReport)
    assert report.suite == "raw_examples"
    assert report.passed is False
    assert report.failures == [
        "expect_column_value_lengths_to_be_between on column 'text': 2 unexpected values such as ['', ''] "
        "out of 4 (rows [0, 3]); expected min_value=1, max_value=50"
    ]


def test_contract_error_is_a_value_error_carrying_the_report(gx_root):
    frame = raw_frame().drop(columns=["text"])
    with pytest.raises(ValueError) as info:
        check(frame, "raw_examples", gx_root)
    assert isinstance(info.value, ContractError)
    assert info.value.report is not None and info.value.report.passed is False
    assert str(info.value) == "data/raw/examples.csv: data contract 'raw_examples' failed: " + "; ".join(
        info.value.report.failures)


def test_docs_path_is_the_html_index_of_the_context(gx_root):
    report = check(raw_frame(), "raw_examples", gx_root)
    assert report.docs_path == gx_root / "uncommitted" / "data_docs" / "local_site" / "index.html"
    assert report.docs_path.is_file()
    html = report.docs_path.read_text(encoding="utf-8")
    assert html.lstrip().lower().startswith("<!doctype html") or "<html" in html.lower()
    assert "raw_examples" in html
    pages = list((gx_root / "uncommitted" / "data_docs" / "local_site" / "validations" / "raw_examples").rglob("*.html"))
    assert pages


def test_old_run_results_are_pruned(tmp_path, monkeypatch):
    root = tmp_path / "gx"
    shutil.copytree(REPO_GX, root, ignore=shutil.ignore_patterns("uncommitted"))
    monkeypatch.setattr(contracts, "KEEP_RESULTS_PER_SUITE", 2)
    for _ in range(4):
        check(raw_frame(), "raw_examples", root)
    results = list((root / "uncommitted" / "validations" / "raw_examples").glob("*/*/*.json"))
    pages = list((root / "uncommitted" / "data_docs" / "local_site" / "validations" / "raw_examples").glob("*/*/*.html"))
    assert len(results) == 2
    assert len(pages) == 2


def test_unknown_suite_and_missing_parameters_are_rejected(gx_root):
    with pytest.raises(ValueError, match="unknown data contract suite 'nope'"):
        check(raw_frame(), "nope", gx_root)
    with pytest.raises(ValueError, match=r"needs the parameter\(s\) \['label_set'\]"):
        check(prepared_frame(), "prepared_splits", gx_root, parameters={"max_text_chars": 50})


def test_missing_context_says_how_to_create_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"python -m distill\.contracts gx"):
        check(raw_frame(), "raw_examples", tmp_path / "no_gx")
    assert not (tmp_path / "no_gx").exists()  # GX did not scaffold a context there


def test_import_does_not_import_great_expectations():
    code = "import sys, distill.contracts; print('great_expectations' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _suite_content(root: Path) -> dict[str, list]:
    content = {}
    for path in sorted((root / "expectations").glob("*.json")):
        suite = json.loads(path.read_text())
        content[suite["name"]] = [(e["type"], e["kwargs"]) for e in suite["expectations"]]
    return content


def test_committed_context_matches_build_context(tmp_path):
    """gx/ is what `python -m distill.contracts gx` writes: same suites, checkpoints and settings."""
    built = tmp_path / "gx"
    contracts.build_context(built)
    assert _suite_content(built) == _suite_content(REPO_GX)
    assert set(_suite_content(built)) == set(contracts.SUITES)
    for name in contracts.SUITES:
        checkpoint = json.loads((REPO_GX / "checkpoints" / f"{name}.json").read_text())
        assert [a["type"] for a in checkpoint["actions"]] == ["update_data_docs"]
        assert checkpoint["result_format"]["result_format"] == "SUMMARY"
        assert (REPO_GX / "validation_definitions" / f"{name}.json").is_file()
    config = (REPO_GX / "great_expectations.yml").read_text()
    assert "uncommitted/data_docs/local_site/" in config and "uncommitted/validations/" in config
    # regenerating over an existing context keeps its run results
    (built / "uncommitted" / "keep.txt").write_text("x")
    contracts.build_context(built)
    assert (built / "uncommitted" / "keep.txt").is_file()
    assert _suite_content(built) == _suite_content(REPO_GX)


def test_build_context_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        contracts.build_context(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
