"""Atomic writes and content hashes: a crash never leaves half a file under the real name.

Under torchrun (``WORLD_SIZE`` > 1) only rank 0 publishes: the other ranks' atomic
writes go to a temporary name and are dropped, so N processes never race to
replace the same output.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def is_primary() -> bool:
    """True outside torchrun, and on rank 0 under it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return True
    return int(os.environ.get("RANK", "0")) == 0


class OutputBusy(RuntimeError):
    """Another process is writing the same output."""


class LockBusy(TimeoutError):
    """A machine-wide lock stayed held for longer than the caller would wait; ``holder`` says by whom."""

    def __init__(self, key: str, holder: str) -> None:
        super().__init__(f"{key}: held by {holder}")
        self.holder = holder


@contextlib.contextmanager
def machine_lock(key: str, wait_s: float = 0.0, poll_s: float = 0.2) -> Iterator[None]:
    """Hold the machine-wide lock named ``key`` for the block, waiting up to ``wait_s`` for its holder.

    The lock is an ``flock`` on a file in the system temp folder named by the key's hash, so no project
    gets stray files and the kernel releases it when its process dies (no stale locks). Two threads of one
    process exclude each other too: each opens the file anew. Raises ``LockBusy`` after ``wait_s``.
    """
    import fcntl

    folder = Path(tempfile.gettempdir()) / "distill-locks"
    folder.mkdir(exist_ok=True)
    with open(folder / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.lock", "a+") as handle:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    raise LockBusy(key, handle.read().strip() or "another process") from None
                time.sleep(poll_s)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def output_lock(target: Path) -> Iterator[None]:
    """Hold the machine-wide lock of one output for the block, or refuse at once if another process holds it.

    Two commands writing the same folder would otherwise both succeed and the last writer would win
    silently (``dvc repro`` refuses the second run with its own lock; a stage command run by hand did
    not). The lock is keyed by the output's absolute path.
    """
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(machine_lock(f"output {Path(target).resolve()}"))
        except LockBusy as busy:
            raise OutputBusy(f"{target}: another distill command ({busy.holder}) is writing it; wait for it to "
                             "finish or stop it, then run again") from None
        yield


def _stale_temporaries(target: Path) -> list[Path]:
    """The temporary siblings a killed writer of ``target`` left behind (``atomic_dir``'s names)."""
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(old|[a-z0-9_]{{8}})$")
    return [p for p in target.parent.iterdir() if pattern.match(p.name)] if target.parent.is_dir() else []


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``target`` whole.

    The writer holds ``target``'s ``output_lock`` throughout, and first removes the temporaries that a
    killed writer left (no live writer can own them while the lock is held).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(target) if is_primary() else contextlib.nullcontext():
        # Under torchrun the other ranks write (and drop) temporaries of the same name at the same time.
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            for stale in _stale_temporaries(target):
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink(missing_ok=True)
        with _atomic_dir(target) as tmp:
            yield tmp


@contextlib.contextmanager
def _atomic_dir(target: Path) -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not is_primary():
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(target: Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary sibling file; on success it is renamed onto ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if not is_primary():
            os.unlink(name)
            return
        os.replace(name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise


def write_json(path: Path, payload: Any) -> Path:
    """Write ``payload`` as indented JSON, atomically."""
    with atomic_file(Path(path)) as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")
    return Path(path)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def hash_files(root: Path, patterns: tuple[str, ...] = ("*",), exclude: tuple[str, ...] = ()) -> str:
    """SHA-256 over the relative names and bytes of the files under ``root`` (less the relative paths in
    ``exclude``)."""
    root = Path(root)
    digest = hashlib.sha256()
    files = sorted({p for pattern in patterns for p in root.rglob(pattern)
                    if p.is_file() and p.relative_to(root).as_posix() not in exclude})
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def hash_texts(texts: list[str]) -> str:
    """SHA-256 of an ordered list of texts (the identity of an input snapshot)."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def die_with_parent() -> None:
    """Ask the kernel to stop this process when its parent dies (Linux; elsewhere nothing).

    A stage command run by ``dvc repro``, or a labelling worker, would otherwise outlive a killed
    parent and keep writing an output while a rerun starts.
    """
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
