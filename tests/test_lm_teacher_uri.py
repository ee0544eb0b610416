"""lm.teacher_path as an MLflow model URI: a registered causal LM (a promoted LM student) teaches.

One SQLite tracking store serves the module. Two tiny causal LMs are versions 1 and 2 of
``distill-lm-student``, registered through the code path the LM flow uses (``log_causal_lm``). The
flow's fetch task pins the URI to a version and downloads it; the lm_teacher stage copies it into its
output; the teacher that loads from there is the registered one, weight for weight.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from distill.config import LMConfig, PipelineConfig, TrackingConfig
from distill.lm import teacher
from distill.models import ModelError
from flows import lm as lm_flow
from tasks import lm_teacher, registry
from tasks.retry import is_transient
from tests.conftest import make_examples
from tests.lm_tiny import save_tiny_lm, tiny_tokenizer

NAME = "distill-lm-student"


@dataclass
class Store:
    root: Path
    uri: str
    tracking: TrackingConfig
    folders: list[Path]  # the registered LMs: versions 1 and 2
    run_ids: list[str]
    plain_run: str  # a run holding a causal-LM folder as plain artifacts, not as an MLflow model


class Echo(mlflow.pyfunc.PythonModel):
    """A registered model with no Hugging Face folder in its artifacts."""

    def predict(self, context, model_input: list[str], params=None) -> list[str]:
        return model_input


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_teacher) -> Store:
    root = tmp_path_factory.mktemp("lm_registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracking = TrackingConfig(tracking_uri=uri, experiment="lm-teacher-uri")
    tokenizer = tiny_tokenizer(make_examples(per_label=6)["text"].tolist())
    folders = [save_tiny_lm(root / f"lm{seed}", tokenizer, seed=seed) for seed in (1, 2)]
    before = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        experiment = registry.configure(tracking, str(root))
        run_ids = []
        for folder in folders:
            with mlflow.start_run(experiment_id=experiment) as run:
                registry.log_causal_lm(folder, NAME, {"fingerprint": teacher.fingerprint_of(folder)}, "tiny LM")
            run_ids.append(run.info.run_id)
        client = MlflowClient()
        client.set_registered_model_alias(NAME, "champion", "1")
        with mlflow.start_run(experiment_id=experiment):  # a classifier: a Hugging Face folder, not a causal LM
            registry.log_causal_lm(tiny_teacher, "tiny-classifier", {}, "a classifier")
        with mlflow.start_run(experiment_id=experiment):  # no Hugging Face folder at all
            mlflow.pyfunc.log_model(name="model", python_model=Echo(), registered_model_name="echo",
                                    pip_requirements=["mlflow"])
        with mlflow.start_run(experiment_id=experiment) as plain:
            mlflow.log_artifacts(str(folders[0]), "plain")
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before
    return Store(root, uri, tracking, folders, run_ids, plain.info.run_id)


@pytest.fixture
def tracking(store, monkeypatch) -> TrackingConfig:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)  # the environment wins over the config
    return store.tracking


def config(uri: str, tracking: TrackingConfig) -> PipelineConfig:
    return PipelineConfig(lm=LMConfig(teacher_path=uri), tracking=tracking)


def fetch(uri: str, tracking: TrackingConfig, dest: Path) -> dict:
    """The flow's fetch task, without Prefect."""
    return lm_teacher.fetch_lm_teacher.fn(config(uri, tracking), str(dest), str(dest.parent))


def greedy(lm: teacher.CausalLM, text: str = "turn on the kitchen lights") -> torch.Tensor:
    ids = lm.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        return lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                                 do_sample=False)


def assert_same_lm(loaded: teacher.CausalLM, original: teacher.CausalLM) -> None:
    a, b = loaded.model.state_dict(), original.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "weights differ"
    assert torch.equal(greedy(loaded), greedy(original)), "greedy output differs"


def test_a_registered_lm_teaches_through_models_name_at_alias(store, tracking, tmp_path):
    uri = f"models:/{NAME}@champion"
    source = fetch(uri, tracking, tmp_path / "imported")
    assert (source["uri"], source["name"], source["version"], source["alias"]) == (uri, NAME, "1", "champion")
    assert source["resolved_uri"] == f"models:/{NAME}/1" and source["run_id"] == store.run_ids[0]

    cfg = config(uri, tracking)
    result = teacher.run(cfg, tmp_path / "lm_teacher", tmp_path / "imported")
    folder = teacher.teacher_dir(uri, tmp_path / "lm_teacher")
    assert folder == result.path == tmp_path / "lm_teacher"
    assert result.source == f"{uri} ({NAME} version 1)"
    assert_same_lm(teacher.load_causal_lm(folder), teacher.load_causal_lm(store.folders[0]))
    # provenance is not content: the fetched teacher has the registered folder's fingerprint
    assert result.fingerprint == teacher.fingerprint_of(store.folders[0])

    tags = lm_flow.teacher_lineage(cfg, folder)
    assert tags == {"teacher_source": f"{uri} ({NAME} version 1)", "teacher_uri": uri,
                    "teacher_run_id": store.run_ids[0], "teacher_model": NAME, "teacher_version": "1"}


def test_a_moved_alias_fetches_the_new_version_and_a_pinned_version_stays(store, tracking, tmp_path):
    client = MlflowClient(store.uri)
    client.set_registered_model_alias(NAME, "teaching", "1")
    assert fetch(f"models:/{NAME}@teaching", tracking, tmp_path / "imported")["version"] == "1"
    client.set_registered_model_alias(NAME, "teaching", "2")
    moved = fetch(f"models:/{NAME}@teaching", tracking, tmp_path / "imported")
    assert moved["version"] == "2" and moved["run_id"] == store.run_ids[1]
    cfg = config(f"models:/{NAME}@teaching", tracking)
    assert_same_lm(teacher.load_causal_lm(teacher.run(cfg, tmp_path / "t", tmp_path / "imported").path),
                   teacher.load_causal_lm(store.folders[1]))

    pinned = fetch(f"models:/{NAME}/1", tracking, tmp_path / "pinned")
    assert (pinned["version"], pinned["alias"]) == ("1", None)


def test_a_runs_uri_teaches_and_records_its_run(store, tracking, tmp_path):
    # the logged model's path in its run is its name: the registered name and the weights' fingerprint
    name = registry.logged_name(NAME, {"fingerprint": teacher.fingerprint_of(store.folders[1])})
    uri = f"runs:/{store.run_ids[1]}/{name}"
    source = fetch(uri, tracking, tmp_path / "imported")
    assert source["version"] is None and source["run_id"] == store.run_ids[1]
    result = teacher.run(config(uri, tracking), tmp_path / "lm_teacher", tmp_path / "imported")
    assert result.source == f"{uri} (run {store.run_ids[1]})"
    assert_same_lm(teacher.load_causal_lm(result.path), teacher.load_causal_lm(store.folders[1]))


@pytest.mark.parametrize("uri, message", [
    ("models:/no-such-lm@champion", r"no registered model named 'no-such-lm'; registered models: .*distill-lm-student"),
    (f"models:/{NAME}@nope", r"has no alias 'nope'; its aliases: @champion -> version 1"),
    (f"models:/{NAME}/9", r"has no version 9; its versions: 1, 2"),
    ("models:/tiny-classifier/1", r"BertForSequenceClassification, not a causal language model"),
    ("models:/echo/1", r"hold no causal-LM folder"),
    ("runs:/{plain_run}/plain", r"not an MLflow model \(no MLmodel file\)"),
])
def test_a_uri_that_names_no_causal_lm_is_refused_clearly(store, tracking, tmp_path, uri, message):
    with pytest.raises(ModelError, match=message) as caught:
        fetch(uri.format(plain_run=store.plain_run), tracking, tmp_path / "imported")
    assert not is_transient(caught.value), "a wrong URI is not retried"


def test_the_stage_refuses_a_uri_that_was_not_fetched(tmp_path):
    cfg = PipelineConfig(lm=LMConfig(teacher_path=f"models:/{NAME}@champion"))
    with pytest.raises(ModelError, match=r"has not been fetched.*distill fetch-teacher"):
        teacher.run(cfg, tmp_path / "lm_teacher", tmp_path / "imported")


def test_a_tracking_server_that_is_down_is_a_retried_connection_error(tmp_path, monkeypatch):
    from tests.mlflow_server import free_port

    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # no retries inside MLflow: the task's count
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.raises(ConnectionError, match=rf"the MLflow tracking server {uri} did not answer") as caught:
        fetch(f"models:/{NAME}@champion", TrackingConfig(tracking_uri=uri), tmp_path / "imported")
    assert is_transient(caught.value)
    assert not (tmp_path / "imported").exists()
