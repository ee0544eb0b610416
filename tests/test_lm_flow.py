"""LLM distillation end to end through Prefect, DVC and MLflow, on tiny models.

A run whose teacher fails the LM teacher gate stops before any generation. Then two runs on one tiny
project copy: the first distils, evaluates against the teacher and the
undistilled baseline, registers the LM student and promotes it (the gate passes); the second trains
another student but forces the gate to fail, so it is registered and the champion stays where it was.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import make_examples
from tests.lm_tiny import save_tiny_lm, tiny_tokenizer
from tests.tiny_project import tiny_project

pytestmark = pytest.mark.slow  # ~4-5 min here: 16 `dvc repro` subprocesses, each importing torch + transformers

LM = {
    "prompts": {"train_size": 12, "heldout_size": 4},
    # a random tiny teacher never names the intent: its gate passes only with no minimum
    "teacher_gate": {"min_task_score": 0.0, "min_gain_over_majority": -1, "min_format_adherence": 0.0,
                     "max_refusal_rate": 1.0, "max_unsafe_rate": 1.0},
    "generate": {"max_new_tokens": 6, "batch_size": 4},
    "topk": {"k": 8, "batch_size": 4},
    "student": {"num_layers": 1, "hidden_size": 32, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 64,
                "max_position_embeddings": 512},
    "train": {"mode": "token", "epochs": 4, "batch_size": 4, "learning_rate": 1e-2, "device": "cpu",
              "max_length": 256},
    "evaluate": {"batch_size": 4, "latency_samples": 1, "warmup": 0, "draft_k": 2},
    "promote": {"max_perplexity": 1.0e6},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lm_project")
    examples = make_examples(per_label=12)
    tokenizer = tiny_tokenizer(examples["text"].tolist() + ["HassTurnOn HassTurnOff HassLightSet"])
    teacher = save_tiny_lm(root / "tiny_lm_teacher", tokenizer, seed=1)
    return tiny_project(root / "project", lm={**LM, "teacher_path": str(teacher)})


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    """Generation on a shared 2-core box: one thread here and in the DVC stage subprocesses."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def client(project: Path):
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    return MlflowClient()


def test_a_teacher_that_fails_its_gate_stops_the_flow_before_any_generation(harness, project):
    from flows.lm import distill_lm_pipeline
    from flows.outcome import summary_of

    state = distill_lm_pipeline(project_dir=str(project), overrides=["lm.teacher_gate.min_task_score=0.5"],
                                return_state=True)
    # the built-in data's task is rewrite, scored by task_contains
    assert state.is_failed() and "teacher gate failed" in state.message and "task_contains 0.000 <" in state.message
    summary = summary_of(state)
    assert not summary["completed"] and summary["teacher_metrics"]["prompts"] == 4
    assert (project / "reports/lm_teacher/report.md").is_file()
    assert not (project / "data/lm/completions.parquet").exists()  # nothing generated, trained or registered
    assert not (project / "models/lm_student").exists()
    assert not client(project).search_registered_models("name = 'distill-lm-student'")


def test_lm_flow_registers_the_student_and_promotes_only_through_the_gate(harness, project):
    from flows.lm import distill_lm_pipeline
    from flows.outcome import summary_of

    first = distill_lm_pipeline(project_dir=str(project))  # a Failed state would raise here
    assert first["completed"] and first["decision"]["passed"], first["decision"]["reasons"]
    assert set(first["metrics"]) == {"teacher", "student", "baseline"}
    assert (project / "reports/lm/metrics.json").is_file() and (project / "reports/lm/report.md").is_file()
    mlflow_client = client(project)
    name = "distill-lm-student"
    champion = mlflow_client.get_model_version_by_alias(name, "champion")
    assert str(champion.version) == first["student_version"]
    tags = champion.tags
    assert tags["promotion_gate"] == "passed" and tags["decision"] == "promoted"
    assert tags["teacher_fingerprint"] and tags["completions_md5"] and tags["topk_md5"]
    run = mlflow_client.get_run(first["run_id"])
    assert "lm_eval.student.perplexity" in run.data.metrics and run.data.tags["task"] == "lm"
    # A local teacher answers every prompt: 12 training and 4 held-out completions.
    assert run.data.metrics["teacher.calls"] == 16 and run.data.metrics["teacher.train_pool"] == 12
    assert run.data.tags["select_strategy"] == "all"

    # Another student (another learning rate) and a gate that cannot pass: registered, not promoted.
    state = distill_lm_pipeline(project_dir=str(project), overrides=[
        "lm.train.learning_rate=0.005", "lm.promote.max_perplexity=1.0"], return_state=True)
    # the flow run ends Failed (automations fire) and names the gate; the summary is its data
    assert state.is_failed() and "blocked by its gates" in state.message and "perplexity" in state.message
    second = summary_of(state)
    assert second["completed"] and not second["decision"]["passed"]
    assert {"prepare", "lm_teacher", "lm_prompts", "lm_generate", "lm_topk"} <= set(second["skipped_stages"])
    # lm_select reran (it reads lm.train) but chose the same: its unchanged file kept lm_generate skipped
    assert second["newly_registered"] and second["student_version"] != first["student_version"]
    assert any("perplexity" in r and ">" in r for r in second["decision"]["reasons"])
    version = mlflow_client.get_model_version(name, second["student_version"])
    assert version.tags["promotion_gate"] == "failed" and version.tags["decision"] == "blocked by gates"
    assert str(mlflow_client.get_model_version_by_alias(name, "champion").version) == first["student_version"]
    assert str(mlflow_client.get_model_version_by_alias(name, "challenger").version) == second["student_version"]
