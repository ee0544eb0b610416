"""How a flow run ends: Failed when a gate stopped it, so Prefect automations and notifications fire.

A failed teacher gate, a student blocked by its gates (the audit is one of them) and a promotion
whose serving check failed and was rolled back are outcomes, not crashes: the flow still returns
its whole summary. It returns it inside a ``Failed`` state, whose message names the gate and its
reasons (the Prefect UI shows it on the run page; an automation on ``prefect.flow-run.Failed``
fires). Callers that want the summary call the flow with ``return_state=True`` and read it with
``summary_of``; the CLI keeps its exit codes (1 only when the run did not complete).
"""

from __future__ import annotations

from prefect.states import Failed, State

MAX_MESSAGE = 1000  # characters of reasons on the state (the UI shows the message on the run page)


def gate_failures(summary: dict) -> list[str]:
    """What stopped the run, one line per gate; empty when nothing did."""
    failures = []
    gate = summary.get("teacher_gate")
    if gate and not gate.get("passed"):
        failures.append("teacher gate failed: " + "; ".join(gate.get("reasons", [])))
    promotion = summary.get("promotion")
    outcome = promotion.get("outcome") if isinstance(promotion, dict) else promotion
    if outcome == "blocked by gates":
        failures.append(f"student v{summary.get('student_version')} blocked by its gates: "
                        + "; ".join(summary.get("decision", {}).get("reasons", [])))
    serving = promotion.get("serving") if isinstance(promotion, dict) else None
    if serving and not serving.get("ok"):
        failures.append(f"student v{summary.get('student_version')} failed its serving check and was rolled back "
                        f"to v{serving.get('rolled_back_to')}: {serving.get('error', '')}")
    return failures


def end(summary: dict) -> dict | State:
    """The flow's return value: ``summary``, or a Failed state carrying it when a gate stopped the run."""
    failures = gate_failures(summary)
    if not failures:
        return summary
    message = " | ".join(failures)
    return Failed(message=message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE - 1] + "…", data=summary)


def summary_of(run: dict | State) -> dict:
    """The summary a flow returned, from its final state (``flow(..., return_state=True)``) or from a call of
    its function (``flow.fn``). A run that crashed raises its exception here."""
    if not isinstance(run, State):
        return run
    result = run.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        raise result
    return result
