"""The registry path against `mlflow server` backed by a real PostgreSQL (Debian's), on 127.0.0.1.

The test starts a throwaway PostgreSQL cluster and an MLflow server on it with a local artifact
root, then does what the pipeline does: register the teacher (champion), log a pipeline run,
register the student (challenger), promote it (champion, the teacher model untouched), read the
aliases back and download the champion's weights through the server. Finally it looks in the
database itself, so the rows are known to live in PostgreSQL and not in some fallback store.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from distill.config import PipelineConfig, PromoteConfig, TrackingConfig
from distill.models import read_card
from tasks import registry, tracking
from tests.mlflow_server import mlflow_server, postgres, postgres_bin


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(tracking URI, libpq database URI): MLflow on PostgreSQL, both stopped after the module."""
    if postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed (CI installs it: apt-get install postgresql)")
    with postgres("mlflow") as database:
        # SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3; the pinned driver is psycopg2.
        backend = database.replace("postgresql://", "postgresql+psycopg2://", 1)
        with mlflow_server(tmp_path_factory.mktemp("mlflow-pg"), backend_store_uri=backend) as uri:
            yield uri, database


def weights_digest(folder: Path) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def test_registration_and_promotion_on_a_postgres_backed_server(server, tiny_teacher, tmp_path, monkeypatch):
    uri, database = server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = PipelineConfig(tracking=TrackingConfig(experiment="postgres"),
                         promote=PromoteConfig(student_model="pg-student", teacher_model="pg-teacher"))
    card = read_card(tiny_teacher)

    teacher_version = registry.register_teacher.fn(cfg, str(tiny_teacher), card)
    assert registry.register_teacher.fn(cfg, str(tiny_teacher), card) == teacher_version  # once per fingerprint
    run_id = tracking.log_run.fn(cfg, {"eval": {"student": {"accuracy": 0.75}}}, {"reason": "test"}, [])
    # The tiny teacher stands in for a student: registration only reads the folder and its card.
    version, fresh = registry.register_student.fn(cfg, run_id, str(tiny_teacher), card, {"reason": "test"},
                                                  "student card")
    assert fresh and version == "1"
    client = MlflowClient()
    assert client.get_registered_model("pg-student").aliases == {"challenger": "1"}
    assert registry.promote.fn(cfg, version, promoted_by="test")["changed"]

    assert registry.champion_version(cfg) == version
    assert client.get_registered_model("pg-teacher").aliases == {"champion": teacher_version}
    stored = client.get_model_version("pg-student", version)
    assert stored.tags["fingerprint"] == card["fingerprint"] and stored.tags["promoted_by"] == "test"
    assert stored.run_id == run_id
    assert mlflow.get_run(run_id).data.metrics["eval.student.accuracy"] == 0.75
    folder = registry.fetch_model_folder("models:/pg-student@champion", tmp_path / "champion")
    assert weights_digest(folder) == weights_digest(tiny_teacher)

    import psycopg2

    with psycopg2.connect(database) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT alias, version FROM registered_model_aliases WHERE name = 'pg-student'")
        assert sorted(cursor.fetchall()) == [("challenger", 1), ("champion", 1)]
        cursor.execute("SELECT name FROM registered_models ORDER BY name")
        assert cursor.fetchall() == [("pg-student",), ("pg-teacher",)], "the promotion left a model behind"
    connection.close()
