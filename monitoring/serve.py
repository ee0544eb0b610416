"""Serving through the champion: every answer is written to the production log.

:class:`Predictor` is the one code path: ``distill serve`` (a small HTTP server) and the default
run's simulated traffic both call :meth:`Predictor.predict`.

HTTP (JSON, 127.0.0.1 by default)::

    POST /predict   {"texts": ["turn on the light"], "request_ids": ["optional"]}
                    -> {"model_version": "3", "predictions": [{"request_id", "label", "score",
                        "probabilities"}]}
    POST /feedback  {"request_ids": ["..."], "labels": ["..."]}  -> {"recorded": 1}
    GET  /health    -> {"model_version": "3"}
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd

from monitoring.production import TextPolicy, append_predictions, probabilities_json, record_feedback


class Predictor:
    """A model with ``predict(DataFrame[text]) -> DataFrame[label, score, p_<label>...]`` that logs."""

    def __init__(self, model, model_version: str, log_root: Path, text_policy: TextPolicy = "raw",
                 source: str = "serve"):
        self.model, self.model_version, self.log_root = model, str(model_version), Path(log_root)
        self.text_policy, self.source = text_policy, source
        self._lock = threading.Lock()  # torch models are not guaranteed thread-safe; the log is

    def predict(self, texts: Sequence[str], request_ids: Sequence[str] | None = None,
                timestamps: Sequence[pd.Timestamp] | None = None) -> pd.DataFrame:
        """Answer ``texts`` and append them to the log; returns request_id, label, score, probabilities."""
        texts = [str(t) for t in texts]
        ids = [str(r) for r in request_ids] if request_ids is not None else [uuid.uuid4().hex for _ in texts]
        if len(ids) != len(texts):
            raise ValueError("request_ids and texts differ in length")
        with self._lock:
            out = self.model.predict(pd.DataFrame({"text": texts}))
        prob_cols = [c for c in out.columns if c.startswith("p_")]
        probabilities = [probabilities_json({c[2:]: row[c] for c in prob_cols}) for _, row in out.iterrows()]
        now = datetime.now(timezone.utc)
        frame = pd.DataFrame({
            "request_id": ids, "timestamp": list(timestamps) if timestamps is not None else [now] * len(texts),
            "text": texts, "prediction": out["label"].astype(str).to_numpy(),
            "confidence": out["score"].astype(float).to_numpy(), "probabilities": probabilities,
            "model_version": self.model_version, "source": self.source})
        append_predictions(self.log_root, frame, self.text_policy)
        return frame[["request_id", "prediction", "confidence", "probabilities"]].rename(
            columns={"prediction": "label", "confidence": "score"})

    def feedback(self, request_ids: Sequence[str], labels: Sequence[str]) -> int:
        """Record ground truth for earlier requests."""
        record_feedback(self.log_root, list(request_ids), list(labels))
        return len(request_ids)


def _handler(predictor: Predictor):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format, *args):  # noqa: A002 - keep the server quiet
            pass

        def _reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802
            if self.path == "/health":
                self._reply(200, {"model_version": predictor.model_version})
            else:
                self._reply(404, {"error": "unknown path"})

        def do_POST(self):  # noqa: N802
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if self.path == "/predict":
                    texts = body.get("texts") or ([body["text"]] if "text" in body else [])
                    if not texts:
                        raise ValueError("give 'texts' (a list) or 'text'")
                    out = predictor.predict(texts, body.get("request_ids"))
                    rows = [{**r, "probabilities": json.loads(r["probabilities"])} for r in out.to_dict("records")]
                    self._reply(200, {"model_version": predictor.model_version, "predictions": rows})
                elif self.path == "/feedback":
                    n = predictor.feedback(body["request_ids"], body["labels"])
                    self._reply(200, {"recorded": n})
                else:
                    self._reply(404, {"error": "unknown path"})
            except (ValueError, KeyError, TypeError) as exc:
                self._reply(400, {"error": str(exc)})

    return Handler


def make_server(predictor: Predictor, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
    """A threaded HTTP server answering through ``predictor`` (call ``serve_forever``)."""
    return ThreadingHTTPServer((host, port), _handler(predictor))
