"""The monitoring loop unattended, against a real Prefect server.

`prefect server start` on 127.0.0.1 (PREFECT_HOME in tmp, analytics off), a `process` work pool (and
the GPU pool, without a worker), `prefect deploy --all` from a tiny copy of the project, `prefect
worker start`. A first pipeline run makes a champion (a `distill_pipeline` process against the same
server, started while the deployments and the worker come up), then the test runs the drift-monitor
deployment; the monitor's `distill.drift.detected` event must start the redistill deployment through
its trigger, with the event's figures as parameters, and that run must complete. Worker and server
are stopped at the end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.tiny_project import tiny_project

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
# The pipeline run that makes the first champion, as `python -c` in the project folder.
CHAMPION = ("from flows.pipeline import distill_pipeline; "
            "assert distill_pipeline(project_dir='.', monitor=False, return_state=True).is_completed()")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(args: list[str], env: dict, cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, env=env, cwd=cwd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(proc: subprocess.Popen, grace_s: float = 10) -> None:
    """Stop ``proc`` and everything it started (its process group): SIGTERM, which a Prefect worker turns
    into its own shutdown request (SIGINT) and the server obeys at once, then SIGKILL to whatever is left
    of the group after ``grace_s`` (a worker waits for the flow runs it started; they are in its group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace_s)
    with contextlib.suppress(ProcessLookupError):  # nothing of the group is left
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def finished(proc: subprocess.Popen, timeout_s: float, log: Path) -> int:
    """``proc``'s exit code; fails the test with the end of ``log`` if it runs longer than ``timeout_s``."""
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{log.name}: still running after {timeout_s}s:\n" + log.read_text()[-4000:])


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """(api url, project dir, logs dir, champion run) with server, pools, deployments and worker up; the
    champion run (a pipeline process, for the monitor's champion) may still be running."""
    tmp = tmp_path_factory.mktemp("deploy")
    project = tiny_project(tmp / "project")
    api = f"http://127.0.0.1:{free_port()}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect-home"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_CLI_PROMPT": "false", "DISTILL_PROJECT_DIR": str(project), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "GX_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_PROFILE", None)
    port = api.split(":")[2].split("/")[0]
    # No scheduler service: the drift-monitor deployment's hourly schedule would otherwise have the worker
    # start an extra monitor run whenever the test spans a full hour.
    server = start([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", port],
                   {**env, "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false"}, tmp, tmp / "server.log")
    worker = champion = None
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, (tmp / "server.log").read_text()[-3000:]
            time.sleep(1)
        # The champion the monitor needs: one pipeline run, in its own process against this server, started
        # now so that it trains while the pools, the deployments and the worker come up.
        champion = start([sys.executable, "-c", CHAMPION], env, project, tmp / "champion.log")
        # Both pools of prefect.yaml (`prefect deploy` refuses a deployment on a missing pool); only the
        # process pool gets a worker: nothing schedules or triggers the GPU deployment.
        for args in (["work-pool", "create", "distill-process", "--type", "process"],
                     ["work-pool", "create", "distill-gpu", "--type", "process"], ["deploy", "--all"]):
            proc = subprocess.run([PREFECT, *args], env=env, cwd=project, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        # The worker asks for new runs every second (10 s by default) so a run starts as soon as it is created.
        worker = start([PREFECT, "worker", "start", "--pool", "distill-process", "--limit", "2"],
                       {**env, "PREFECT_WORKER_QUERY_SECONDS": "1"}, project, tmp / "worker.log")
        yield api, project, tmp, champion
    finally:
        for proc in (champion, worker):
            if proc is not None:
                stop(proc)
        stop(server)


def call(method: str, url: str, **kwargs) -> httpx.Response:
    """One API call; a 503 (the server is busy while a flow writes to its database) is retried, as
    Prefect's own client retries it."""
    for attempt in range(6):
        response = httpx.request(method, url, timeout=30, **kwargs)
        if response.status_code != 503:
            break
        time.sleep(2 ** attempt)
    response.raise_for_status()
    return response


def deployment_id(api: str, flow: str, name: str) -> str:
    return call("GET", f"{api}/deployments/name/{flow}/{name}").json()["id"]


def run_deployment(api: str, flow: str, name: str, parameters: dict) -> str:
    return call("POST", f"{api}/deployments/{deployment_id(api, flow, name)}/create_flow_run",
                json={"parameters": parameters}).json()["id"]


def wait_for(api: str, run_id: str, timeout_s: float, logs: Path) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = call("GET", f"{api}/flow_runs/{run_id}").json()
        if run["state"]["type"] in FINAL:
            return run
        time.sleep(1)
    pytest.fail(f"flow run {run_id} did not finish in {timeout_s}s; worker log:\n"
                + (logs / "worker.log").read_text()[-4000:])


def runs_of(api: str, deployment: str) -> list[dict]:
    return call("POST", f"{api}/flow_runs/filter",
                json={"flow_runs": {"deployment_id": {"any_": [deployment]}}}).json()


def test_drift_event_triggers_redistillation_through_the_deployment(stack):
    api, project, logs, champion = stack
    pipeline = call("GET", f"{api}/deployments/{deployment_id(api, 'distill_pipeline', 'pipeline')}").json()
    assert pipeline["work_pool_name"] == "distill-process"
    gpu = call("GET", f"{api}/deployments/{deployment_id(api, 'distill_pipeline', 'pipeline-gpu')}").json()
    assert gpu["work_pool_name"] == "distill-gpu" and gpu["job_variables"]["env"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert pipeline["tags"] == ["distill", "pipeline"] and "gpu" in gpu["tags"]
    # the form of the pipeline deployment: typed settings with descriptions, free overrides beside them
    settings = pipeline["parameter_openapi_schema"]["definitions"]["RunSettings"]["properties"]
    assert settings["data_path"]["description"] and "review" in str(settings["promote_mode"])
    automations = call("POST", f"{api}/automations/filter", json={}).json()
    named = {a["name"]: a for a in automations}
    assert "re-distil on drift or teacher change" in named, list(named)
    assert "incident" in named["re-distil on drift or teacher change"]["description"]

    assert finished(champion, 900, logs / "champion.log") == 0, (logs / "champion.log").read_text()[-4000:]

    monitor = wait_for(api, run_deployment(api, "drift_monitor", "drift-monitor", {}), 600, logs)
    assert monitor["state"]["type"] == "COMPLETED", (logs / "worker.log").read_text()[-4000:]
    summary = yaml.safe_load((project / "reports/monitor/summary.json").read_text())
    assert summary["drifted_windows"] == [2], summary["windows"]
    assert summary["incident"]["reason"] == "drift" and "redistillation" not in summary

    redistill = deployment_id(api, "redistill", "redistill")
    deadline = time.monotonic() + 120
    while not runs_of(api, redistill):
        assert time.monotonic() < deadline, "the drift event did not start the redistill deployment"
        time.sleep(1)
    (run,) = runs_of(api, redistill)
    assert run["parameters"]["reason"] == "drift"
    assert run["parameters"]["incident"] == summary["incident"]["incident"]
    assert run["parameters"]["figures"]["windows"] == [2]
    done = wait_for(api, run["id"], 900, logs)
    result = yaml.safe_load(next((project / "reports/monitor").glob("redistill-drift-*.json")).read_text())
    assert result["completed"] and "shifted.size" in result["comparison"]
    # Completed, or Failed when the gates blocked the new student (so automations on failure fire)
    from flows.outcome import gate_failures

    assert done["state"]["type"] == ("FAILED" if gate_failures(result) else "COMPLETED"), \
        (logs / "worker.log").read_text()[-4000:]

    again = wait_for(api, run_deployment(api, "drift_monitor", "drift-monitor", {}), 600, logs)
    assert again["state"]["type"] == "COMPLETED"
    time.sleep(10)  # an event would have started a run by now
    assert len(runs_of(api, redistill)) == 1, "one re-distillation per incident"


def test_the_prefect_ui_shows_the_typed_form_and_the_stages_logs(stack):
    """In Chromium (Debian's package) against the server: the deployment's run form shows the typed settings
    and sends only what the user filled in; a pipeline run's page shows its stages' output."""
    import shutil

    from flows.settings import RunSettings

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on PATH (Debian: apt install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    api, project, logs, champion = stack
    ui = api.removesuffix("/api")
    assert finished(champion, 900, logs / "champion.log") == 0, (logs / "champion.log").read_text()[-4000:]
    (pipeline_run,) = [run for run in call("POST", f"{api}/flow_runs/filter", json={}).json()
                       if run["deployment_id"] is None and run["name"] and run["parameters"].get("monitor") is False]
    # the GPU deployment: its pool has no worker here, so the run the form creates waits and is deleted after
    gpu = deployment_id(api, "distill_pipeline", "pipeline-gpu")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1400, "height": 2400})
        page.goto(f"{ui}/deployments/deployment/{gpu}/run", wait_until="networkidle")

        def field(title: str):
            return page.locator(f"div.schema-form-property:has(> .p-label__header "
                                f".schema-form-property__label:text-is('{title} (Optional)'))")

        try:
            field("Data file").wait_for(timeout=60_000)  # the form renders after the deployment's schema loads
        except Exception:
            page.screenshot(path=str(logs / "form.png"), full_page=True)
            pytest.fail(f"no 'Data file' field in the run form ({logs / 'form.png'}):\n" + page.inner_text("body")[:3000])
        for name, schema in RunSettings.model_json_schema()["properties"].items():
            assert field(schema["title"]).count() == 1, f"{name}: no field titled {schema['title']!r} in the form"
            assert schema["description"][:40] in field(schema["title"]).inner_text()
        assert field("Promotion").locator(".p-select").count() == 1  # a dropdown, not free text
        field("Data file").locator("textarea, input").first.fill("data/raw/tickets.csv")
        field("Temperature (T)").locator("input").fill("2")
        page.get_by_role("button", name="Submit").click()
        # the server creates the run before the page navigates: slow when other work shares the CPU (30 s timed out
        # once beside a pipeline run; 6 s alone)
        page.wait_for_url("**/deployments/deployment/**?tab=Runs", timeout=90_000)

        (created,) = runs_of(api, gpu)
        assert RunSettings.model_validate(created["parameters"]["settings"]).to_overrides() == [
            'data.path="data/raw/tickets.csv"', "train.kd_temperature=2.0"]
        call("DELETE", f"{api}/flow_runs/{created['id']}")

        page.goto(f"{ui}/runs/flow-run/{pipeline_run['id']}", wait_until="networkidle")
        # the stages' own output, not only Prefect's task states
        page.get_by_text("Running stage 'prepare'", exact=False).first.wait_for(timeout=30_000)
        page.get_by_text('"out_dir": "data/prepared"', exact=False).first.wait_for(timeout=30_000)  # prepare's result
        browser.close()
