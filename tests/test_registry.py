"""Promotion, review, rollback and serving against a real `mlflow server` on 127.0.0.1.

One server and one Prefect test harness serve the module. Each test registers its own model
name, so the tests do not share aliases. Versions are cheap: the tiny classifier is logged as a
pyfunc once, and every version registers that same logged model.
"""

from __future__ import annotations

import contextvars
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from distill.config import PipelineConfig, PromoteConfig, TrackingConfig
from tasks import aliases as alias_tasks
from tasks import registry, scoring, tracking

PASSED = {"passed": True, "reasons": ["every gate passed (test)"]}
FAILED = {"passed": False, "reasons": ["student keeps 50.0% of the teacher's accuracy (< 90%)"]}


@pytest.fixture(scope="module")
def server(mlflow_server_uri):
    """MLFLOW_TRACKING_URI points at the server for this module (and the subprocesses it starts)."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_server_uri
    mlflow.set_tracking_uri(mlflow_server_uri)
    yield mlflow_server_uri
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture(scope="module")
def logged(server, tiny_teacher) -> str:
    """The tiny classifier logged and registered once, through the code path the flow uses."""
    cfg = config("fixture-model")
    experiment = registry.configure(cfg.tracking)
    with mlflow.start_run(experiment_id=experiment):
        version = registry.log_classifier(tiny_teacher, "fixture-model", {"fingerprint": "f0"}, "fixture")
    return MlflowClient().get_model_version("fixture-model", version).source


def config(name: str, **promote) -> PipelineConfig:
    return PipelineConfig(promote=PromoteConfig(student_model=name, **promote),
                          tracking=TrackingConfig(experiment="registry-tests"))


def register(source: str, name: str, count: int) -> list[str]:
    """``count`` new versions of ``name``, each tagged ``challenger`` in turn, as registration does."""
    client, versions = MlflowClient(), []
    for _ in range(count):
        version = mlflow.register_model(source, name).version
        client.set_registered_model_alias(name, "challenger", version)
        versions.append(version)
    return versions


def aliases(name: str) -> dict[str, str]:
    return {alias: str(v) for alias, v in MlflowClient().get_registered_model(name).aliases.items()}


def tags(name: str, version: str) -> dict[str, str]:
    return MlflowClient().get_model_version(name, version).tags


def test_registered_student_has_a_signature_an_example_and_predicts_by_alias(logged):
    info = mlflow.models.get_model_info("models:/fixture-model/1")
    assert info.signature.inputs.input_names() == ["text"]
    assert info.signature.outputs.input_names()[:2] == ["label", "score"]
    assert {"p_lights_on", "p_timer"} <= set(info.signature.outputs.input_names())
    assert info.saved_input_example_info is not None
    client = MlflowClient()
    # the version's source is its MLflow 3 logged model, named for the registered name and the fingerprint
    source = client.get_model_version("fixture-model", "1").source
    assert source.startswith("models:/m-")
    assert client.get_logged_model(source.removeprefix("models:/")).name == "fixture-model-f0"
    register(logged, "loads-by-alias", 1)
    model = mlflow.pyfunc.load_model("models:/loads-by-alias@challenger")
    out = model.predict(pd.DataFrame({"text": ["turn on the kitchen lights", "weather in oslo"]}))
    assert list(out.columns[:2]) == ["label", "score"] and len(out) == 2
    assert set(out["label"]) <= {"lights_off", "lights_on", "timer", "weather"}


def test_promotion_moves_aliases_and_rollback_walks_the_history_back(logged):
    name = "history"
    v1, v2, v3 = register(logged, name, 3)
    client = MlflowClient()
    assert alias_tasks.move_champion(client, name, v1, "test")["displaced"] is None
    assert aliases(name) == {"champion": v1, "challenger": v3}
    alias_tasks.move_champion(client, name, v2, "test")
    moved = alias_tasks.move_champion(client, name, v3, "test", reason="better")
    assert moved == {"version": v3, "displaced": v2, "changed": True}
    assert aliases(name) == {"champion": v3, "previous": v2, "challenger": v3}
    assert tags(name, v3)["displaced"] == v2 and tags(name, v2)["displaced_by"] == v3
    assert tags(name, v3)["promotion_reason"] == "better"
    assert alias_tasks.move_champion(client, name, v3, "test")["changed"] is False

    back = alias_tasks.roll_back(client, name, reason="regression in prod")
    assert back == {"version": v2, "rolled_back": v3, "previous": v1}
    assert aliases(name)["champion"] == v2 and aliases(name)["previous"] == v1
    assert tags(name, v3)["rolled_back"] == "true"
    alias_tasks.roll_back(client, name)
    assert aliases(name)["champion"] == v1 and "previous" not in aliases(name)
    with pytest.raises(alias_tasks.PromotionError, match="nothing to roll back to"):
        alias_tasks.roll_back(client, name)
    with pytest.raises(mlflow.exceptions.MlflowException):
        alias_tasks.move_champion(client, name, "99", "test")
    assert aliases(name)["champion"] == v1


@pytest.mark.parametrize("backend", ["machine", "prefect"])
def test_concurrent_promotions_leave_one_champion_and_a_consistent_history(logged, harness, backend, monkeypatch):
    """Five promotions race; the promotion lock serializes them, so the ``displaced`` chain from the
    champion back to the first one holds every version exactly once and ``previous`` is its first link.
    Both locks are raced: a kernel lock on this machine, and a Prefect global concurrency limit."""
    monkeypatch.setattr(alias_tasks, "lock_backend", lambda uri, api: backend)
    name = f"race-{backend}"
    versions = register(logged, name, 6)
    alias_tasks.move_champion(MlflowClient(), name, versions[0], "test")
    barrier, errors = threading.Barrier(5), []

    def promote(version: str) -> None:
        try:
            barrier.wait()
            alias_tasks.move_champion(MlflowClient(), name, version, "race")
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    # each thread sees the test's Prefect server, as a flow's task threads do
    threads = [threading.Thread(target=contextvars.copy_context().run, args=(promote, v)) for v in versions[1:]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    current = aliases(name)
    champions = [v for v in versions if "champion" in MlflowClient().get_model_version(name, v).aliases]
    assert champions == [current["champion"]]
    chain, version = [], current["champion"]
    while version != "none":
        chain.append(version)
        version = tags(name, version)["displaced"]
    assert sorted(chain, key=int) == versions, f"promotion history lost a version: {chain}"
    assert current["previous"] == chain[1]
    assert not [m.name for m in MlflowClient().search_registered_models(f"name LIKE '{name}%'") if m.name != name], \
        "the lock left something in the registry"
    if backend == "prefect":
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as prefect:
            limit = prefect.read_global_concurrency_limit_by_name(f"promote-{name}")
        assert (limit.limit, limit.active_slots) == (1, 0), "the slot was not given back"


def test_the_lock_lives_where_every_promoter_of_the_store_reaches_it():
    assert alias_tasks.lock_backend("http://127.0.0.1:5000", "http://127.0.0.1:4200/api") == "prefect"
    assert alias_tasks.lock_backend("postgresql://u@db/mlflow", "https://api.prefect.cloud/api/x") == "prefect"
    assert alias_tasks.lock_backend("http://127.0.0.1:5000", None) == "machine"  # no shared orchestrator to ask
    for local in ("sqlite:///mlflow.db", "file:///srv/mlruns", "/srv/mlruns", "mlruns"):
        assert alias_tasks.lock_backend(local, "http://127.0.0.1:4200/api") == "machine", local


def test_a_held_promotion_lock_stops_a_promotion_with_what_to_do(logged, monkeypatch):
    """The machine lock, held by another process, keeps a promotion from moving aliases and says why."""
    monkeypatch.setattr(alias_tasks, "lock_backend", lambda uri, api: "machine")
    name = "held-lock"
    versions = register(logged, name, 2)
    store = os.environ["MLFLOW_TRACKING_URI"]
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom distill.io import machine_lock\n"
        f"with machine_lock('promotion {store} {name}'):\n    print('held', flush=True)\n    time.sleep(60)\n")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(alias_tasks.PromotionError, match=f"pid {holder.pid} .*held the promotion lock"):
            with alias_tasks.promotion_lock(MlflowClient(), name, timeout_s=1):
                pass
    finally:
        holder.kill()
        holder.wait()
    alias_tasks.move_champion(MlflowClient(), name, versions[1], "test")  # the kernel freed the dead holder's lock
    assert aliases(name)["champion"] == versions[1]


def test_gate_failure_never_moves_the_champion(logged, harness):
    from flows.promotion import promote_student

    name = "gates"
    v1, v2 = register(logged, name, 2)
    alias_tasks.move_champion(MlflowClient(), name, v1, "test")
    for mode in ("auto", "review"):
        outcome = promote_student(config(name, mode=mode), v2, FAILED, smoke_text="turn on the lights")
        assert outcome == {"promoted": False, "outcome": "blocked by gates"}
        assert aliases(name)["champion"] == v1
    assert tags(name, v2)["decision"] == "blocked by gates"
    assert tags(name, v2)["review"] == "not requested: gates failed"


def test_auto_promotion_then_serving_check_in_a_fresh_process(logged, harness):
    from flows.promotion import promote_student

    name = "auto"
    v1, v2 = register(logged, name, 2)
    alias_tasks.move_champion(MlflowClient(), name, v1, "test")
    outcome = promote_student(config(name), v2, PASSED, smoke_text="turn on the kitchen lights")
    assert outcome["promoted"] and outcome["displaced"] == v1
    assert aliases(name)["champion"] == v2 and aliases(name)["previous"] == v1
    serving = outcome["serving"]
    assert serving["ok"] and serving["version"] == v2 and serving["uri"] == f"models:/{name}@champion"
    assert serving["label"] in {"lights_off", "lights_on", "timer", "weather"}
    assert tags(name, v2)["serving_check"].startswith("ok:")
    assert tags(name, v2)["promoted_by"] == "auto"


def review(name: str, version: str, answer: dict | None, timeout_s: int = 120, kind: str = "student") -> dict:
    """Run the promotion flow in review mode; a reviewer thread resumes it with ``answer``."""
    from prefect import get_client
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterState, FlowRunFilterStateName,
                                                FlowRunFilterTags)
    from prefect.flow_runs import resume_flow_run

    from flows.promotion import promote_student

    def reviewer() -> None:
        paused = FlowRunFilter(state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Paused"])),
                               tags=FlowRunFilterTags(all_=[name]))
        with get_client(sync_client=True) as client:
            for _ in range(240):
                runs = client.read_flow_runs(flow_run_filter=paused)
                if runs:
                    resume_flow_run(runs[0].id, run_input=answer)
                    return
                time.sleep(0.5)

    from prefect import tags as run_tags

    thread = threading.Thread(target=reviewer, daemon=True)
    if answer is not None:
        thread.start()
    cfg = config(name, mode="review", review_timeout_s=timeout_s, serving_check=False)
    if kind == "lm":  # the LM student is registered under its own name; the classifier's stays apart
        cfg = cfg.model_copy(update={
            "promote": cfg.promote.model_copy(update={"student_model": f"{name}-classifier"}),
            "lm": cfg.lm.model_copy(update={"promote": cfg.lm.promote.model_copy(update={"model_name": name})})})
    with run_tags(name):
        outcome = promote_student(cfg, version, PASSED, poll_interval_s=1, kind=kind)
    if answer is not None:
        thread.join(timeout=30)
    return outcome


def test_review_approval_promotes_and_records_the_reviewer(logged, harness):
    name = "review-approve"
    v1, v2 = register(logged, name, 2)
    alias_tasks.move_champion(MlflowClient(), name, v1, "test")
    outcome = review(name, v2, {"approve": True, "comment": "card reads well, slices fine"})
    assert outcome["promoted"] is True
    assert aliases(name)["champion"] == v2 and aliases(name)["previous"] == v1
    assert tags(name, v2)["review"] == "approved"
    assert tags(name, v2)["review_comment"] == "card reads well, slices fine"
    assert tags(name, v2)["promoted_by"] == "review"


def test_an_lm_student_goes_through_the_same_review(logged, harness):
    name = "review-lm"
    v1, v2 = register(logged, name, 2)
    alias_tasks.move_champion(MlflowClient(), name, v1, "test")
    rejected = review(name, v2, {"approve": False, "comment": "answers ramble"}, kind="lm")
    assert rejected == {"promoted": False, "outcome": "review rejected"}
    assert aliases(name)["champion"] == v1 and tags(name, v2)["review_comment"] == "answers ramble"
    approved = review(name, v2, {"approve": True, "comment": "second look: fine"}, kind="lm")
    assert approved["promoted"] is True and aliases(name)["champion"] == v2
    assert tags(name, v2)["review"] == "approved" and tags(name, v2)["promoted_by"] == "review"
    assert "review-lm-classifier" not in {m.name for m in MlflowClient().search_registered_models()}


@pytest.mark.parametrize("answer, verdict", [({"approve": False, "comment": "label=timer regressed"}, "rejected"),
                                             (None, "timed_out")])
def test_review_rejection_or_timeout_leaves_the_champion(logged, harness, answer, verdict):
    name = f"review-{verdict}"
    v1, v2 = register(logged, name, 2)
    alias_tasks.move_champion(MlflowClient(), name, v1, "test")
    outcome = review(name, v2, answer, timeout_s=2 if answer is None else 120)
    assert outcome == {"promoted": False, "outcome": f"review {verdict}"}
    assert aliases(name)["champion"] == v1
    assert tags(name, v2)["review"] == verdict
    assert tags(name, v2)["decision"] == f"review {verdict}"
    if answer:
        assert tags(name, v2)["review_comment"] == answer["comment"]


def test_cli_promote_rollback_and_registry_table(logged, tmp_path):
    from cli.main import app

    name = "cli"
    v1, v2 = register(logged, name, 2)
    MlflowClient().set_model_version_tag(name, v2, "eval.accuracy", "0.9310")
    MlflowClient().set_model_version_tag(name, v2, "eval.teacher_share", "0.9800")
    MlflowClient().set_model_version_tag(name, v2, "precision", "int8")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"promote": {"student_model": name}}))
    runner = CliRunner()
    result = runner.invoke(app, ["promote", v1, "--reason", "first", "--params", str(params)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["promote", v2, "--reason", "hotfix for ticket 42", "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert f"champion -> v{v2}, previous -> v{v1}" in result.output
    assert tags(name, v2)["promoted_by"] == "cli" and tags(name, v2)["promotion_reason"] == "hotfix for ticket 42"
    table = runner.invoke(app, ["registry", "--params", str(params)], env={"COLUMNS": "160"})
    assert table.exit_code == 0
    lines = {line.split("│")[1].strip(): line for line in table.output.splitlines() if line.count("│") > 3}
    assert "champion" in lines[v2] and "0.9310" in lines[v2] and "98.0%" in lines[v2] and "int8" in lines[v2]
    assert "previous" in lines[v1] and "fp32" in lines[v1]
    result = runner.invoke(app, ["rollback", "--reason", "latency spike", "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert aliases(name)["champion"] == v1 and tags(name, v2)["rolled_back"] == "true"
    result = runner.invoke(app, ["promote", "77", "--reason", "x", "--params", str(params)])
    assert result.exit_code == 2 and "error" in result.output and "77" in result.output


def test_champion_is_scored_on_this_runs_test_set(logged, tiny_cfg, tiny_teacher, tmp_path):
    from distill import data

    name = "scored"
    cfg = tiny_cfg.model_copy(update={"promote": PromoteConfig(student_model=name),
                                      "tracking": TrackingConfig(experiment="registry-tests")})
    assert scoring.score_champion.fn(cfg, str(tmp_path)) is None  # no champion yet: nothing to compare
    (v1,) = register(logged, name, 1)
    alias_tasks.move_champion(MlflowClient(), name, v1, "test")
    data.run(cfg, tmp_path / "prepared")
    test = data.read_split(tmp_path / "prepared", "gold_test")
    holdout = test.iloc[:7][["text", "label"]]
    scored = scoring.score_champion.fn(cfg, str(tmp_path / "prepared"), holdouts={"shifted": holdout})
    assert scored["version"] == v1 and 0 <= scored["accuracy"] <= 1
    labels = {f"label={label}" for label in test["label"].unique()}
    assert set(scored["slices"]) == labels | {"holdout=shifted"}
    assert sum(scored["slices"][name]["n"] for name in labels) == len(test)
    # the hold-out is scored like the test set: its accuracy is the matching label slices' on those rows
    assert scored["slices"]["holdout=shifted"]["n"] == 7
    clf_scores = scoring.holdout_slices(scoring.folder_predict(cfg, tiny_teacher), {"shifted": holdout})
    assert clf_scores["holdout=shifted"] == scored["slices"]["holdout=shifted"]


@pytest.mark.slow
def test_mlflow_models_serve_answers_http_for_the_champion(logged, server, tmp_path):
    from tests.mlflow_server import free_port, wait_for

    name = "served"
    (v1,) = register(logged, name, 1)
    alias_tasks.move_champion(MlflowClient(), name, v1, "test")
    port, log = free_port(), tmp_path / "serve.log"
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{name}@champion",
               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    with open(log, "w") as sink:
        # `mlflow models serve` execs uvicorn by name: this interpreter's bin folder must be on PATH
        # (CI runs .venv/bin/python without activating the venv)
        path = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "MLFLOW_TRACKING_URI": server, "PATH": path})
    try:
        wait_for(f"http://127.0.0.1:{port}/ping", proc, log, timeout=180)
        body = pd.DataFrame({"text": ["turn off the bedroom lights", "set a timer for 5 minutes"]})
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", method="POST", headers={"Content-Type": "application/json"},
            data=('{"dataframe_split": ' + body.to_json(orient="split", index=False) + "}").encode())
        with urllib.request.urlopen(request, timeout=60) as response:
            predictions = __import__("json").loads(response.read())["predictions"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert len(predictions) == 2
    assert {p["label"] for p in predictions} <= {"lights_off", "lights_on", "timer", "weather"}
    assert all(0 < p["score"] <= 1 for p in predictions)


def test_a_served_model_cuts_long_texts_as_it_was_trained_even_where_distill_is_not_installed(
        server, tiny_teacher, tmp_path):
    import json

    import numpy as np

    from distill.cut import set_cut
    from distill.models import load_classifier, predict_logits, save_classifier

    import torch

    clf = load_classifier(tiny_teacher)
    with torch.no_grad():
        clf.model.classifier.weight.mul_(1000)  # the random tiny model's logits then tell inputs apart
    set_cut(clf.tokenizer, {"how": "head_tail", "head_share": 0.5})
    folder = tmp_path / "head-tail"
    save_classifier(clf, folder, {"role": "student", "source": "test", "train": {"max_length": 18}}, export=True)
    with mlflow.start_run(experiment_id=registry.configure(config("cut-model").tracking)):
        version = registry.log_classifier(folder, "cut-model", {"fingerprint": "f-cut"}, "cut")
    uri = f"models:/cut-model/{version}"
    text = " ".join(str(i) for i in range(100, 300))
    logits = predict_logits(load_classifier(folder), [text], 8, 18)
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    head = load_classifier(folder)
    set_cut(head.tokenizer, {"how": "head"})
    assert not np.allclose(predict_logits(head, [text], 8, 18), logits, atol=1e-2)  # the cut changes the answer
    columns = [f"p_{label}" for label in clf.labels]
    served = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"text": [text]}))
    np.testing.assert_allclose(served[columns].to_numpy(), expected, atol=1e-5)
    # Where distill cannot be imported, the model's own copies of distill/cut.py and distill/served.py
    # (code_paths) cut and serve alike: it serves the ONNX export the evaluation timed.
    script = ("import sys, json; sys.modules['distill'] = None\n"
              "import mlflow, pandas as pd\n"
              f"model = mlflow.pyfunc.load_model({uri!r})\n"
              f"out = model.predict(pd.DataFrame({{'text': [{text!r}]}}))\n"
              f"print(json.dumps([model.unwrap_python_model().runtime, out[{columns!r}].to_numpy().tolist()]))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    runtime, probabilities = json.loads(done.stdout.strip().splitlines()[-1])
    assert runtime == "onnxruntime"
    np.testing.assert_allclose(np.array(probabilities), expected, atol=1e-5)


def test_the_served_model_runs_the_file_threads_and_encoding_the_evaluation_timed(server, tiny_teacher):
    import numpy as np
    import torch

    from distill.evaluate import load_candidates
    from distill.models import encode
    from distill.served import ONNX_FILE, OnnxClassifier

    with mlflow.start_run(experiment_id=registry.configure(config("served-path").tracking)):
        version = registry.log_classifier(tiny_teacher, "served-path", {"fingerprint": "f-served"}, "served",
                                          threads=2)
    served = mlflow.pyfunc.load_model(f"models:/served-path/{version}").unwrap_python_model()
    assert isinstance(served.model, OnnxClassifier) and served.runtime == "onnxruntime"
    assert Path(served.model.path).read_bytes() == (tiny_teacher / ONNX_FILE).read_bytes()  # the evaluated file
    assert served.model.session.get_session_options().intra_op_num_threads == 2  # as logged (evaluate.threads)
    texts = ["turn on the kitchen lights", "what is the weather like in the city tomorrow morning", "hi"]
    [timed] = load_candidates({"teacher": tiny_teacher}, ["teacher"], "onnxruntime", texts, served.max_length, 2)
    assert isinstance(timed.clf.model, OnnxClassifier) and timed.clf.model.path == str(tiny_teacher / ONNX_FILE)
    for text in texts:  # a batch-1 request: the same tensors into the same graph, the same logits out
        request = served._encode([text])
        expected = encode(timed.clf.tokenizer, [text], served.max_length)
        assert request.keys() == expected.keys() and all(torch.equal(request[k], expected[k]) for k in request)
        np.testing.assert_allclose(served.model(**request).logits.numpy(),
                                   timed.clf.model(**expected).logits.numpy(), atol=1e-6)


def test_an_int8_version_serves_the_int8_file_and_is_another_version_than_its_float_weights(server, tiny_teacher,
                                                                                            tmp_path):
    import shutil

    from distill.quantize import quantize_onnx
    from distill.served import INT8_FILE, ONNX_FILE

    folder = tmp_path / "compressed"
    shutil.copytree(tiny_teacher, folder)
    cfg = config("int8-model")
    card = {"fingerprint": "f-int8"}
    # not quantized yet: an INT8 registration is refused before anything is logged
    with pytest.raises(FileNotFoundError, match="has no model-int8.onnx"):
        registry.register_student.fn(cfg, _run_id(cfg), str(folder), card, {"precision": "int8"}, "int8")
    assert MlflowClient().search_model_versions("name = 'int8-model'") == []
    quantize_onnx(folder / ONNX_FILE, folder / INT8_FILE)
    fp32, new_fp32 = registry.register_student.fn(cfg, _run_id(cfg), str(folder), card, {}, "fp32")
    int8, new_int8 = registry.register_student.fn(cfg, _run_id(cfg), str(folder), card, {"precision": "int8"}, "int8")
    again, new_again = registry.register_student.fn(cfg, _run_id(cfg), str(folder), card, {"precision": "int8"}, "x")
    # the same weights at two precisions are two versions; the same precision again is the same version
    assert new_fp32 and new_int8 and int8 != fp32 and (again, new_again) == (int8, False)
    assert registry.version_precision(cfg, int8) == "int8" and registry.version_precision(cfg, fp32) == "fp32"
    served = mlflow.pyfunc.load_model(f"models:/int8-model/{int8}").unwrap_python_model()
    assert served.runtime == "onnxruntime (model-int8.onnx)"
    assert Path(served.model.path).read_bytes() == (folder / INT8_FILE).read_bytes()
    assert mlflow.pyfunc.load_model(f"models:/int8-model/{fp32}").unwrap_python_model().runtime == "onnxruntime"
    # the champion is scored as the model it serves: the INT8 file, not the float weights
    from distill.runtime import load_served

    assert load_served(folder, "int8").model.path == str(folder / INT8_FILE)
    with pytest.raises(ValueError, match="has no model-int8.onnx"):
        load_served(tiny_teacher, "int8")


def _run_id(cfg: PipelineConfig) -> str:
    """A finished run to register into, as the flow's training run is."""
    with mlflow.start_run(experiment_id=registry.configure(cfg.tracking)) as run:
        return run.info.run_id


class Echo(mlflow.pyfunc.PythonModel):
    """A pyfunc registered outside distill (pickled)."""

    def predict(self, context, model_input, params=None):
        return model_input


def test_models_distill_did_not_register_are_refused_before_any_of_their_code_runs(logged, tiny_teacher, tmp_path):
    from tasks.registry import UntrustedModel, check_model_code

    with mlflow.start_run(experiment_id=registry.configure(config("foreign").tracking)):
        pickled = mlflow.pyfunc.log_model(name="model", python_model=Echo(), registered_model_name="foreign")
        edited = tmp_path / "pyfunc_classifier.py"
        edited.write_text(registry.PYFUNC_CODE.read_text() + "\nprint('not the code distill wrote')\n")
        other = mlflow.pyfunc.log_model(name="model", python_model=str(edited), artifacts={"model": str(tiny_teacher)},
                                        registered_model_name="foreign")
    check_model_code("models:/fixture-model/1")  # what distill registered passes
    with pytest.raises(UntrustedModel, match=r"foreign/\d+: it is not a distill pyfunc \(a pickled Python model\); "
                                             r"loading it would run its code.*promote.trust_model_code: true"):
        check_model_code(f"models:/foreign/{pickled.registered_model_version}")
    with pytest.raises(UntrustedModel, match=r"its pyfunc_classifier.py differs from this distill's"):
        check_model_code(f"models:/foreign/{other.registered_model_version}")
    check_model_code(f"models:/foreign/{other.registered_model_version}", trust=True)

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"promote": {"student_model": "foreign"},
                                      "tracking": {"experiment": "registry-tests"}}))
    from cli.main import app as cli_app

    result = CliRunner().invoke(cli_app, ["promote", str(pickled.registered_model_version), "--reason", "try",
                                          "--params", str(params)])
    assert result.exit_code == 2 and "not a distill pyfunc" in " ".join(result.output.split())
    assert "champion" not in MlflowClient().get_registered_model("foreign").aliases
    with pytest.raises(UntrustedModel):
        registry.load_version(PipelineConfig(promote=PromoteConfig(student_model="foreign")),
                              str(pickled.registered_model_version))


def test_the_runs_training_curves_are_metrics_with_steps_per_model(server, tmp_path):
    from distill.models import read_history

    cfg = config("curves-model")
    curves = {"student": [{"step": 50, "loss": 1.2345678912, "loss_kl": 0.8, "learning_rate": 5e-4,
                           "val_accuracy": 0.41},
                          {"step": 100, "loss": 0.7, "loss_kl": 0.5, "learning_rate": 4e-4, "val_accuracy": 0.66}],
              "baseline": [{"step": 50, "loss": 1.5, "loss_kl": float("nan"), "learning_rate": 5e-4,
                            "val_accuracy": 0.38}],
              "teacher": []}
    run_id = tracking.log_run(cfg, {"eval": {"student": {"accuracy": 0.7}}}, {"reason": "test"}, [], str(tmp_path),
                              curves=curves)
    client = MlflowClient()
    history = client.get_metric_history(run_id, "student/val_accuracy")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(50, 0.41), (100, 0.66)]
    assert [m.value for m in client.get_metric_history(run_id, "student/learning_rate")] == [5e-4, 4e-4]
    assert client.get_metric_history(run_id, "student/loss")[0].value == 1.23457  # six digits, not float noise
    assert client.get_metric_history(run_id, "baseline/loss_kl") == []  # a term the baseline has not: no point
    assert client.get_run(run_id).data.metrics["eval.student.accuracy"] == 0.7
    experiment = client.get_experiment(client.get_run(run_id).info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # opens on its runs in the UI
    assert read_history(tmp_path) == []  # a model distill did not train has no curve


def test_the_links_a_run_prints_open_the_mlflow_ui_on_the_training_run_and_the_version(server, tmp_path):
    from tasks.tracking import ui_links

    cfg = config("links-model")
    links = ui_links(cfg, str(tmp_path), "abc123", "7")
    experiment = registry.configure(cfg.tracking)
    assert links == {
        "MLflow run": f"{server}/#/experiments/{experiment}/runs/abc123?workflowType=machine_learning",
        "MLflow model version": f"{server}/#/models/links-model/versions/7"}


def test_the_mlflow_ui_shows_the_rendered_card_the_curves_and_opens_on_the_training_runs(logged, server, tmp_path):
    """In Chromium (Debian's package) against the real `mlflow server`."""
    import shutil

    from tasks.tracking import ui_links

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on PATH (Debian: apt install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    cfg = config("ui-model")
    curves = {"student": [{"step": step, "loss": 2.0 / step ** 0.5, "learning_rate": 5e-4,
                           "val_accuracy": step / (step + 50)} for step in range(50, 301, 50)]}
    run_id = tracking.log_run(cfg, {"eval": {"student": {"accuracy": 0.912}}}, {"reason": "ui"}, [], str(tmp_path),
                              curves=curves, run_name="manual: kl T=4 a=0.7 2x128 -> 0.912 (97.3% of teacher)")
    card = "## Summary\n\nThe student keeps **97.3 %** of the teacher.\n\n| model | accuracy |\n|---|---:|\n| student | 0.912 |\n"
    (version,) = register(logged, "ui-model", 1)
    MlflowClient().update_model_version("ui-model", version, description=card)
    links = ui_links(cfg, str(tmp_path), run_id, version)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.goto(links["MLflow model version"], wait_until="load")
        # the card is rendered Markdown: a heading, bold text and a table, not the raw source
        page.get_by_role("heading", name="Summary").wait_for(timeout=60_000)
        assert page.locator("strong", has_text="97.3 %").count() == 1 and page.locator("td", has_text="0.912").count()
        assert "| model |" not in page.inner_text("body")
        page.goto(links["MLflow run"], wait_until="load")  # the experiment in its training mode, on its runs
        page.get_by_text("manual: kl T=4 a=0.7 2x128", exact=False).first.wait_for(timeout=60_000)
        assert "/runs" in page.url and "Token Usage" not in page.inner_text("body")
        page.goto(links["MLflow run"].replace("?", "/model-metrics?"), wait_until="load")
        for curve in ("student/val_accuracy", "student/loss", "student/learning_rate"):  # one chart per curve
            page.get_by_text(f"({curve})", exact=False).first.wait_for(timeout=60_000)
        browser.close()
