"""The label stage: the teacher's logits over the distillation inputs, computed once.

The output is a Parquet file whose schema metadata records the teacher
fingerprint, the input hash and the label order. Training refuses a file whose
fingerprint does not match the teacher it is given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from distill import contracts
from distill import data as data_stage
from distill.config import PipelineConfig
from distill.io import atomic_file, hash_texts
from distill.models import load_classifier, pick_device, predict_logits, read_card

INPUT_SPLITS = ("gold_train", "transfer")
META_KEY = b"distill"


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
    meta = pq.read_schema(path).metadata or {}
    if META_KEY not in meta:
        raise TeacherOutputError(f"{path}: no distill metadata; not a teacher-output file")
    return json.loads(meta[META_KEY])


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
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
    with atomic_file(path, "wb") as handle:
        pq.write_table(table, handle)


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
    table = pq.read_table(path)
    logits = np.asarray(table.column("logits").combine_chunks().flatten()).reshape(table.num_rows, -1)
    return table.drop(["logits"]).to_pandas(), logits, meta


def run(cfg: PipelineConfig, prepared: Path, teacher_dir: Path, out_path: Path) -> LabelResult:
    """Label the distillation inputs with the teacher, unless identical outputs exist."""
    card = read_card(teacher_dir)
    inputs = distillation_inputs(prepared)
    input_hash = hash_texts(inputs["text"].tolist())
    if Path(out_path).is_file():
        try:
            meta = read_metadata(out_path)
        except (TeacherOutputError, OSError, ValueError):
            meta = {}
        if meta.get("teacher_fingerprint") == card["fingerprint"] and meta.get("input_hash") == input_hash:
            return LabelResult(Path(out_path), len(inputs), card["fingerprint"], input_hash, reused=True)
    teacher = load_classifier(teacher_dir, card["labels"])
    logits = predict_logits(teacher, inputs["text"].tolist(), cfg.label.batch_size, cfg.teacher.max_length,
                            pick_device(cfg.train.device), progress="teacher labelling")
    contracts.check_frame(output_frame_checks(inputs, logits), "teacher_outputs", source=str(out_path),
                          parameters={"num_labels": len(card["labels"])})
    meta = {"teacher_fingerprint": card["fingerprint"], "teacher_source": card.get("source"),
            "input_hash": input_hash, "labels": card["labels"], "splits": list(INPUT_SPLITS)}
    write_outputs(Path(out_path), inputs, logits, meta)
    return LabelResult(Path(out_path), len(inputs), card["fingerprint"], input_hash, reused=False)
