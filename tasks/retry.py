"""Retry only what touches a network, and only on failures that may pass."""

from __future__ import annotations

TRANSIENT = (ConnectionError, TimeoutError, OSError)


def retry_on_transient(task, task_run, state) -> bool:
    """Prefect retry_condition_fn: retry when the task failed with a transient error."""
    try:
        state.result()
    except TRANSIENT:
        return True
    except Exception:  # noqa: BLE001 - any other failure is final
        return False
    return False
