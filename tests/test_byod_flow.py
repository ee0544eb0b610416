"""Bring your own data and teacher: a fully labelled file and a RoBERTa teacher with its own BPE tokenizer.

The common case of a team that has a fine-tuned classifier and a labelled file: every default
except the data path, the column names and the teacher folder. The teacher is of another
architecture (RoBERTa: position ids offset by the padding index, no token types) and another
tokenizer (byte-level BPE, trained here on the data) than the bootstrap MiniLM.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import make_examples
from tests.tiny_project import tiny_project

pytestmark = pytest.mark.slow


def roberta_teacher(folder: Path, texts: list[str], labels: list[str]) -> Path:
    """A small RoBERTa classifier with a byte-level BPE tokenizer trained on ``texts``, fine-tuned briefly."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaForSequenceClassification

    from distill.models import Classifier, save_classifier
    from distill.trainer import TrainData, TrainSettings, train

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=400, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    backend = bpe._tokenizer  # the tokenizers.Tokenizer inside the implementation wrapper
    backend.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                        cls_token="<s>", sep_token="</s>")
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=128, max_position_embeddings=130, pad_token_id=1, bos_token_id=0,
                           eos_token_id=2, type_vocab_size=1, num_labels=len(labels),
                           id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
    clf = Classifier(RobertaForSequenceClassification(config), tokenizer, labels)
    ids = torch.tensor([labels.index(l) for l in make_examples(per_label=40, seed=9)["label"]]).numpy()
    data = TrainData(make_examples(per_label=40, seed=9)["text"].tolist(), ids)
    train(clf, data, data, TrainSettings(max_steps=60, batch_size=16, learning_rate=3e-3, patience=10**6,
                                         eval_every=20, max_length=32))
    save_classifier(clf, folder, {"role": "teacher", "source": "test: roberta"})
    return folder


def test_a_labelled_file_and_a_roberta_teacher_run_with_default_settings(harness, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    import flows.distillation
    from distill.gates import GateReport, choose_compressed
    # The compression gate's decisions are tested on their own (test_compress); here it is made to choose the
    # INT8 model, so that the registration of a compressed INT8 student is tested whatever the tiny models'
    # timings say.
    decisions = []

    def passing(*args, **kwargs):
        decisions.append(choose_compressed(*args, **kwargs))
        return "compressed_int8", GateReport(True, decisions[-1][1].reasons)

    monkeypatch.setattr(flows.distillation, "choose_compressed", passing)

    from distill.models import read_card
    from flows.pipeline import distill_pipeline

    frame = make_examples(per_label=60, seed=4).rename(columns={"text": "body", "label": "queue"})
    project = tiny_project(tmp_path / "project")
    frame.to_csv(project / "data/raw/tickets.csv", index=False)
    teacher = roberta_teacher(tmp_path / "roberta", frame["body"].tolist(), sorted(frame["queue"].unique()))
    # The user's settings: the file, its columns and the teacher; data sizes stay at their defaults.
    import yaml

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"] = {**params["data"], "path": "data/raw/tickets.csv", "text_column": "body",
                      "label_column": "queue", "gold": "auto", "transfer_size": None}
    params["teacher"]["path"] = str(teacher)
    # The shape search on, with candidates and steps a test can afford (and no speed-up to demand of
    # students as wide as this tiny teacher).
    params["size"] = {**params["size"], "search": True, "candidates": [[2, 64], [3, 64]], "steps": 5,
                      "min_speedup": 0, "min_speedup_int8": 0}
    # The tiny project's student trains a dozen steps; this file needs a few epochs of a faster one.
    params["train"].update(epochs=10, eval_every=12, patience=5, learning_rate=3e-3)
    params["compress"] = {**params.get("compress", {}), "vocabulary": True}  # asked for: BPE is left whole
    params["evaluate"]["runtime"] = "onnxruntime"  # the default: the stages export, and INT8 can be registered
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    summary = distill_pipeline(project_dir=str(project), monitor=False)

    assert summary["completed"] is True, summary.get("teacher_gate")
    report = pd.read_json(project / "data/prepared/report.json", typ="series")
    assert report["gold"] == "all" and report["labelled"] == 240
    assert report["splits"]["gold_test"] == 48 and report["splits"]["gold_val"] == 24
    student = read_card(project / "models/student")
    assert student["labels"] == sorted(frame["queue"].unique())
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(project / "models/student").model_type == "roberta"
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(project / "models/student").get_vocab() == \
        AutoTokenizer.from_pretrained(teacher).get_vocab()
    assert read_card(project / "models/teacher")["length"]["max_length"] >= 32
    shape = pd.read_json(project / "models/student_shape.json", typ="series")
    assert shape["searched"] and shape["budget_met"] and len(shape["candidates"]) == 2
    assert all(c["val_accuracy"] is not None for c in shape["candidates"])
    assert AutoConfig.from_pretrained(project / "models/student").num_hidden_layers == shape["shape"]["num_layers"]
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    client = MlflowClient()
    # The user's teacher, read with the run's cut (head + tail): its card says so, and its fingerprint says it.
    imported = read_card(project / "models/teacher")
    assert imported["cut"]["how"] == "head_tail" and imported["fingerprint"] != read_card(teacher)["fingerprint"]
    assert client.get_model_version_by_alias("distill-teacher", "champion").tags["fingerprint"] == \
        imported["fingerprint"]
    metrics = summary["metrics"]
    assert metrics["teacher"]["accuracy"] > 0.9, "the RoBERTa teacher, read through its own tokenizer"
    assert metrics["student"]["accuracy"] > 0.6 and metrics["student"]["agreement_with_teacher"] > 0.6
    # distil, then prune, then quantize: the BPE vocabulary is left whole (the step names why), the feed-forward
    # layers are pruned and recovered, both versions are evaluated, and the compressed student is registered
    compressed = read_card(project / "models/student_compressed")
    assert [s["step"] for s in compressed["compression"]["steps"]] == ["student", "feed-forward", "recovery"]
    assert "vocabulary: the tokenizer is BPE" in compressed["compression"]["skipped"][0]
    assert metrics["compressed"]["parameters"] < metrics["student"]["parameters"]
    assert metrics["compressed_int8"]["size_mb"] < metrics["compressed"]["size_mb"]
    assert decisions and summary["registered"] == "compressed_int8" and summary["compression"]["passed"]
    version = client.get_model_version("distill-student", summary["student_version"])
    assert version.tags["fingerprint"] == compressed["fingerprint"] != student["fingerprint"]
    assert version.tags["precision"] == "int8"
    assert version.tags["compression"].startswith("feed-forward + recovery + INT8 (dynamic): ")
    assert version.tags["eval.accuracy"] == f"{metrics['compressed_int8']['accuracy']:.4f}"
    assert "## Compression" in version.description and "| feed-forward |" in version.description
    assert "(`compressed_int8` in the evaluation; this version serves it)" in version.description
    audit = pd.read_json(project / "reports/audit/audit.json", typ="series")
    assert set(audit["compressed"]) == set(audit["compressed_int8"]) == {"passed", "reasons", "worst"}
    # the registered pyfunc serves the INT8 file the gates passed, and answers as the evaluation's INT8 model did
    # (dynamic INT8 scales each batch by its own range, so batches made otherwise may differ in a rare answer)
    served = mlflow.pyfunc.load_model(f"models:/distill-student/{summary['student_version']}")
    assert served.unwrap_python_model().runtime == "onnxruntime (model-int8.onnx)"
    predictions = pd.read_parquet(project / "reports/evaluate/predictions.parquet")
    answers = served.predict(predictions[["text"]])["label"].to_numpy()
    assert (answers == predictions["compressed_int8"].astype(str).to_numpy()).mean() >= 0.9
