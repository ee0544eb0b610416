"""A tiny copy of the project, as a worker would run it, with params that train in seconds."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from distill.config import config_from_dict

ROOT = Path(__file__).resolve().parents[1]


def copy_project_files(root: Path, skip: tuple[str, ...]) -> None:
    """The project's tracked and new files (as a clone and the worker see them), less paths under ``skip``."""
    listing = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    for name in listing:
        if (ROOT / name).is_file() and not name.startswith(skip):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, root / name)


def tiny_project(root: Path, **sections: dict) -> Path:
    """The project's files (tracked and new, as the worker will see them) with tiny params.

    ``sections`` update the tiny params section by section (``data={"transfer_size": 200}``).
    """
    from tests.conftest import tiny_params  # here: importing the conftest sets the test environment

    copy_project_files(root, skip=("benchmarks/", "tests/"))
    params = tiny_params(None)
    params["data"].update(text_column="text", label_column="label", gold_per_label=8, transfer_size=120,
                          production_windows=2, shifted_windows=1, window_size=100)
    params["teacher"].update(epochs=2, batch_size=32)
    params["train"].update(epochs=1)
    # The serving check (a fresh interpreter loading the champion, ~15 s) has its own test in test_registry.
    params["promote"] = {"min_teacher_share": 0.0, "serving_check": False}
    params["audit"] = {"max_slice_drop": 1.0, "poor_slice_accuracy": 0.0, "max_flip_increase": 1.0}
    params["monitor"] = {"embedding_drift": False, "canary_size": 20}
    for section, values in sections.items():
        params.setdefault(section, {}).update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(config_from_dict(params).model_dump(mode="json"),
                                                     sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    return root
