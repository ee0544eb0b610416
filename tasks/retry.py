"""Retry only what touches a network, and only on failures that may pass."""

from __future__ import annotations

TRANSIENT = (ConnectionError, TimeoutError, OSError)


# What MLflow's REST client says when the tracking server is down or overloaded: it wraps the
# connection error in an MlflowException, which is not an OSError.
UNREACHABLE = ("Failed to establish a new connection", "Max retries exceeded", "Connection refused",
               "Read timed out", "error code 502", "error code 503", "error code 504")


def is_transient(exc: BaseException) -> bool:
    """A failure that may pass: a network error, or an MLflow request that could not reach the server."""
    if isinstance(exc, TRANSIENT):
        return True
    return type(exc).__name__ == "MlflowException" and any(s in str(exc) for s in UNREACHABLE)


def retry_on_transient(task, task_run, state) -> bool:
    """Prefect retry_condition_fn: retry when the task failed with a transient error."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - only transient failures are retried
        return is_transient(exc)
    return False
