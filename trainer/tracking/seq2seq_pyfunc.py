"""MLflow "model from code": an exported HF seq2seq dir served as a pyfunc mapping input text to output text.

Logged by path (mlflow.pyfunc.log_model(python_model=<this file>)), so loading it needs only mlflow,
torch and transformers, not this repository. Never import it: it registers itself with set_model().
(mlflow.transformers cannot log text2text models under transformers 5, which dropped that pipeline.)
"""

from __future__ import annotations

import mlflow
import pandas as pd
import torch
from mlflow.pyfunc import PythonModel, PythonModelContext
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

# Must match retrieval_core.model_sources.HF_MODEL_ARTIFACT; this file imports nothing from the repo.
HF_MODEL_ARTIFACT = "hf_model"


class Seq2SeqGenerator(PythonModel):
    def load_context(self, context: PythonModelContext) -> None:
        path = context.artifacts[HF_MODEL_ARTIFACT]
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSeq2SeqLM.from_pretrained(path).eval()

    def predict(self, context, model_input, params=None):  # untyped: MLflow would derive a schema from hints
        """Greedy generation; `model_input` is a DataFrame with an `input` column, or a list of strings."""
        texts = list(model_input["input"]) if isinstance(model_input, pd.DataFrame) else list(model_input)
        params = params or {}
        outputs: list[str] = []
        batch_size = int(params.get("batch_size") or 32)
        # The exported generation_config.json holds the training run's answer length.
        generation = {"max_new_tokens": int(params["max_new_tokens"])} if params.get("max_new_tokens") else {}
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True)
            with torch.no_grad():
                generated = self.model.generate(**batch, **generation)
            outputs.extend(self.tokenizer.batch_decode(generated, skip_special_tokens=True))
        return outputs


mlflow.models.set_model(Seq2SeqGenerator())
