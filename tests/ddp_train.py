"""Train a tiny dropout-free classifier with distill.trainer.train; run plainly or under torchrun.

    python tests/ddp_train.py OUT                              # one process
    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_train.py OUT

Rank 0 writes OUT/model.safetensors and OUT/history.json (other ranks' writes are dropped by distill.io).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill.io import atomic_dir, write_json  # noqa: E402
from distill.trainer import TrainData, TrainSettings, train  # noqa: E402
from tests.conftest import TEMPLATES, make_examples  # noqa: E402


def tiny_classifier():
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from distill.models import Classifier, packaged_encoder_path

    labels = sorted(TEMPLATES)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, num_labels=len(labels), hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    tokenizer = AutoTokenizer.from_pretrained(packaged_encoder_path())
    return Classifier(BertForSequenceClassification(config), tokenizer, labels)


def main(out: Path) -> None:
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    clf = tiny_classifier()
    frame = make_examples(per_label=30, seed=1)  # 120 texts: 7 global batches of 16 and one of 8
    ids = np.array([clf.labels.index(v) for v in frame["label"]])
    logits = np.random.default_rng(0).normal(size=(len(frame), len(clf.labels))).astype(np.float32)
    data = TrainData(frame["text"].tolist(), ids, logits)
    val = TrainData(frame["text"].tolist()[:40], ids[:40])
    settings = TrainSettings(max_steps=16, batch_size=16, learning_rate=3e-3, eval_every=4, patience=100,
                             kd_temperature=2.0, alpha=0.5, device="cpu", seed=5)
    result = train(clf, data, val, settings)
    with atomic_dir(out) as tmp:
        save_file({k: v.contiguous() for k, v in clf.model.state_dict().items()}, str(tmp / "model.safetensors"))
        write_json(tmp / "history.json", {"history": result.history, "world": int(
            __import__("os").environ.get("WORLD_SIZE", "1"))})


if __name__ == "__main__":
    main(Path(sys.argv[1]))
