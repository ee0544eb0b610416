"""Batch-1 latency of the teacher and the student as MLflow serves them: the registered pyfunc, in process
and behind ``mlflow models serve``.

    python benchmarks/served.py --teacher models/teacher --student models/student
    python benchmarks/served.py --teacher models/teacher --student models/student --no-http --requests 500
    python benchmarks/served.py --compressed models/student_compressed   # + its INT8 model, as an INT8 version

Each folder is saved as the pyfunc distill registers (``tasks.registry.classifier_pyfunc``: the folder's
ONNX export run by ONNX Runtime with ``evaluate.threads`` threads) into a scratch folder. Then, for each:

- **pyfunc**: ``model.predict`` on one-row DataFrames in this process (the work a server does per
  request, without HTTP);
- **http**: one JSON request at a time to ``mlflow models serve`` on 127.0.0.1 (one model served at a
  time, a kept-alive connection), the latency a client sees.

A third model, **null**, is a pyfunc with the student's signature that answers without running any model
(a fixed row of the same columns): what MLflow itself costs per request. The teacher's time over it is
the largest batch-1 speed-up any student could show through that server (a student that takes no time).

The same texts (from --data, else generic requests) go to both models in rounds that alternate the
order; figures are medians over rounds of the per-round median. Prints a table and, with --json, writes
the figures. Run it alone: a second busy process on the machine moves every figure.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow

REQUESTS = ["turn on the lights in the kitchen", "what is the weather like tomorrow", "set a timer for ten minutes",
            "is the front door locked", "play some jazz in the living room", "turn off the bedroom fan",
            "what time is it in tokyo", "open the garage door please"]


def texts_from(path: Path | None, limit: int) -> list[str]:
    if path is None:
        return (REQUESTS * (limit // len(REQUESTS) + 1))[:limit]
    from distill import data

    frame = data.read_split(path, "gold_test") if path.is_dir() else data.READERS[path.suffix.lower()](path)
    return frame["text"].astype(str).sample(min(limit, len(frame)), random_state=0, replace=False).tolist()


def save_pyfunc(folder: Path, target: Path, threads: int, precision: str = "fp32") -> Path:
    from tasks.registry import classifier_pyfunc

    mlflow.pyfunc.save_model(str(target), **classifier_pyfunc(folder, threads, precision=precision))
    return target


class NullClassifier(mlflow.pyfunc.PythonModel):
    """A pyfunc that answers every row with the same label, without a model: MLflow's own cost per request."""

    def __init__(self, labels: list[str]):
        self.labels = labels

    def predict(self, context, model_input, params=None):
        import pandas as pd

        rows = len(model_input)
        columns = {"label": [self.labels[0]] * rows, "score": [1.0] * rows}
        columns.update((f"p_{label}", [float(i == 0)] * rows) for i, label in enumerate(self.labels))
        return pd.DataFrame(columns)


def save_null(like: Path, target: Path) -> Path:
    """The null pyfunc with the signature and input example of ``like``'s classifier pyfunc."""
    from distill.models import read_card
    from tasks.registry import classifier_pyfunc

    spec = classifier_pyfunc(like)
    mlflow.pyfunc.save_model(str(target), python_model=NullClassifier(list(read_card(like)["labels"])), signature=spec["signature"],
                             input_example=spec["input_example"], pip_requirements=spec["pip_requirements"])
    return target


def time_pyfunc(model, texts: list[str]) -> float:
    """Median ms of ``model.predict`` on one-row DataFrames."""
    import pandas as pd

    frames = [pd.DataFrame({"text": [t]}) for t in texts]
    for frame in frames[:10]:
        model.predict(frame)
    timings = []
    for frame in frames:
        start = time.perf_counter()
        model.predict(frame)
        timings.append((time.perf_counter() - start) * 1000)
    return statistics.median(timings)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def time_http(model_dir: Path, texts: list[str], rounds: int) -> list[float]:
    """Per-round median ms of one-row JSON requests to ``mlflow models serve`` (started and stopped here)."""
    port = free_port()
    path = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(model_dir), "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PATH": path})
        try:
            connection = wait_for_server(port, proc, log)
            bodies = [json.dumps({"dataframe_split": {"columns": ["text"], "data": [[t]]}}) for t in texts]
            for body in bodies[:10]:
                post(connection, body)
            out = []
            for _ in range(rounds):
                timings = []
                for body in bodies:
                    start = time.perf_counter()
                    post(connection, body)
                    timings.append((time.perf_counter() - start) * 1000)
                out.append(statistics.median(timings))
            return out
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def wait_for_server(port: int, proc: subprocess.Popen, log, timeout: float = 180) -> http.client.HTTPConnection:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise SystemExit(f"mlflow models serve exited:\n{log.read().decode()[-3000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            connection.request("GET", "/ping")
            if connection.getresponse().read() is not None:
                return connection
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"mlflow models serve did not answer on port {port} in {timeout:.0f} s")


def post(connection: http.client.HTTPConnection, body: str) -> None:
    connection.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    payload = response.read()
    if response.status != 200:
        raise SystemExit(f"/invocations answered {response.status}: {payload[:500]!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, default=Path("models/teacher"))
    parser.add_argument("--student", type=Path, default=Path("models/student"))
    parser.add_argument("--compressed", type=Path, help="a compressed student's folder: also served as its INT8 model "
                        "(model-int8.onnx), as an INT8 version of it is")
    parser.add_argument("--data", type=Path, help="prepared folder or data file whose texts are sent")
    parser.add_argument("--requests", type=int, default=200, help="requests per model and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, help="serving threads (default: evaluate.threads of --params)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--no-http", dest="http", action="store_false", help="time the pyfunc in process only")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from distill.config import load_config

    threads = args.threads or load_config(args.params, missing_ok=True).evaluate.threads
    texts = texts_from(args.data, args.requests)
    models = {"teacher": (args.teacher, "fp32"), "student": (args.student, "fp32")}
    if args.compressed:
        models["compressed_int8"] = (args.compressed, "int8")
    figures: dict[str, dict] = {name: {"pyfunc_ms": [], "http_ms": []} for name in models}
    with tempfile.TemporaryDirectory(prefix="distill-served-") as scratch:
        saved = {name: save_pyfunc(folder, Path(scratch) / name, threads, precision)
                 for name, (folder, precision) in models.items()}
        saved["null"] = save_null(args.student, Path(scratch) / "null")
        figures["null"] = {"pyfunc_ms": [], "http_ms": []}
        loaded = {name: mlflow.pyfunc.load_model(str(path)) for name, path in saved.items()}
        for name, model in loaded.items():
            figures[name]["runtime"] = getattr(model.unwrap_python_model(), "runtime", "none (no model)")
        for r in range(args.rounds):
            for name in (list(saved) if r % 2 == 0 else list(saved)[::-1]):
                figures[name]["pyfunc_ms"].append(time_pyfunc(loaded[name], texts))
        del loaded
        if args.http:
            for name, path in saved.items():
                figures[name]["http_ms"] = time_http(path, texts, args.rounds)
    table = Table(title=f"batch-1 latency as served, {len(texts)} requests x {args.rounds} rounds, "
                        f"{threads} serving thread(s)")
    for column in ("model", "runtime", "pyfunc.predict ms", "mlflow models serve ms"):
        table.add_column(column, justify="left" if column in ("model", "runtime") else "right")
    summary = {}
    for name, f in figures.items():
        summary[name] = {"runtime": f["runtime"], "pyfunc_ms": statistics.median(f["pyfunc_ms"]),
                         "http_ms": statistics.median(f["http_ms"]) if f["http_ms"] else None}
        http_ms = summary[name]["http_ms"]
        table.add_row(name, f["runtime"], f"{summary[name]['pyfunc_ms']:.3f}",
                      f"{http_ms:.3f}" if http_ms is not None else "-")
    ways = ["pyfunc", "http"] if args.http else ["pyfunc"]
    speedup = {way: summary["teacher"][f"{way}_ms"] / summary["student"][f"{way}_ms"] for way in ways}
    ceiling = {way: summary["teacher"][f"{way}_ms"] / summary["null"][f"{way}_ms"] for way in ways}
    table.add_row("speed-up", "", *(f"{speedup[way]:.1f}x" for way in ways), *(["-"] if not args.http else []))
    if "compressed_int8" in summary:
        speedup["compressed_int8"] = {way: summary["teacher"][f"{way}_ms"] / summary["compressed_int8"][f"{way}_ms"]
                                      for way in ways}
        table.add_row("speed-up (compressed_int8)", "", *(f"{speedup['compressed_int8'][way]:.1f}x" for way in ways),
                      *(["-"] if not args.http else []))
    table.add_row("ceiling (teacher / null)", "", *(f"{ceiling[way]:.1f}x" for way in ways),
                  *(["-"] if not args.http else []))
    Console(width=120).print(table)
    if args.json:
        args.json.write_text(json.dumps({"threads": threads, "requests": len(texts), "rounds": args.rounds,
                                         "models": summary, "speedup": speedup,
                                         "ceiling": ceiling}, indent=2))


if __name__ == "__main__":
    main()
