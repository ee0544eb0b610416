"""A stage's output reaches the flow run's log (the Prefect UI's run page), once, without progress-bar noise."""

from tasks.dvc import RunLogLines
from tests.processes import one_stage_project

STAGE = """\
import sys, time
print("teacher: fine-tuned on 120 texts", flush=True)
for step in range(1, 6):
    sys.stderr.write(f"\\rtraining student: {step * 20}%|" + "#" * step)
    sys.stderr.flush()
    time.sleep(0.05)
sys.stderr.write("\\n")
print("student accuracy 0.912 (café ✓)", flush=True)
open("out.txt", "w").write("done")
"""


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_complete_lines_are_logged_once_and_a_progress_bar_only_now_and_then_and_at_its_end():
    logged, clock = [], Clock()
    lines = RunLogLines(logged.append, every=10.0, clock=clock)
    lines.feed("Running stage 'train':\n> distill train\nwarm")
    lines.feed("ing up\n")
    assert logged == ["Running stage 'train':", "> distill train", "warming up"]
    for step in range(1, 40):
        clock.now = step  # one redraw a second
        lines.feed(f"\rtraining: {step}/40")
    # a redraw is logged every 10 s, never a half-written one
    assert logged[3:] == ["training: 9/40", "training: 19/40", "training: 29/40"]
    lines.feed("\rtraining: 40/40\n")
    assert logged[-1] == "training: 40/40"
    lines.feed("last line without a newline")
    lines.close()
    assert logged[-1] == "last line without a newline" and len(logged) == 8


def test_a_stages_output_is_in_the_flow_runs_log_and_on_the_terminal(harness, tmp_path, capfd):
    import asyncio

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    from tasks.dvc import repro

    project = one_stage_project(tmp_path / "project", "make", STAGE, {}, {
        "deps": ["stage.py"], "outs": [{"out.txt": {"cache": False}}]})

    @flow
    def make():
        repro("make", str(project))

    state = make(return_state=True)
    assert state.is_completed()
    APILogHandler().flush()

    async def messages() -> list[str]:
        async with get_client() as client:
            logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])))
        return [log.message for log in logs]

    logged = asyncio.run(messages())
    assert logged.count("teacher: fine-tuned on 120 texts") == 1
    assert logged.count("student accuracy 0.912 (café ✓)") == 1
    assert "training student: 100%|#####" in logged  # the bar's final state
    assert not any("training student: 20%" in message for message in logged)  # not every redraw
    terminal = capfd.readouterr()
    assert terminal.out.count("student accuracy 0.912") == 1  # and live on the terminal, as before
