"""label_shards: the label stage's shards as Prefect tasks on a Dask cluster (``label.engine: dask``).

The label stage (``dvc repro label``) calls ``label_on_dask`` when the config asks for Dask; the
flow maps one task per shard (a contiguous range of whole batches of the length-sorted plan) onto
prefect-dask's ``DaskTaskRunner`` and merges the shards in plan order, so the file the stage writes
is byte-identical to the single-process one. Without a Prefect server (no PREFECT_API_URL) the stage
starts Prefect's temporary local server for the flow run and stops it after (some seconds).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE

from distill import label

log = logging.getLogger("distill")


@task(name="label shard", task_run_name="label shard {index}", cache_policy=NO_CACHE)
def label_shard(index: int, teacher_dir: str, labels: list[str], batches: list[list[str]], max_length: int,
                device: str, threads: int | None) -> list[np.ndarray]:
    """The teacher's logits of one shard's batches, on a Dask worker."""
    return label.label_shard(teacher_dir, labels, batches, max_length, device, threads)


@flow(name="label_shards")
def label_shards(teacher_dir: str, labels: list[str], prepared: str, batch_size: int, max_length: int,
                 device: str, shards: int, threads: int | None = None) -> np.ndarray:
    """Label the distillation inputs in ``shards`` mapped tasks; logits (N, K) in input order."""
    texts = label.distillation_inputs(Path(prepared))["text"].tolist()
    plan = label.batch_plan(texts, batch_size)
    ranges = label.shard_ranges(len(plan), shards)
    futures = label_shard.map(range(len(ranges)), unmapped(teacher_dir), unmapped(labels),
                              label.shard_batches(texts, plan, ranges), unmapped(max_length), unmapped(device),
                              unmapped(threads))
    return label.merge_shards(plan, ranges, futures.result(), len(texts), len(labels))


def task_runner(workers: int, address: str | None):
    """A DaskTaskRunner on the scheduler at ``address``, else on a temporary LocalCluster of ``workers``
    single-threaded processes bound to 127.0.0.1 (the dashboard too, on a free port)."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                          "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"})


@contextmanager
def prefect_api(startup_timeout_s: int = 120) -> Iterator[None]:
    """A Prefect API for this process and its Dask workers: the configured one, else a temporary server.

    Prefect's implicit temporary server lives in the flow's process and only its client knows the
    address, so every Dask worker would start a server of its own (and time out on a busy machine).
    Started here, its URL goes into the settings and the environment that the workers inherit, and it
    is stopped when the stage is done.
    """
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    server = SubprocessASGIServer()  # the instance Prefect's own client would start
    owned = not server.running
    server.start(timeout=startup_timeout_s)
    before = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield
    finally:
        if before is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = before
        if owned:
            server.stop()


def label_on_dask(teacher_dir: str, labels: list[str], prepared: str, batch_size: int, max_length: int,
                  device: str, workers: int, address: str | None = None) -> np.ndarray:
    """Run ``label_shards`` with ``workers`` shards on Dask; what ``label.teacher_logits`` calls."""
    from flows.runtime import configure_local_runtime

    configure_local_runtime()
    # Dask starts its workers with OMP_NUM_THREADS=1; on our own LocalCluster each worker gets its
    # share of the cores, as the process pool does. A cluster given by address keeps its own setting.
    threads = None if address else max(1, len(os.sched_getaffinity(0)) // workers)
    log.info("labelling in %d shards on Dask (%s)", workers, address or f"LocalCluster of {workers} processes")
    run = label_shards.with_options(task_runner=task_runner(workers, address))
    with prefect_api():
        return run(teacher_dir, labels, prepared, batch_size, max_length, device, workers, threads)
