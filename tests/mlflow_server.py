"""A real MLflow tracking server on 127.0.0.1 for the registry tests (SQLite or PostgreSQL backend,
served artifacts), and a throwaway PostgreSQL cluster to back it."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    """Poll ``url`` until it answers 200; fail with the server's log when it dies or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@contextmanager
def mlflow_server(root: Path, timeout: float = 120, backend_store_uri: str | None = None,
                  port: int | None = None) -> Iterator[str]:
    """``mlflow server`` with a SQLite store (or ``backend_store_uri``) and a local artifact root under
    ``root``, on ``port`` (a free one by default); yields its URI.

    ``--artifacts-destination`` with the default ``--serve-artifacts``: clients read and write
    artifacts through the server (``mlflow-artifacts:/``), as they would against a remote one.
    """
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = root / "server.log"
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", backend_store_uri or f"sqlite:///{root / 'mlflow.db'}",
               "--artifacts-destination", str(root / "artifacts"), "--workers", "1"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    with open(log, "w") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{uri}/health", proc, log, timeout)
        yield uri
    finally:
        # The whole session: `mlflow server` does not pass SIGTERM on to its uvicorn and job-runner
        # children (and the job runner's huey consumers outlive a killed parent).
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def postgres_bin() -> Path | None:
    """The folder of Debian's PostgreSQL server programs (newest major first), else one on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@contextmanager
def postgres(database: str = "mlflow", timeout: float = 60) -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 with one empty ``database``; yields its libpq URI.

    The server refuses to run as root, so as root every program runs as the ``postgres`` user on a
    data folder it owns (a fresh folder under the system temp dir: pytest's own are root-only).
    Trust authentication on 127.0.0.1 and a unix socket inside that folder only; stopped and deleted
    on exit.
    """
    bindir = postgres_bin()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL is not installed (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="distill-pg-"))
    as_owner: list[str] = []
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_owner = ["runuser", "-u", "postgres", "--"]
    data, port, log = root / "data", free_port(), root / "postgres.log"

    def run(*args: str) -> None:
        proc = subprocess.run([*as_owner, *args], capture_output=True, text=True, timeout=timeout, cwd=root)
        if proc.returncode != 0:
            extra = log.read_text()[-3000:] if log.is_file() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}{extra}")

    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root} -c fsync=off"
    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
            "--no-instructions")
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", str(int(timeout)),
            "start")
        try:
            run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", database)
            yield f"postgresql://postgres@127.0.0.1:{port}/{database}"
        finally:
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)
