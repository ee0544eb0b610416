"""Moving the ``champion`` and ``previous`` aliases of a registered model, one promotion at a time.

A promotion is three registry calls (read champion, set previous, set champion); the promotion
lock makes them one step across flows, the CLI and other machines. Rollback walks the chain the
``displaced`` tags record.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
from mlflow import MlflowClient

from distill.io import LockBusy, machine_lock

LOCK_LEASE_S = 60  # a promotion takes seconds; the Prefect server frees a crashed holder's slot after this


class PromotionError(RuntimeError):
    """A promotion or rollback could not be carried out; the message says what to do."""


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version an alias points to, or None."""
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


LOCAL_STORES = ("", "file", "sqlite")  # registry URI schemes whose store is a file on this machine


def lock_backend(registry_uri: str, prefect_api_url: str | None) -> str:
    """Where the promotion lock lives: ``"prefect"`` (a global concurrency limit on the Prefect server) for a
    shared store (a tracking server, a database) when a Prefect API is configured, else ``"machine"`` (a
    kernel lock on this machine). A store on this machine's disk is only written from this machine, and
    workers on several machines sharing a tracking server run deployments, hence share a Prefect server."""
    local = urlparse(registry_uri).scheme in LOCAL_STORES or Path(registry_uri).is_absolute()
    return "prefect" if prefect_api_url and not local else "machine"


@contextmanager
def promotion_lock(client: MlflowClient, name: str, timeout_s: float = 120) -> Iterator[None]:
    """Hold the promotion lock of registered model ``name`` while its aliases move.

    MLflow aliases are unique per model, but "read champion, set previous, set champion" is three calls;
    two promotions interleaving them would lose track of who displaced whom. The registry has no lock of
    its own, so the lock is the orchestrator's (see ``lock_backend``); it leaves nothing in the registry.
    """
    from prefect.settings import get_current_settings

    backend = lock_backend(client.tracking_uri, get_current_settings().api.url)
    lock = _prefect_lock(name, timeout_s) if backend == "prefect" else _machine_lock(client, name, timeout_s)
    with lock:
        yield


@contextmanager
def _machine_lock(client: MlflowClient, name: str, timeout_s: float) -> Iterator[None]:
    store = client.tracking_uri
    if urlparse(store).scheme == "sqlite":
        store = f"sqlite:///{Path(store.split(':///', 1)[1]).resolve()}"  # one lock however the path was spelt
    elif urlparse(store).scheme in ("", "file"):
        store = str(Path(store.removeprefix("file://")).resolve())
    with ExitStack() as stack:
        try:
            stack.enter_context(machine_lock(f"promotion {store} {name}", wait_s=timeout_s))
        except LockBusy as busy:
            raise PromotionError(f"{name}: another promotion ({busy.holder}) has held the promotion lock for over "
                                 f"{timeout_s:.0f} s; wait for it or stop it, then retry") from None
        yield


@contextmanager
def _prefect_lock(name: str, timeout_s: float) -> Iterator[None]:
    """One slot of the global concurrency limit ``promote-<name>`` (created on first use; listed in the Prefect
    UI under Concurrency). Its lease is renewed while held, so a crashed holder's slot comes back after
    ``LOCK_LEASE_S``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    limit = f"promote-{name}"
    with get_client(sync_client=True) as prefect:
        try:
            found = prefect.read_global_concurrency_limit_by_name(limit)
        except ObjectNotFound:
            try:
                prefect.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=limit, limit=1))
            except ObjectAlreadyExists:
                pass  # created by a promotion racing this one
        else:
            if found.limit != 1 or not found.active:
                raise PromotionError(f"the Prefect concurrency limit {limit!r} must be active with limit 1 to keep "
                                     f"promotions of {name} one at a time (it is {'active' if found.active else 'inactive'}"
                                     f" with limit {found.limit}); set it back in the Prefect UI (Concurrency)")
    with ExitStack() as stack:
        try:  # only the wait is a timeout of the lock: a timeout while aliases move is the registry's own
            stack.enter_context(concurrency(limit, occupy=1, timeout_seconds=timeout_s, lease_duration=LOCK_LEASE_S,
                                            strict=True))
        except TimeoutError:
            raise PromotionError(f"{name}: the Prefect concurrency limit {limit!r} stayed taken for over "
                                 f"{timeout_s:.0f} s; if no promotion is running, free its slot in the Prefect UI "
                                 "(Concurrency) and retry") from None
        yield


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
