"""MLflow models-from-code definition of a distill causal LM (the LM student).

MLflow copies this file into the logged model; the weights travel as the artifact ``model`` (a
Hugging Face causal-LM folder, safetensors only). Input: a DataFrame with a ``prompt`` column (the
request; the tokenizer's chat template is applied when it has one) and optionally ``system``.
Output: a ``completion`` column, greedy.
"""

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class CausalLMModel(PythonModel):
    def load_context(self, context):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = context.artifacts["model"]
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True).eval()
        self.torch = torch

    def _render(self, system, prompt):
        if getattr(self.tokenizer, "chat_template", None):
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": prompt}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return f"{system}\n\nRequest: {prompt}\nResponse:" if system else prompt

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        max_new_tokens = int((params or {}).get("max_new_tokens", 32))
        systems = model_input["system"] if "system" in model_input else [None] * len(model_input)
        out = []
        with self.torch.inference_mode():
            for system, prompt in zip(systems, model_input["prompt"].astype(str)):
                ids = self.tokenizer(self._render(system, prompt), add_special_tokens=False,
                                     return_tensors="pt")["input_ids"]
                pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else \
                    self.tokenizer.eos_token_id
                gen = self.model.generate(input_ids=ids, attention_mask=self.torch.ones_like(ids),
                                          max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
                out.append(self.tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True).strip())
        return pd.DataFrame({"completion": out})


mlflow.models.set_model(CausalLMModel())
