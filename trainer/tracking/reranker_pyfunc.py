"""MLflow "model from code": an exported KARD reranker as a pyfunc scoring passages for a query.

    model = mlflow.pyfunc.load_model("runs:/<id>/model")
    model.predict(pd.DataFrame({"query": ["..."], "passages": [["title. text", ...]]}))  # -> [[score, ...]]

Logged by path with two artifacts: the exported directory and retrieval_core/late_interaction.py, which is
loaded from the artifact, so neither this file nor the model needs this repository. Never import it: it
registers itself with set_model().
"""

from __future__ import annotations

import importlib.util

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext

# Must match retrieval_core.model_sources.HF_MODEL_ARTIFACT and the code artifact of mlflow_tracker.RERANKER_PYFUNC.
HF_MODEL_ARTIFACT = "hf_model"
CODE_ARTIFACT = "late_interaction"


class PassageReranker(PythonModel):
    def load_context(self, context: PythonModelContext) -> None:
        code = context.artifacts[CODE_ARTIFACT]
        spec = importlib.util.spec_from_file_location("late_interaction", code)
        if spec is None or spec.loader is None:
            raise ImportError(f"the reranker's code artifact {code} is not a loadable Python file")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self.scorer = module.LateInteractionScorer(context.artifacts[HF_MODEL_ARTIFACT])

    def predict(self, context, model_input, params=None):  # untyped: MLflow would derive a schema from hints
        """One list of MaxSim scores per row, aligned with that row's passages."""
        rows = model_input.to_dict("records") if isinstance(model_input, pd.DataFrame) else list(model_input)
        return [self.scorer.score(row["query"], list(row["passages"])) for row in rows]


mlflow.models.set_model(PassageReranker())
