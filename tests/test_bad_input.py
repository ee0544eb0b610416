"""The bad-input catalogue (docs/bad_input.md): each case is refused with a message naming the file, key or
row and what to do, and nothing is lost: no half-written output, an existing output left intact.

Cases already tested elsewhere are listed in docs/bad_input.md with their test; this file holds the rest.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from distill import data, label, students, teacher
from distill.config import ConfigError, config_from_dict, load_config
from distill.contracts import ContractError
from distill.label import TeacherOutputError
from distill.models import ModelError
from tests.conftest import make_examples, tiny_params


def examples(**renames) -> pd.DataFrame:
    return make_examples().rename(columns={"text": "utterance", "label": "intent"})


def cfg_for(path: Path, **data_overrides):
    params = tiny_params(path)
    params["data"].update(data_overrides)
    return config_from_dict(params)


@pytest.fixture
def good_output(tiny_cfg, tmp_path) -> tuple[Path, bytes]:
    """A prepared folder from a good run: a failed rerun must leave it as it was."""
    out = tmp_path / "prepared"
    data.run(tiny_cfg, out)
    return out, (out / "gold_train.parquet").read_bytes()


def refused(path: Path, good_output, error=data.DataError, match: str = "", **data_overrides) -> str:
    """Run prepare on ``path`` over an existing good output; return the message; check nothing changed."""
    out, before = good_output
    with pytest.raises(error, match=match) as err:
        data.run(cfg_for(path, **data_overrides), out)
    assert (out / "gold_train.parquet").read_bytes() == before, "the previous output was touched"
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".prepared")) == []
    return str(err.value)


# --- data ----------------------------------------------------------------------------------------

def test_wrong_encoding_says_save_as_utf8(tmp_path, good_output):
    path = tmp_path / "latin1.csv"
    frame = examples()
    frame.loc[0, "utterance"] = "allume la lumière du café"
    frame.to_csv(path, index=False, encoding="latin-1")
    message = refused(path, good_output, match="latin1.csv: not UTF-8 text")
    assert "save the file as UTF-8" in message


@pytest.mark.parametrize(("content", "what"), [(b"PK\x03\x04" + bytes(60), "a zip archive"),
                                               (None, "gzip-compressed")])
def test_a_binary_file_named_csv_says_what_it_is(tmp_path, good_output, content, what):
    import gzip

    path = tmp_path / "tickets.csv"
    path.write_bytes(content or gzip.compress(examples().to_csv(index=False).encode()))
    message = refused(path, good_output, match=f"tickets.csv: the file is {what}")
    assert "export it as a UTF-8 .csv file" in message and "iconv" not in message


def test_a_column_named_twice_in_the_header_is_refused(tmp_path, good_output):
    path = tmp_path / "twice.csv"
    frame = examples()
    frame["again"] = frame["utterance"].str.upper()
    path.write_text(frame.to_csv(index=False).replace("again", "utterance", 1))
    refused(path, good_output, match=r"twice.csv: the header names column 'utterance' twice \(columns 1 and 3\)")


def test_a_list_typed_text_column_is_not_stringified(tmp_path, good_output):
    path = tmp_path / "tokens.parquet"
    frame = examples()
    frame["utterance"] = frame["utterance"].str.split()
    frame.to_parquet(path)
    refused(path, good_output, match=r"tokens.parquet: column 'utterance' \(data.text_column\) holds ndarray "
                                     r"values, not text \(first at data row 1\)")


@pytest.mark.parametrize("blank", ["   ", "\u200b", " \u200b\t"])
def test_whitespace_and_zero_width_texts_are_empty_texts(tmp_path, good_output, blank):
    path = tmp_path / "blank.parquet"
    frame = examples()
    frame.loc[5, "utterance"] = blank
    frame.to_parquet(path)
    assert "text" in refused(path, good_output, error=ContractError, match="raw_examples")


def test_an_overlong_unlabelled_text_is_refused_before_it_reaches_any_split(tmp_path, good_output):
    path = tmp_path / "long.csv"
    frame = pd.concat([examples(), pd.DataFrame({"utterance": ["x" * 150_000], "intent": [""]})],
                      ignore_index=True)
    frame.to_csv(path, index=False)
    refused(path, good_output, match=r"long.csv: 1 texts are longer than data.max_text_chars \(100,000 "
                                     rf"characters\), the first at data row {len(frame)} \(150,000\)")


@pytest.mark.parametrize(("override", "match"), [
    ("data.label_column=utterance", "text_column and label_column are both 'utterance'"),
    ("seed=-1", "seed: Input should be greater than or equal to 0"),
    ("seed=1e23", "seed: Input should be"),
])
def test_settings_that_used_to_end_in_a_traceback_are_refused_by_key(tmp_path, override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(tmp_path / "none.yaml", ["data.text_column=utterance", override], missing_ok=True)


def test_an_unknown_intent_language_lists_the_ones_there_are(tmp_path):
    cfg = config_from_dict({"data": {"language": "xx"}})
    with pytest.raises(data.DataError, match=r"data.language 'xx': home-assistant-intents has no sentences "
                                             r"for it; use one of .*\ben\b.*data.path"):
        data.run(cfg, tmp_path / "prepared")
    assert not (tmp_path / "prepared").exists()


def test_malformed_jsonl_line_is_named(tmp_path, good_output):
    path = tmp_path / "broken.jsonl"
    lines = [json.dumps({"utterance": t, "intent": l}) for t, l in examples().itertuples(index=False)]
    lines[6] = lines[6][:-3]
    path.write_text("\n".join(lines) + "\n")
    refused(path, good_output, match=r"broken.jsonl: line 7 is not valid JSON")


def test_jsonl_line_that_is_not_an_object_is_named(tmp_path, good_output):
    path = tmp_path / "list.jsonl"
    path.write_text(json.dumps({"utterance": "a", "intent": "b"}) + "\n" + json.dumps(["a", "b"]) + "\n")
    refused(path, good_output, match=r"line 2 holds a JSON list, not an object")


def test_header_only_csv_holds_no_rows(tmp_path, good_output):
    path = tmp_path / "header.csv"
    path.write_text("utterance,intent\n")
    refused(path, good_output, match="header.csv: the file holds no rows")


def test_a_single_class_is_refused(tmp_path, good_output):
    path = tmp_path / "one.csv"
    frame = examples()
    frame["intent"] = "timer"
    frame.to_csv(path, index=False)
    refused(path, good_output, match=r"every labelled row has the label 'timer'; a classifier needs at least two")


def test_conflicting_labels_for_one_text_name_the_rows(tmp_path, good_output):
    path = tmp_path / "clash.csv"
    frame = examples()
    frame = pd.concat([frame, pd.DataFrame({"utterance": [frame.loc[0, "utterance"]], "intent": ["weather"]})],
                      ignore_index=True)
    frame.to_csv(path, index=False)
    message = refused(path, good_output, match=r"1 texts carry conflicting labels, e.g. data rows \[1, 121\]")
    assert "keep one label per text" in message


def test_one_megabyte_text_fails_the_contract_naming_the_limit(tmp_path, good_output):
    path = tmp_path / "huge.parquet"
    frame = examples()
    frame.loc[5, "utterance"] = "turn on the lights " * 55_000  # ~1 MB
    frame.to_parquet(path)
    refused(path, good_output, match=r"huge.parquet: 1 texts are longer than data.max_text_chars \(100,000 "
                                     r"characters\), the first at data row 6 \(1,045,000\); .*raise data.max_text_chars")


def test_integer_labels_with_gaps_keep_their_names(tmp_path):
    """Mixed types: numeric labels with empty cells come back from pandas as floats; '1.0' must stay '1'."""
    frame = examples()
    frame["intent"] = frame["intent"].map({"lights_on": 1, "lights_off": 2, "weather": 3, "timer": 4})
    frame.loc[len(frame)] = {"utterance": "an unlabelled request", "intent": None}
    path = tmp_path / "numeric.csv"
    frame.to_csv(path, index=False)
    result = data.run(cfg_for(path), tmp_path / "out")
    assert result.labels == ["1", "2", "3", "4"]


def test_numbers_in_the_text_column_are_read_as_text(tmp_path):
    frame = examples()
    frame.loc[0, "utterance"] = 12345
    path = tmp_path / "mixed.parquet"
    frame.astype({"utterance": object}).to_json(path.with_suffix(".jsonl"), orient="records", lines=True)
    result = data.run(cfg_for(path.with_suffix(".jsonl")), tmp_path / "out")
    assert "12345" in set(data.read_split(tmp_path / "out", "gold_train")["text"]) | set(
        data.read_split(tmp_path / "out", "gold_test")["text"]) | set(data.read_split(tmp_path / "out", "gold_val")["text"])
    assert result.labels == sorted(set(examples()["intent"]))


def test_unsupported_file_type(tmp_path, good_output):
    path = tmp_path / "tickets.xlsx"
    path.write_bytes(b"PK\x03\x04")
    refused(path, good_output, match=r"tickets.xlsx: unsupported file type '.xlsx'; use one of")


def test_damaged_parquet_cannot_be_read(tmp_path, good_output):
    path = tmp_path / "damaged.parquet"
    examples().to_parquet(path)
    path.write_bytes(path.read_bytes()[:200])
    refused(path, good_output, match=r"damaged.parquet: could not be read as .parquet")


def test_no_labelled_row(tmp_path, good_output):
    path = tmp_path / "unlabelled.csv"
    frame = examples()
    frame["intent"] = None
    frame.to_csv(path, index=False)
    refused(path, good_output, match="no row has a label; the gold set needs labelled examples")


def test_unknown_split_values(tmp_path, good_output):
    path = tmp_path / "splits.csv"
    frame = examples()
    frame["split"] = np.where(np.arange(len(frame)) % 2, "train", "holdout")
    frame.to_csv(path, index=False)
    refused(path, good_output, match=r"unknown split values \['holdout'\]; use train / validation / test")


def test_missing_slice_column_names_the_key(tiny_csv, good_output):
    refused(tiny_csv, good_output, match=r"slice columns \['region'\] \(data.slice_columns\) not found",
            slice_columns=["region"])


def test_missing_label_column_lists_the_columns_found(tiny_csv, good_output):
    message = refused(tiny_csv, good_output, match=r"column 'category' \(data.label_column\) not found",
                      label_column="category")
    assert "['utterance', 'intent']" in message


# --- teacher -------------------------------------------------------------------------------------

@pytest.fixture
def prepared(tiny_cfg, tmp_path) -> Path:
    data.run(tiny_cfg, tmp_path / "prepared")
    return tmp_path / "prepared"


def refused_teacher(cfg, prepared: Path, folder: Path, match: str, tmp_path: Path) -> None:
    out = tmp_path / "teacher_out"
    with pytest.raises(ModelError, match=match):
        teacher.run(cfg, prepared, out, teacher_path=folder)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".teacher_out")]


def test_a_causal_language_model_is_not_a_teacher(tiny_cfg, prepared, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)).save_pretrained(folder)
    refused_teacher(tiny_cfg, prepared, folder, r"gpt2: a GPT2LMHeadModel \(a language model\), not a sequence "
                    "classifier", tmp_path)


def test_pickled_weights_are_never_loaded(tiny_cfg, prepared, tiny_teacher, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_teacher, folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    refused_teacher(tiny_cfg, prepared, folder, r"no \*.safetensors weights \(found \['pytorch_model.bin'\]\); "
                    "distill loads safetensors only, never pickle", tmp_path)


def test_truncated_teacher_weights(tiny_cfg, prepared, tiny_teacher, tmp_path):
    import shutil

    folder = tmp_path / "truncated"
    shutil.copytree(tiny_teacher, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    refused_teacher(tiny_cfg, prepared, folder, r"the weights or tokenizer cannot be loaded", tmp_path)


def test_flipped_bytes_in_a_distill_folder_are_refused_by_its_fingerprint(tiny_cfg, prepared, tiny_teacher,
                                                                          tmp_path):
    import shutil

    folder = tmp_path / "flipped"
    shutil.copytree(tiny_teacher, folder)
    weights = folder / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-100] ^= 0xFF  # inside a tensor: safetensors still loads it
    weights.write_bytes(bytes(raw))
    refused_teacher(tiny_cfg, prepared, folder, r"flipped: its weights, config or tokenizer differ from what distill "
                    r"wrote .* damaged or was edited", tmp_path)


def test_an_encoder_without_a_classification_head_is_not_a_teacher(tiny_cfg, prepared, tiny_teacher, tmp_path):
    from distill.models import load_classifier

    folder = tmp_path / "encoder"
    source = load_classifier(tiny_teacher)
    source.model.bert.save_pretrained(folder)  # the encoder alone, as a sentence-embedding model ships
    source.tokenizer.save_pretrained(folder)
    refused_teacher(tiny_cfg, prepared, folder, r"encoder: 2 weights are missing from the folder and would start "
                    r"random \(classifier.bias, classifier.weight\): it has no trained classification head", tmp_path)


def test_tokenizer_of_another_model_is_a_vocabulary_mismatch(tiny_cfg, prepared, tiny_teacher, tmp_path):
    import shutil

    folder = tmp_path / "small_vocab"
    shutil.copytree(tiny_teacher, folder)
    config = json.loads((folder / "config.json").read_text())
    from transformers import BertConfig, BertForSequenceClassification

    config.update(vocab_size=1000)
    small = BertForSequenceClassification(BertConfig(**{k: v for k, v in config.items()
                                                        if k not in ("architectures", "transformers_version")}))
    small.save_pretrained(folder)
    refused_teacher(tiny_cfg, prepared, folder, r"the tokenizer has 30522 tokens but the model's embeddings only "
                    r"1000; the tokenizer belongs to another model", tmp_path)


def test_folder_without_config(tiny_cfg, prepared, tmp_path):
    (tmp_path / "empty_model").mkdir()
    refused_teacher(tiny_cfg, prepared, tmp_path / "empty_model", r"not a Hugging Face model folder \(no config.json\)",
                    tmp_path)


def test_missing_teacher_outputs_say_run_the_label_stage(tmp_path):
    with pytest.raises(TeacherOutputError, match=r"teacher outputs not found; run the label stage first"):
        label.read_outputs(tmp_path / "logits.parquet")


def test_teacher_outputs_without_content_hash_are_refused(tiny_cfg, prepared, tiny_teacher, tmp_path):
    """A file from before content hashes (or written by another tool) cannot be verified, so it is not used."""
    import pyarrow.parquet as pq

    teacher.run(tiny_cfg, prepared, tmp_path / "teacher", teacher_path=tiny_teacher)
    out = tmp_path / "logits.parquet"
    label.run(tiny_cfg, prepared, tmp_path / "teacher", out)
    table = pq.read_table(out)
    meta = json.loads(table.schema.metadata[label.META_KEY])
    meta.pop("content_hash")
    pq.write_table(table.replace_schema_metadata({label.META_KEY: json.dumps(meta).encode()}), out)
    with pytest.raises(TeacherOutputError, match=r"without a content hash .*\(dvc repro label\)"):
        label.read_outputs(out)


# --- config --------------------------------------------------------------------------------------

def write_params(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_params_that_are_not_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"params.yaml: not valid YAML"):
        load_config(write_params(tmp_path, "train: [unclosed\n"))


def test_params_that_are_a_list(tmp_path):
    with pytest.raises(ConfigError, match="expected a mapping of sections at the top level"):
        load_config(write_params(tmp_path, "- train\n- data\n"))


def test_a_string_where_a_number_belongs(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.batch_size: Input should be a valid integer"):
        load_config(write_params(tmp_path, "train:\n  batch_size: thirty-two\n"))


def test_gold_fractions_that_do_not_sum_to_one(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.gold_fractions: .*three positive shares that sum to 1"):
        load_config(tmp_path / "none.yaml", ["data.gold_fractions=[0.5, 0.5, 0.5]"], missing_ok=True)


def test_candidates_without_the_teacher(tmp_path):
    with pytest.raises(ConfigError, match=r"evaluate\.candidates: .*include 'teacher'"):
        load_config(tmp_path / "none.yaml", ["evaluate.candidates=[student, baseline]"], missing_ok=True)


def test_teacher_layers_that_contradict_num_layers(tmp_path):
    with pytest.raises(ConfigError, match=r"teacher_layers names 3 layers but num_layers is 2"):
        load_config(tmp_path / "none.yaml", ["student.teacher_layers=[0, 2, 4]", "student.num_layers=2"],
                    missing_ok=True)


def test_override_into_a_value_that_is_not_a_section(tmp_path):
    with pytest.raises(ConfigError, match=r"'seed' is not a section"):
        load_config(tmp_path / "none.yaml", ["seed=3", "seed.x=1"], missing_ok=True)


def test_negative_checkpoint_interval(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.checkpoint_every: Input should be greater than or equal to 0"):
        load_config(tmp_path / "none.yaml", ["train.checkpoint_every=-5"], missing_ok=True)


@pytest.fixture
def labelled(tiny_cfg, prepared, tiny_teacher, tmp_path):
    teacher.run(tiny_cfg, prepared, tmp_path / "teacher", teacher_path=tiny_teacher)
    label.run(tiny_cfg, prepared, tmp_path / "teacher", tmp_path / "logits.parquet")
    return prepared, tmp_path / "teacher", tmp_path / "logits.parquet"


def test_eval_every_longer_than_the_run_is_shortened_with_a_warning(tiny_cfg, labelled, tmp_path, caplog):
    """A small data set must still train: the interval shrinks to a quarter of the run and says so."""
    prepared, teacher_dir, outputs = labelled
    cfg = tiny_cfg.model_copy(update={"train": tiny_cfg.train.model_copy(update={"eval_every": 500})})
    logged = []
    with caplog.at_level("WARNING", logger="distill"):
        result = students.run_student(cfg, prepared, teacher_dir, outputs, tmp_path / "student",
                                      on_log=lambda step, m: logged.append(step))
    assert re.search(r"train.eval_every \(500\) is longer than the whole run \(\d+ steps\)", caplog.text)
    assert len(logged) >= 4 and logged[-1] == result.steps


def test_vocab_size_with_teacher_init(tiny_cfg, labelled, tmp_path):
    prepared, teacher_dir, outputs = labelled
    cfg = tiny_cfg.model_copy(update={"student": tiny_cfg.student.model_copy(update={
        "vocab_size": 500, "init": "teacher", "hidden_size": None, "num_heads": None, "intermediate_size": None})})
    with pytest.raises(ModelError, match="needs the teacher's vocabulary: set student.vocab_size: null"):
        students.run_student(cfg, prepared, teacher_dir, outputs, tmp_path / "student")
    assert not (tmp_path / "student").exists()


def test_cuda_asked_for_without_a_gpu(tiny_cfg, labelled, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    prepared, teacher_dir, outputs = labelled
    cfg = tiny_cfg.model_copy(update={"train": tiny_cfg.train.model_copy(update={"device": "cuda"})})
    with pytest.raises(ModelError, match="train.device is 'cuda' but no CUDA device is visible"):
        students.run_student(cfg, prepared, teacher_dir, outputs, tmp_path / "student")


# --- services ------------------------------------------------------------------------------------

def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_tracking_server_down_names_the_server_and_is_retried(monkeypatch, tmp_path):
    import mlflow

    from distill.config import TrackingConfig
    from tasks import registry
    from tasks.retry import is_transient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(mlflow.exceptions.MlflowException, match=rf"API request to {uri}/api/.* Connection refused") \
            as err:
        registry.configure(TrackingConfig(tracking_uri=uri), str(tmp_path))
    assert is_transient(err.value), "the Prefect tasks' retry predicate must retry an unreachable server"


def test_dvc_remote_unreachable_after_retries(tmp_path):
    from tasks import dvc as dvc_tasks

    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the remote's folder should be")
    project = tmp_path / "project"
    project.mkdir()
    run = lambda *args: subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, check=True,  # noqa: E731
                                       capture_output=True)
    run("init", "--no-scm", "-q")
    run("remote", "add", "-d", "store", str(blocker / "remote"))
    (project / "data.txt").write_text("x")
    run("add", "-q", "data.txt")
    with pytest.raises(ConnectionError, match=r"dvc push failed: ERROR: .*Not a directory: .*not_a_folder.*dvc remote list"):
        dvc_tasks.push.fn(str(project))


def test_prefect_server_unreachable(tmp_path):
    script = "from prefect import flow\n@flow\ndef f():\n    return 1\nf()\n"
    env = {**os.environ, "PREFECT_API_URL": f"http://127.0.0.1:{closed_port()}/api",
           "PREFECT_CLIENT_MAX_RETRIES": "0"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode != 0
    assert "Failed to reach API at http://127.0.0.1:" in proc.stderr
