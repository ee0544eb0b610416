"""MLflow models-from-code definition of a distill text classifier.

MLflow copies this file into the logged model; the weights travel as the
artifact ``model`` (a Hugging Face folder, safetensors only). Input: a
DataFrame with a ``text`` column. Output: ``label``, ``score`` and one
probability column per class.
"""

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel


class TextClassifier(PythonModel):
    def load_context(self, context):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        folder = context.artifacts["model"]
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True).eval()
        config = self.model.config
        self.labels = [config.id2label[i] for i in range(config.num_labels)]
        self.max_length = self._evaluated_length(folder)
        self.cut = self._card(folder).get("cut") or {"how": "head"}
        self.torch = torch
        self._served = self._served_module()
        config = context.model_config or {}
        self.model = self._serving_model(folder, config.get("threads"), config.get("onnx_file"))

    @staticmethod
    def _card(folder) -> dict:
        import json
        from pathlib import Path

        card = Path(folder) / "distill.json"
        return json.loads(card.read_text()) if card.is_file() else {}

    @classmethod
    def _evaluated_length(cls, folder) -> int:
        """The input length the model was evaluated with (its distill card), so serving cuts texts alike.

        The same rule as distill.lengths.model_length, written here because a served model may run
        where distill is not installed."""
        meta = cls._card(folder)
        return int((meta.get("length") or {}).get("max_length") or (meta.get("train") or {}).get("max_length")
                   or 128)

    def _cut(self, texts: list) -> list:
        """Long texts cut as the model was trained to read them (its card's ``cut``: head, or head + tail)."""
        if self.cut.get("how", "head") == "head":
            return texts
        try:
            from distill.cut import cut_texts
        except ImportError:
            from cut import cut_texts  # shipped beside this file (log_model's code_paths)
        return cut_texts(self.tokenizer, texts, self.max_length, self.cut)

    def _encode(self, texts: list) -> dict:
        """One batch as the evaluation encodes it: cut as the card says, padded to its longest text; a single
        text through the same private copy of the tokenizer's Rust backend the evaluation timed."""
        texts = self._cut(texts)
        if len(texts) == 1:
            single = self._served.single_text_encoder(self.tokenizer, self.max_length, texts[0])
            if single is not None:
                return single(texts[0])
        return dict(self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                   return_tensors="pt"))

    @staticmethod
    def _served_module():
        try:
            from distill import served
        except ImportError:
            import served  # shipped beside this file (log_model's code_paths)
        return served

    def _serving_model(self, folder, threads, onnx_file=None):
        """ONNX Runtime on the file the evaluation timed and the gates passed, with the evaluation's thread count:
        the folder's ``model.onnx`` (exported and checked against the eager model when the model was saved), or
        the file the version was registered with (``onnx_file`` in its model_config: ``model-int8.onnx`` for an
        INT8 version). ``self.runtime`` says which. The eager model where the folder has no export or
        DISTILL_RUNTIME=eager; an INT8 version without its INT8 file is an error, not a quiet fp32 model. The
        session is distill's own (distill/served.py, shipped beside this file): it serves alike without
        distill."""
        import logging
        import os
        from pathlib import Path

        log = logging.getLogger(__name__)
        self.runtime = "eager"
        name = onnx_file or self._served.ONNX_FILE
        if os.environ.get("DISTILL_RUNTIME", "onnxruntime") == "eager":
            if name != self._served.ONNX_FILE:
                log.warning("DISTILL_RUNTIME=eager: serving the float weights, not %s that this version was "
                            "evaluated and gated as", name)
            return self.model
        path = Path(folder) / name
        if not path.is_file():
            if name != self._served.ONNX_FILE:
                raise FileNotFoundError(f"{folder} has no {name}, the model this version was registered to serve")
            log.warning("%s has no %s: serving the eager model", folder, path.name)
            return self.model
        self.runtime = "onnxruntime" if name == self._served.ONNX_FILE else f"onnxruntime ({name})"
        return self._served.OnnxClassifier(path, self._served.session_threads(threads), eager=self.model)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        texts = [str(text) for text in model_input["text"].tolist()]
        with self.torch.inference_mode():
            chunks = [self.model(**self._encode(texts[start:start + 64])).logits
                      for start in range(0, len(texts), 64)]
        logits = self.torch.cat(chunks).float().numpy() if chunks else np.zeros((0, len(self.labels)), np.float32)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True)) if len(logits) else logits
        probs /= probs.sum(axis=1, keepdims=True) if len(probs) else 1
        best = probs.argmax(axis=1)
        columns = {"label": [self.labels[i] for i in best], "score": probs[np.arange(len(best)), best]}
        columns.update((f"p_{label}", probs[:, i]) for i, label in enumerate(self.labels))
        return pd.DataFrame(columns, copy=False)


mlflow.models.set_model(TextClassifier())
