"""Moving the ``champion`` and ``previous`` aliases of a registered model, one promotion at a time.

A promotion is three registry calls (read champion, set previous, set champion); the promotion
lock makes them one step across flows, the CLI and other machines. Rollback walks the chain the
``displaced`` tags record.
"""

from __future__ import annotations

import os
import random
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import mlflow
from mlflow import MlflowClient

TRANSIENT = ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED")  # e.g. SQLite busy
LOCK_STALE_S = 600  # a promotion takes seconds; a lock this old was left by a crashed process


class PromotionError(RuntimeError):
    """A promotion or rollback could not be carried out; the message says what to do."""


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version an alias points to, or None."""
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


@contextmanager
def promotion_lock(client: MlflowClient, name: str, timeout_s: float = 120) -> Iterator[None]:
    """Hold ``<name>-promotion-lock`` while aliases move.

    MLflow aliases are unique per model, but "read champion, set previous, set champion" is
    three calls; two promotions interleaving them would lose track of who displaced whom.
    Creating a registered model is atomic in every MLflow store (names are unique), so the
    registry itself is the mutex, shared by flows, the CLI and other machines.
    """
    lock, holder = f"{name}-promotion-lock", f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.create_registered_model(lock, tags={"holder": holder, "since": str(time.time())},
                                           description=f"Held while {name}'s aliases move; deleted after.")
            break
        except mlflow.exceptions.MlflowException as exc:
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", *TRANSIENT):
                raise
            if _lock_holder(client, lock) == holder:  # our create went through; a retried request said "exists"
                break
        _break_stale_lock(client, lock)
        if time.monotonic() > deadline:
            raise PromotionError(f"registered model {lock!r} is held by another promotion for over {timeout_s:.0f} s; "
                                 f"if none is running, delete that registered model and retry")
        time.sleep(0.2 + random.random() * 0.3)
    try:
        yield
    finally:
        try:
            if _lock_holder(client, lock) == holder:
                client.delete_registered_model(lock)
        except mlflow.exceptions.MlflowException:
            pass  # broken as stale by someone else


def _lock_holder(client: MlflowClient, lock: str) -> str | None:
    try:
        return client.get_registered_model(lock).tags.get("holder")
    except mlflow.exceptions.MlflowException:
        return None


def _break_stale_lock(client: MlflowClient, lock: str) -> None:
    try:
        since = float(client.get_registered_model(lock).tags.get("since", "0"))
    except mlflow.exceptions.MlflowException:
        return  # released meanwhile
    if time.time() - since > LOCK_STALE_S:
        try:
            client.delete_registered_model(lock)
        except mlflow.exceptions.MlflowException:
            pass


def move_champion(client: MlflowClient, name: str, version: str, promoted_by: str, reason: str = "") -> dict:
    """Point ``champion`` at ``version`` under the promotion lock; the former champion becomes ``previous``.

    The aliases are re-read after they are set: what this call reports displacing is what the
    registry says, and the new champion carries it in its ``displaced`` tag (rollback follows
    that chain). Returns ``{"version", "displaced", "changed"}``.
    """
    client.get_model_version(name, version)  # fails with the registry's message when it does not exist
    with promotion_lock(client, name):
        former = alias_version(client, name, "champion")
        if former == version:
            return {"version": version, "displaced": None, "changed": False}
        if former is not None:
            client.set_registered_model_alias(name, "previous", former)
        client.set_registered_model_alias(name, "champion", version)
        now, previous = alias_version(client, name, "champion"), alias_version(client, name, "previous")
        if now != version or previous != former:
            raise PromotionError(f"{name}: after promoting v{version} the registry says champion=v{now}, "
                                 f"previous=v{previous}; an alias was moved outside distill (the MLflow UI?). "
                                 f"Check `distill registry` and set the aliases by hand")
        stamp = {"promoted_by": promoted_by, "promoted_at": _utc_now(), "displaced": former or "none"}
        if reason:
            stamp["promotion_reason"] = reason[:5000]
        set_tags(client, name, version, stamp)
        if former is not None:
            set_tags(client, name, former, {"displaced_by": version})
    return {"version": version, "displaced": former, "changed": True}


def roll_back(client: MlflowClient, name: str, reason: str = "") -> dict:
    """``champion`` back to ``previous``; the displaced champion is tagged ``rolled_back``.

    ``previous`` then points at what the restored version had itself displaced, so repeated
    rollbacks walk back the promotion history. Returns ``{"version", "rolled_back", "previous"}``.
    """
    with promotion_lock(client, name):
        current, target = alias_version(client, name, "champion"), alias_version(client, name, "previous")
        if target is None or current is None:
            raise PromotionError(f"{name}: nothing to roll back to (champion v{current}, no 'previous' alias); "
                                 f"promote a version with `distill promote VERSION` instead")
        client.set_registered_model_alias(name, "champion", target)
        set_tags(client, name, current, {"rolled_back": "true", "rolled_back_at": _utc_now(),
                                         **({"rollback_reason": reason[:5000]} if reason else {})})
        set_tags(client, name, target, {"promoted_by": "rollback", "promoted_at": _utc_now()})
        earlier = client.get_model_version(name, target).tags.get("displaced", "none")
        if earlier not in ("none", current, target) and _exists(client, name, earlier):
            client.set_registered_model_alias(name, "previous", earlier)
        else:
            client.delete_registered_model_alias(name, "previous")
            earlier = None
    return {"version": target, "rolled_back": current, "previous": earlier}


def _exists(client: MlflowClient, name: str, version: str) -> bool:
    try:
        client.get_model_version(name, version)
        return True
    except mlflow.exceptions.MlflowException:
        return False


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_tags(client: MlflowClient, name: str, version: str, tags: dict[str, Any]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))
