"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is one folder, replaced whole (``io.atomic_dir``), so a kill at any
moment leaves either the previous checkpoint or the new one, never a mix:

- ``model.safetensors``, ``best.safetensors``, ``objective.safetensors``: the
  student, the best-so-far student and the objective's learned projections (the
  last two only for loops that have them: the LM trainer keeps neither);
- ``optimizer.safetensors``: AdamW's per-parameter state (``"<param>.<name>"``);
- ``rng.safetensors``: torch's CPU (and CUDA) generator states;
- ``state.json``: step, early-stopping counters, history, the batch stream's
  epoch / offset / numpy generator state, optimizer param groups, scheduler
  state and the run key.

The run key hashes what makes two runs the same run (settings, data, teacher
outputs, objective, initial weights); a checkpoint with another key is stale
and is discarded, never resumed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from distill.io import atomic_dir, is_primary, read_json, write_json

log = logging.getLogger("distill")
FORMAT = 1
LATEST = "latest"


def checkpoint_dir_for(out_dir: Path, configured: str | None = None) -> Path:
    """Where a stage writing ``out_dir`` keeps its checkpoints: a hidden sibling, or under ``configured``."""
    out_dir = Path(out_dir)
    if configured:
        return Path(configured) / out_dir.name
    return out_dir.parent / f".{out_dir.name}.checkpoint"


def _tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies (safetensors refuses shared storage)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def hash_state(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names and bytes."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous()
        digest.update(key.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def run_key(parts: dict) -> str:
    """SHA-256 of the JSON of what identifies a run."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _optimizer_split(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors = {f"{pid}.{name}": value for pid, entries in state["state"].items()
               for name, value in entries.items() if isinstance(value, torch.Tensor)}
    scalars = [{"param": pid, "name": name, "value": value} for pid, entries in state["state"].items()
               for name, value in entries.items() if not isinstance(value, torch.Tensor)]
    return tensors, {"groups": state["param_groups"], "scalars": scalars}


def _optimizer_join(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    for item in meta["scalars"]:
        state.setdefault(int(item["param"]), {})[item["name"]] = item["value"]
    return {"state": state, "param_groups": meta["groups"]}


def rng_tensors() -> dict[str, torch.Tensor]:
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda{i}"] = state
    return out


def save(folder: Path, *, key: str, model, optimizer, scheduler, progress: dict, best_state: dict | None = None,
         objective=None) -> None:
    """Write the checkpoint folder (rank 0 only), replacing the previous one atomically.

    ``best_state`` and ``objective`` are saved when given; ``load`` is then told which parts to expect.
    """
    if not is_primary():
        return
    opt_tensors, opt_meta = _optimizer_split(optimizer)
    with atomic_dir(Path(folder) / LATEST) as tmp:
        save_file(_tensors(model.state_dict()), str(tmp / "model.safetensors"))
        if best_state is not None:
            save_file(_tensors(best_state), str(tmp / "best.safetensors"))
        if objective is not None:
            save_file(_tensors(objective.state_dict()), str(tmp / "objective.safetensors"))
        save_file(_tensors(opt_tensors), str(tmp / "optimizer.safetensors"))
        save_file(_tensors(rng_tensors()), str(tmp / "rng.safetensors"))
        write_json(tmp / "state.json", {"format": FORMAT, "key": key, "optimizer_meta": opt_meta,
                                        "scheduler": scheduler.state_dict(), **progress})


PARTS = ("model", "best", "objective", "optimizer", "rng")  # what the classifier trainer saves


def load(folder: Path, key: str, parts: tuple[str, ...] = PARTS) -> dict | None:
    """The checkpoint of this run, or None; a stale or unreadable one (or one missing ``parts``) is
    reported and ignored."""
    latest = Path(folder) / LATEST
    if not (latest / "state.json").is_file():
        return None
    try:
        state = read_json(latest / "state.json")
        if state.get("format") != FORMAT or state.get("key") != key:
            log.warning("checkpoint %s belongs to another run (settings, data or weights changed); "
                        "starting from step 0", latest)
            return None
        tensors = {name: load_file(str(latest / f"{name}.safetensors")) for name in parts}
    except (OSError, ValueError, KeyError) as exc:  # safetensors raises ValueError-like errors on damage
        log.warning("checkpoint %s is unreadable (%s); starting from step 0", latest, exc)
        return None
    return {**state, **tensors}


def restore(ckpt: dict, model, objective, optimizer, scheduler) -> None:
    """Put model, objective (unless None), optimizer, scheduler and torch RNG back where the checkpoint left them."""
    model.load_state_dict(ckpt["model"])
    if objective is not None:
        objective.load_state_dict(ckpt["objective"])
    optimizer.load_state_dict(_optimizer_join(ckpt["optimizer"], ckpt["optimizer_meta"]))
    scheduler.load_state_dict(ckpt["scheduler"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    cuda = [ckpt["rng"][k] for k in sorted(ckpt["rng"]) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def clear(folder: Path | None) -> None:
    """Remove a stage's checkpoints once its output is safely written."""
    if folder is not None and is_primary():
        shutil.rmtree(folder, ignore_errors=True)


__all__ = ["PARTS", "checkpoint_dir_for", "clear", "hash_state", "load", "restore", "run_key", "save"]
