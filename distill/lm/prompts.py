"""The LM prompt set: an instruction plus each request of the prepared data, split train / held-out.

The default is built offline from the prepared splits (the Home Assistant intent requests unless the
user brought their own data): training prompts are sampled from ``gold_train`` + ``gold_val``, held-out
prompts from ``gold_test``, so the LM held-out split never overlaps what the classifier students saw.
Each prompt keeps its gold label as the reference answer. The instructions (plain and
chain-of-thought) and the label list live in the file's metadata; the prompt text is rendered with
the tokenizer's chat template at generation time (:func:`render_prompt`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from distill import data as data_stage
from distill.config import LMPromptsConfig, PipelineConfig
from distill.io import hash_texts
from distill.lm.batch import read_parquet, write_parquet

TRAIN_SOURCES = ("gold_train", "gold_val")
HELDOUT_SOURCES = ("gold_test",)
REBUILD = "rerun the lm_prompts stage (dvc repro lm_prompts)"


class LMDataError(ValueError):
    """An LM data file (prompts, completions, top-k cache) is missing, invalid or from another run."""


@dataclass
class PromptsResult:
    path: Path
    train: int
    heldout: int
    prompts_hash: str


def prompt_id(split: str, request: str) -> str:
    """A stable id of a prompt: its split and request text (12 hex digits of SHA-256)."""
    return hashlib.sha256(f"{split}\0{request}".encode()).hexdigest()[:12]


def _sample(frame: pd.DataFrame, size: int, seed: int) -> pd.DataFrame:
    """Up to ``size`` rows, drawn round-robin over labels (so small labels are not crowded out)."""
    rng = np.random.default_rng(seed)
    frame = frame.iloc[rng.permutation(len(frame))]
    rank = frame.groupby("label", sort=False).cumcount()
    return frame.assign(_rank=rank.to_numpy()).sort_values("_rank", kind="stable").head(size).drop(columns="_rank")


def build_prompts(train_pool: pd.DataFrame, heldout_pool: pd.DataFrame, cfg: LMPromptsConfig,
                  seed: int) -> pd.DataFrame:
    """The prompt table: ``prompt_id``, ``split`` (train / heldout), ``request``, ``reference``.

    Args:
        train_pool: labelled rows (``text``, ``label``) the training prompts are drawn from.
        heldout_pool: labelled rows the held-out prompts are drawn from; texts also in the
            training pool are dropped from it.
        cfg: sizes of the two splits.
        seed: sampling seed.
    """
    frames = []
    for split, pool, size in (("train", train_pool, cfg.train_size), ("heldout", heldout_pool, cfg.heldout_size)):
        pool = pool.dropna(subset=["text", "label"]).drop_duplicates("text")
        if split == "heldout":
            pool = pool[~pool["text"].isin(train_pool["text"])]
        if pool.empty:
            raise LMDataError(f"no labelled rows to draw the {split} prompts from")
        rows = _sample(pool[["text", "label"]].astype(str), size, seed)
        frames.append(pd.DataFrame({"prompt_id": [prompt_id(split, t) for t in rows["text"]], "split": split,
                                    "request": rows["text"].to_numpy(), "reference": rows["label"].to_numpy()}))
    return pd.concat(frames, ignore_index=True)


def instructions(cfg: LMPromptsConfig, labels: list[str]) -> dict[str, str]:
    """The plain and chain-of-thought instructions with the label list filled in."""
    joined = ", ".join(labels)
    return {"instruction": cfg.instruction.replace("{labels}", joined),
            "cot_instruction": cfg.cot_instruction.replace("{labels}", joined),
            "answer_marker": cfg.answer_marker}


def write_prompts(path: Path, prompts: pd.DataFrame, meta: dict) -> str:
    """Write the prompt table with its metadata (instructions, labels, hash) atomically; returns the hash."""
    digest = hash_texts([f"{r.prompt_id}\0{r.split}\0{r.request}\0{r.reference}" for r in prompts.itertuples()]
                        + [json.dumps(meta, sort_keys=True)])
    write_parquet(path, pa.Table.from_pandas(prompts.astype(str), preserve_index=False),
                  {**meta, "prompts_hash": digest})
    return digest


def read_prompts(path: Path) -> tuple[pd.DataFrame, dict]:
    """The prompt table and its metadata."""
    table, meta = read_parquet(path, "prompt set", REBUILD, LMDataError)
    missing = {"prompt_id", "split", "request", "reference"} - set(table.column_names)
    if missing:
        raise LMDataError(f"{path}: prompt set lacks columns {sorted(missing)}; {REBUILD}")
    return table.to_pandas(), meta


def render_prompt(tokenizer, system: str, request: str) -> str:
    """The prompt text the model sees: the chat template when the tokenizer has one, else plain text."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": request}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{system}\n\nRequest: {request}\nResponse:"


def run(cfg: PipelineConfig, prepared: Path, out_path: Path) -> PromptsResult:
    """Build the prompt set from the prepared splits and write it (the lm_prompts stage)."""
    prepared = Path(prepared)
    pools = {}
    for name, sources in (("train", TRAIN_SOURCES), ("heldout", HELDOUT_SOURCES)):
        missing = [s for s in sources if not (prepared / f"{s}.parquet").is_file()]
        if missing:
            raise LMDataError(f"{prepared}: missing prepared splits {missing}; run the prepare stage first")
        pools[name] = pd.concat([data_stage.read_split(prepared, s) for s in sources], ignore_index=True)
    prompts = build_prompts(pools["train"], pools["heldout"], cfg.lm.prompts, cfg.seed)
    meta = {**instructions(cfg.lm.prompts, data_stage.read_labels(prepared)),
            "labels": data_stage.read_labels(prepared), "seed": cfg.seed}
    digest = write_prompts(Path(out_path), prompts, meta)
    counts = prompts["split"].value_counts()
    return PromptsResult(Path(out_path), int(counts.get("train", 0)), int(counts.get("heldout", 0)), digest)
