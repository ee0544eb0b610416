"""MLflow models-from-code definition of a distill text classifier.

MLflow copies this file into the logged model; the weights travel as the
artifact ``model`` (a Hugging Face folder, safetensors only). Input: a
DataFrame with a ``text`` column. Output: ``label``, ``score`` and one
probability column per class.
"""

import mlflow
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
        self.model = self._serving_model()

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
        """One batch as the evaluation encodes it: cut as the card says, padded to its longest text."""
        return dict(self.tokenizer(self._cut(texts), padding=True, truncation=True, max_length=self.max_length,
                                   return_tensors="pt"))

    def _serving_model(self):
        """The TorchScript trace the evaluation timed (checked against the eager model; ``self.runtime`` says
        which), or the eager model (DISTILL_RUNTIME=eager, or a trace that fails or differs). The tracing is
        distill's own (distill/traced.py, shipped beside this file), so it serves alike without distill."""
        import logging
        import os

        self.runtime = "eager"
        if os.environ.get("DISTILL_RUNTIME", "torchscript") == "eager":
            return self.model
        try:
            from distill.traced import trace_model
        except ImportError:
            from traced import trace_model  # shipped beside this file (log_model's code_paths)
        samples = ["turn on the lights in the kitchen", "what is the weather like tomorrow in the city",
                   "hi", "set a timer for ten minutes and remind me to check the oven please"]
        traced, why = trace_model(self.model, self._encode(samples[:1]), self._encode(samples))
        if traced is None:
            logging.getLogger(__name__).warning("%s", why)
            return self.model
        self.runtime = "torchscript"
        return traced

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        texts = model_input["text"].astype(str).tolist()
        rows = []
        with self.torch.inference_mode():
            for start in range(0, len(texts), 64):
                rows.append(self.model(**self._encode(texts[start:start + 64])).logits.softmax(dim=-1))
        probs = self.torch.cat(rows).numpy() if rows else self.torch.zeros((0, len(self.labels))).numpy()
        out = pd.DataFrame(probs, columns=[f"p_{label}" for label in self.labels])
        out.insert(0, "score", probs.max(axis=1) if len(probs) else [])
        out.insert(0, "label", [self.labels[i] for i in probs.argmax(axis=1)] if len(probs) else [])
        return out


mlflow.models.set_model(TextClassifier())
