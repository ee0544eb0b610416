"""Shared fixtures: tiny data, a tiny config and a tiny teacher, all offline."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pandas as pd
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["GX_ANALYTICS_ENABLED"] = "false"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# The suite runs servers, workers and stage subprocesses beside each other on few cores. One torch
# thread per process avoids oversubscription, which made small models train 20-30 times slower here.
os.environ.setdefault("OMP_NUM_THREADS", "1")

TEMPLATES = {
    "lights_on": ["turn on the {x} lights", "switch the {x} lamp on", "lights on in the {x}"],
    "lights_off": ["turn off the {x} lights", "switch the {x} lamp off", "kill the lights in the {x}"],
    "weather": ["what is the weather in {x}", "will it rain in {x} today", "forecast for {x}"],
    "timer": ["set a timer for {n} minutes", "start a {n} minute timer", "timer {n} minutes please"],
}
PLACES = ["kitchen", "bedroom", "office", "garage", "hall", "attic", "porch", "study", "den", "loft",
          "paris", "tokyo", "lima", "oslo", "cairo"]


def make_examples(per_label: int = 30, seed: int = 0) -> pd.DataFrame:
    """Distinct short sentences for four labels."""
    rng = random.Random(seed)
    rows = []
    for label, templates in TEMPLATES.items():
        seen: set[str] = set()
        while len(seen) < per_label:
            text = rng.choice(templates).format(x=rng.choice(PLACES), n=rng.randint(1, 99))
            text = text if rng.random() < 0.5 else text + rng.choice([" now", " please", " thanks", ""])
            if text not in seen:
                seen.add(text)
                rows.append({"text": text, "label": label})
    return pd.DataFrame(rows)


@pytest.fixture(autouse=True)
def _no_leaked_tracking_uri():
    """mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI; no test may leave its URI (perhaps a
    stopped server) behind for the tests after it."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture
def tiny_csv(tmp_path: Path) -> Path:
    path = tmp_path / "examples.csv"
    make_examples().rename(columns={"text": "utterance", "label": "intent"}).to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def harness():
    """One Prefect test server for the whole session (it takes ~17 s to start here)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def tiny_params(data_path: Path | None) -> dict:
    """A params mapping small enough to train in seconds."""
    return {
        "seed": 3,
        "data": {"path": str(data_path) if data_path else None, "text_column": "utterance",
                 "label_column": "intent", "gold": "per_label", "gold_per_label": 12, "transfer_size": 40,
                 "production_windows": 1, "shifted_windows": 0, "window_size": 10},
        "teacher": {"epochs": 1, "batch_size": 16, "min_accuracy": 0.0, "min_macro_f1": 0.0},
        "student": {"num_layers": 1, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64},
        "size": {"search": False},  # tests/test_sizing.py and test_byod_flow.py search
        "train": {"epochs": 2, "batch_size": 16, "eval_every": 5, "device": "cpu"},
        # eager: the stages skip the ONNX export (seconds per model); test_runtime, test_registry and
        # test_flow's lifecycle serve and time the exports
        "evaluate": {"latency_samples": 5, "warmup": 1, "runtime": "eager"},
        "audit": {"min_slice_size": 3},
    }


@pytest.fixture
def tiny_cfg(tiny_csv: Path):
    from distill.config import config_from_dict

    return config_from_dict(tiny_params(tiny_csv))


@pytest.fixture
def labelled(tiny_cfg, tiny_teacher, tmp_path):
    """Prepared data, the imported tiny teacher and its cached outputs."""
    from distill import data, label, teacher

    prepared = tmp_path / "prepared"
    data.run(tiny_cfg, prepared)
    teacher_dir = tmp_path / "teacher"
    teacher.run(tiny_cfg, prepared, teacher_dir, teacher_path=tiny_teacher)
    outputs = tmp_path / "logits.parquet"
    label.run(tiny_cfg, prepared, teacher_dir, outputs)
    return prepared, teacher_dir, outputs


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    """A small random-init BERT classifier over the four labels, with the packaged tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from distill.models import Classifier, packaged_encoder_path, save_classifier

    torch.manual_seed(0)
    labels = sorted(TEMPLATES)
    tokenizer = AutoTokenizer.from_pretrained(packaged_encoder_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=128, num_labels=len(labels),
                        id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
    folder = tmp_path_factory.mktemp("teacher")
    save_classifier(Classifier(BertForSequenceClassification(config), tokenizer, labels), folder,
                    {"role": "teacher", "source": "test"}, export=True)
    return folder


@pytest.fixture(scope="session")
def mlflow_server_uri(tmp_path_factory) -> str:
    """A real `mlflow server` on 127.0.0.1 (SQLite backend, served local artifacts) for the session."""
    from tests.mlflow_server import mlflow_server

    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri
