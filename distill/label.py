"""The label stage: the teacher's logits over the distillation inputs, computed once.

The output is a Parquet file whose schema metadata records the teacher
fingerprint, the input hash, the label order and a SHA-256 of the content
(texts, splits, labels and logit bytes). Pages carry CRC checksums too. Reading
verifies both: a flipped byte or a truncated file is refused (the label stage
itself recomputes it), never silently used. Training refuses a file whose
fingerprint does not match the teacher it is given.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from distill import contracts
from distill import data as data_stage
from distill.config import ConfigError, PipelineConfig
from distill.io import atomic_file, die_with_parent, hash_texts
from distill.lengths import with_teacher_lengths
from distill.models import load_classifier, pick_device, predict_logits, read_card
from distill.threads import CpuShare

INPUT_SPLITS = ("gold_train", "transfer")
META_KEY = b"distill"
RELABEL = "rerun the label stage (dvc repro label)"
log = logging.getLogger("distill")


class TeacherOutputError(ValueError):
    """Cached teacher outputs are missing, invalid or belong to another teacher or input set."""


@dataclass
class LabelResult:
    path: Path
    rows: int
    teacher_fingerprint: str
    input_hash: str
    reused: bool


def distillation_inputs(prepared: Path) -> pd.DataFrame:
    """The texts the teacher labels: gold training set plus the transfer set."""
    frames = [data_stage.read_split(prepared, s).assign(split=s)[["text", "label", "split"]].astype("string")
              for s in INPUT_SPLITS]
    return pd.concat(frames, ignore_index=True)


def read_metadata(path: Path) -> dict:
    """The distill metadata of a teacher-output file."""
    try:
        meta = pq.read_schema(path).metadata or {}
        if META_KEY not in meta:
            raise TeacherOutputError(f"{path}: no distill metadata; not a teacher-output file; {RELABEL}")
        return json.loads(meta[META_KEY])
    except (pa.ArrowException, OSError, ValueError) as exc:
        if isinstance(exc, TeacherOutputError):
            raise
        raise TeacherOutputError(f"{path}: the teacher-output file is damaged or incomplete ({exc}); "
                                 f"{RELABEL}") from None


def content_hash(texts: list[str], splits: list[str], labels: list, logits: np.ndarray) -> str:
    """SHA-256 of what a teacher-output file holds: texts, splits, gold labels and float32 logits."""
    digest = hashlib.sha256()
    for column in (texts, splits, [v if isinstance(v, str) else "\x00null" for v in labels]):
        digest.update(hash_texts([str(v) for v in column]).encode())
    digest.update(str(logits.shape).encode())
    digest.update(np.ascontiguousarray(logits, dtype="<f4").tobytes())
    return digest.hexdigest()


def output_frame_checks(frame: pd.DataFrame, logits: np.ndarray) -> pd.DataFrame:
    """The derived columns the teacher_outputs contract checks."""
    with np.errstate(all="ignore"):
        shifted = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    max_abs = np.abs(logits).max(axis=1)
    max_abs = np.where(np.isnan(logits).any(axis=1), np.nan, max_abs)
    return pd.DataFrame({"text": frame["text"].to_numpy(), "split": frame["split"].to_numpy(),
                         "prob_sum": probs.sum(axis=1), "max_abs_logit": max_abs,
                         "num_logits": np.full(len(frame), logits.shape[1])})


def write_outputs(path: Path, frame: pd.DataFrame, logits: np.ndarray, meta: dict) -> None:
    """Write texts and logits with the metadata in the Parquet schema, atomically."""
    table = pa.table({
        "text": pa.array(frame["text"].tolist(), pa.string()),
        "split": pa.array(frame["split"].tolist(), pa.string()),
        "label": pa.array([v if isinstance(v, str) else None for v in frame["label"]], pa.string()),
        "logits": pa.FixedSizeListArray.from_arrays(pa.array(logits.astype(np.float32).ravel()), logits.shape[1]),
    })
    digest = content_hash(table.column("text").to_pylist(), table.column("split").to_pylist(),
                          table.column("label").to_pylist(), logits.astype(np.float32))
    table = table.replace_schema_metadata({META_KEY: json.dumps({**meta, "content_hash": digest}).encode()})
    with atomic_file(path, "wb") as handle:
        pq.write_table(table, handle, write_page_checksum=True, use_dictionary=["text", "split", "label"])


def read_outputs(path: Path, expected_fingerprint: str | None = None) -> tuple[pd.DataFrame, np.ndarray, dict]:
    """Read teacher outputs; refuse a file made by another teacher."""
    path = Path(path)
    if not path.is_file():
        raise TeacherOutputError(f"{path}: teacher outputs not found; run the label stage first")
    meta = read_metadata(path)
    if expected_fingerprint and meta["teacher_fingerprint"] != expected_fingerprint:
        raise TeacherOutputError(
            f"{path}: computed by teacher {meta['teacher_fingerprint'][:12]}, but the teacher is now "
            f"{expected_fingerprint[:12]}; rerun the label stage (dvc repro label)")
    try:
        table = pq.read_table(path, page_checksum_verification=True)
        logits = np.asarray(table.column("logits").combine_chunks().flatten()).reshape(table.num_rows, -1)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise TeacherOutputError(f"{path}: the teacher-output file is damaged or incomplete ({exc}); "
                                 f"{RELABEL}") from None
    frame = table.drop(["logits"]).to_pandas()
    if "content_hash" not in meta:
        raise TeacherOutputError(f"{path}: written without a content hash (an older version), so it cannot "
                                 f"be verified; {RELABEL}")
    found = content_hash(table.column("text").to_pylist(), table.column("split").to_pylist(),
                         table.column("label").to_pylist(), logits)
    if found != meta["content_hash"]:
        raise TeacherOutputError(f"{path}: content hash {found[:12]} does not match the recorded "
                                 f"{meta['content_hash'][:12]}; the file was changed or damaged after the label "
                                 f"stage wrote it; {RELABEL}")
    return frame, logits, meta


def batch_plan(texts: list[str], batch_size: int) -> list[np.ndarray]:
    """The batches ``predict_logits`` forms: indices sorted by length (stable), cut every ``batch_size``."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    return [order[start:start + batch_size] for start in range(0, len(texts), batch_size)]


def shard_ranges(n_batches: int, workers: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) ranges of the batch plan, one per worker, sizes differing by at most one."""
    bounds = np.linspace(0, n_batches, min(workers, max(n_batches, 1)) + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def label_shard(teacher_dir: str, labels: list[str], batches: list[list[str]], max_length: int,
                device: str, threads: int | None = None) -> list[np.ndarray]:
    """Logits of whole batches of the plan: each batch is run exactly as the single-process run runs it."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    teacher = load_classifier(Path(teacher_dir), labels)
    return [predict_logits(teacher, texts, len(texts), max_length, pick_device(device)) for texts in batches]


def shard_batches(texts: list[str], plan: list[np.ndarray], shards: list[tuple[int, int]]) -> list[list[list[str]]]:
    """The texts of every batch of every shard, as ``label_shard`` takes them."""
    return [[[texts[i] for i in idx] for idx in plan[a:b]] for a, b in shards]


def merge_shards(plan: list[np.ndarray], shards: list[tuple[int, int]], results: list[list[np.ndarray]],
                 n_rows: int, n_labels: int) -> np.ndarray:
    """Every shard's batch logits put back in input order: the one merge of both engines."""
    out = np.zeros((n_rows, n_labels), dtype=np.float32)
    for (a, b), logits in zip(shards, results, strict=True):
        for idx, batch in zip(plan[a:b], logits, strict=True):
            out[idx] = batch
    return out


def label_texts(teacher_dir: Path, labels: list[str], texts: list[str], batch_size: int, max_length: int,
                device: str, workers: int = 1) -> np.ndarray:
    """Teacher logits (N, K) for ``texts``; with ``workers`` > 1, shards of the batch plan run in a process pool.

    Shards are ranges of the batch plan, never of raw rows, so every batch holds the same
    texts with the same padding as in one process, and the merged array is bit-identical.
    """
    if workers <= 1:
        CpuShare.follow(pick_device(device).type)  # torch's threads: the cores other busy processes leave free
        teacher = load_classifier(teacher_dir, labels)
        return predict_logits(teacher, texts, batch_size, max_length, pick_device(device),
                              progress="teacher labelling")
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import torch

    plan = batch_plan(texts, batch_size)
    shards = shard_ranges(len(plan), workers)
    threads = max(1, torch.get_num_threads() // len(shards))
    with ProcessPoolExecutor(len(shards), mp_context=multiprocessing.get_context("spawn"),
                             initializer=die_with_parent) as pool:
        futures = [pool.submit(label_shard, str(teacher_dir), labels, batches, max_length, device, threads)
                   for batches in shard_batches(texts, plan, shards)]
        return merge_shards(plan, shards, [f.result() for f in futures], len(texts), len(labels))


class LabelEngine(Protocol):
    """Labels the distillation inputs elsewhere (e.g. on a Dask cluster); handed to ``run`` by its caller."""

    def __call__(self, teacher_dir: str, labels: list[str], prepared: str, batch_size: int, max_length: int,
                 device: str, workers: int, address: str | None) -> np.ndarray: ...


def teacher_logits(cfg: PipelineConfig, prepared: Path, teacher_dir: Path, labels: list[str],
                   texts: list[str], engines: Mapping[str, LabelEngine] | None = None) -> np.ndarray:
    """The teacher's logits over the distillation inputs, on the configured ``label.engine``.

    ``local`` runs here (one process, or ``label.workers`` spawned ones). Any other engine is
    looked up in ``engines``, which the caller hands in: the core does not know the orchestrators
    (the Dask engine is a Prefect flow in flows/, handed in by the ``distill`` command).
    """
    if cfg.label.engine == "local":
        return label_texts(teacher_dir, labels, texts, cfg.label.batch_size, cfg.teacher.max_length,
                           cfg.train.device, cfg.label.workers)
    engine = (engines or {}).get(cfg.label.engine)
    if engine is None:
        raise ConfigError(f"label.engine: {cfg.label.engine!r} is not available here (known: "
                          f"{', '.join(['local', *sorted(engines or {})])}); run the stage through the `distill` "
                          f"command (dvc repro label), or set label.engine: local")
    # The engine reads the texts from `prepared` itself, so flow parameters stay small.
    return engine(str(teacher_dir), labels, str(prepared), cfg.label.batch_size, cfg.teacher.max_length,
                  cfg.train.device, cfg.label.workers, cfg.label.dask_address)


def run(cfg: PipelineConfig, prepared: Path, teacher_dir: Path, out_path: Path,
        engines: Mapping[str, LabelEngine] | None = None) -> LabelResult:
    """Label the distillation inputs with the teacher, unless identical outputs exist.

    ``engines`` holds the labelling engines other than ``local`` (see ``teacher_logits``).
    """
    cfg = with_teacher_lengths(cfg, teacher_dir)
    card = read_card(teacher_dir)
    inputs = distillation_inputs(prepared)
    input_hash = hash_texts(inputs["text"].tolist())
    if Path(out_path).is_file():
        try:
            _, _, meta = read_outputs(out_path, card["fingerprint"])
        except TeacherOutputError as exc:
            log.warning("not reusing the cached teacher outputs: %s", exc)
            meta = {}
        if meta.get("input_hash") == input_hash:
            return LabelResult(Path(out_path), len(inputs), card["fingerprint"], input_hash, reused=True)
    logits = teacher_logits(cfg, Path(prepared), Path(teacher_dir), card["labels"], inputs["text"].tolist(), engines)
    contracts.check_frame(output_frame_checks(inputs, logits), "teacher_outputs", source=str(out_path),
                          parameters={"num_labels": len(card["labels"])})
    meta = {"teacher_fingerprint": card["fingerprint"], "teacher_source": card.get("source"),
            "input_hash": input_hash, "labels": card["labels"], "splits": list(INPUT_SPLITS)}
    write_outputs(Path(out_path), inputs, logits, meta)
    return LabelResult(Path(out_path), len(inputs), card["fingerprint"], input_hash, reused=False)
