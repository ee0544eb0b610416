"""One pipeline run for tests/test_concurrent_runs.py: the real flow entry (``distill_pipeline.fn``, so its
project lock), with the stages replaced by a stand-in that does what they do to shared state.

The stand-in records the run's override as the flow does (.distill/overrides.yaml), then, stage by
stage, reads the run's configuration back (a clobbered value is recorded), writes models/ and reports/ outputs that
name the run, and finally registers a model version and promotes it, as registration and promotion
do. Usage: python tests/pipeline_run.py PROJECT NAME ALPHA RESULT_JSON
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

STAGES = ("label", "train_student", "evaluate")
MODEL = "concurrent-student"


def stand_in(name: str, alpha: float, result: dict):
    def distil(project_dir: str, overrides: list[str] | None = None, reason: str = "manual") -> dict:
        from mlflow import MlflowClient

        from distill.config import run_config, write_run_overrides
        from distill.io import read_json, write_json
        from tasks import aliases

        result["start"] = time.time()
        write_run_overrides(project_dir, overrides or [])
        for stage in STAGES:
            seen = run_config(project_dir).train.alpha
            if seen != alpha:
                result["clobbered"].append(f"{stage}: the run's params say alpha={seen}")
            write_json(Path(project_dir, "models/student/card.json"), {"run": name, "alpha": seen, "stage": stage})
            write_json(Path(project_dir, f"reports/evaluate/{stage}.json"), {"run": name, "alpha": seen})
            time.sleep(0.5)  # the stage's work; another run writing now would show below
            for path in ("models/student/card.json", f"reports/evaluate/{stage}.json"):
                if read_json(Path(project_dir, path))["run"] != name:
                    result["clobbered"].append(f"{stage}: {path} was rewritten by another run")
        client = MlflowClient()
        version = client.create_model_version(MODEL, source=str(Path(project_dir, "models/student").resolve())).version
        result["version"] = str(version)
        result["promotion"] = aliases.move_champion(client, MODEL, str(version), promoted_by=name)
        result["end"] = time.time()
        return {"completed": True}

    return distil


def main() -> None:
    project, name, alpha, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), Path(sys.argv[4])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from flows import pipeline

    result: dict = {"name": name, "clobbered": []}
    pipeline.distil = stand_in(name, alpha, result)
    # Start together: both runs have imported everything before either enters the flow.
    (out.parent / f"{name}.ready").touch()
    while len(list(out.parent.glob("*.ready"))) < 2:
        time.sleep(0.05)
    result["ready"] = time.time()
    pipeline.distill_pipeline.fn(project_dir=project, overrides=[f"train.alpha={alpha}"], monitor=False,
                                 reason="test")
    out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
