"""The serving check: a new champion must load by its registry URI in a fresh interpreter and answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from mlflow import MlflowClient
from prefect import task

from distill.config import PipelineConfig
from tasks.aliases import PromotionError, alias_version
from tasks.registry import NETWORK, check_model_code, configure, tracking_uri

SMOKE = """
import json, sys, time
import mlflow, pandas as pd
start = time.perf_counter()
model = mlflow.pyfunc.load_model(sys.argv[1])
out = model.predict(pd.DataFrame({"text": [sys.argv[2]]}))
print(json.dumps({"label": str(out["label"].iloc[0]), "score": float(out["score"].iloc[0]),
                  "seconds": round(time.perf_counter() - start, 2)}))
"""


@task(name="serving check", **NETWORK)
def serving_check(cfg: PipelineConfig, text: str, project_dir: str = ".", alias: str = "champion") -> dict:
    """Load ``models:/<student>@<alias>`` in a fresh interpreter, as a server would, and classify ``text``."""
    configure(cfg.tracking, project_dir)
    uri = f"models:/{cfg.promote.student_model}@{alias}"
    check_model_code(uri, cfg.promote.trust_model_code)
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(cfg.tracking, project_dir)}
    proc = subprocess.run([sys.executable, "-c", SMOKE, uri, text], env=env, capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        raise PromotionError(f"{uri} did not load or answer in a fresh process:\n{proc.stderr.strip()[-2000:]}")
    return {"uri": uri, "version": alias_version(MlflowClient(), cfg.promote.student_model, alias),
            **json.loads(proc.stdout.strip().splitlines()[-1])}
