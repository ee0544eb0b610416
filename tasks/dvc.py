"""DVC as Prefect tasks: DVC decides what reruns and keeps dvc.lock truthful."""

from __future__ import annotations

import codecs
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import yaml
from prefect import get_run_logger, task

from distill.config import ConfigError, PipelineConfig, TimeoutsConfig, write_run_overrides
from distill.layout import LAYOUT
from tasks.retry import retry_on_transient


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero; the message carries its last lines of output."""


class StageTimedOut(StageFailed):
    """A DVC stage ran past ``timeouts.stage_s`` and was stopped."""


@dataclass
class StageRun:
    stage: str
    skipped: bool
    output: str
    result: dict | None = None  # what the stage's run() returned, from its result file (reports/stages/)


def _env() -> dict[str, str]:
    """Stage commands call `distill`: make this interpreter's bin folder come first on PATH."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def dvc(args: list[str], project_dir: str) -> subprocess.CompletedProcess:
    """Run one dvc command in the project, output captured."""
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project_dir, env=_env(),
                          capture_output=True, text=True)


class RunLogLines:
    """A stage's output, line by line, to a logger (the flow run's log, which the Prefect UI shows).

    A complete line is logged once. A progress bar redraws its line with carriage returns: its
    latest state is logged at most every ``every`` seconds while it runs, and its final state when
    it ends, so a run page shows a long training moving without thousands of redraws.
    """

    def __init__(self, log: Callable[[str], None], every: float = 20.0, clock: Callable[[], float] = time.monotonic):
        self.log, self.every, self.clock = log, every, clock
        self.pending = ""
        self.last_redraw = clock()

    def feed(self, text: str) -> None:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            self._emit(line)
        if "\r" not in self.pending:
            return
        # Only the latest complete redraw matters (the last one may still be coming): keep just that, so a
        # bar redrawn many times a second does not pile up in memory between two logged states.
        drawn, _, drawing = self.pending.rpartition("\r")
        latest = next((part for part in reversed(drawn.split("\r")) if part.strip()), "")
        if latest and self.clock() - self.last_redraw >= self.every:
            self.last_redraw = self.clock()
            self.log(latest.rstrip())
            latest = ""
        self.pending = latest + "\r" + drawing

    def close(self) -> None:
        self._emit(self.pending)
        self.pending = ""

    def _emit(self, line: str) -> None:
        parts = [part for part in line.split("\r") if part.strip()]
        if parts:
            self.log(parts[-1].rstrip())


def api_only(logger) -> Callable[[str], None]:
    """``logger``'s run (its ``extra``: the flow and task run ids), logging to the Prefect API only: the
    terminal already shows a stage's output as it comes, and must not show it twice."""
    sink = logging.getLogger("distill.stage_output")
    if not sink.handlers:
        from prefect.logging.handlers import APILogHandler

        sink.addHandler(APILogHandler())
        sink.setLevel(logging.INFO)
        sink.propagate = False
    return logging.LoggerAdapter(sink, getattr(logger, "extra", None) or {}).info


def _tee(source, sink, keep: list[str], lines: RunLogLines | None = None) -> None:
    """Copy a child's stream to ours as it comes (progress bars stay live), keep a copy, and hand it to
    ``lines`` (the run's log)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for chunk in iter(lambda: source.read1(4096), b""):
        sink.buffer.write(chunk)
        sink.flush()
        text = decoder.decode(chunk)
        keep.append(text)
        if lines is not None:
            lines.feed(text)
    if lines is not None:
        lines.close()


def kill_tree(pid: int) -> None:
    """Kill ``pid`` and everything it started (children first, so none is left orphaned)."""
    import psutil

    try:
        parent = psutil.Process(pid)
        family = [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        return
    for process in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(family, timeout=10)


def dvc_streamed(args: list[str], project_dir: str, log: Callable[[str], None] | None = None,
                 timeout_s: float | None = None) -> tuple[int, str]:
    """Run one dvc command with its output shown live (and, with ``log``, line by line to it); return
    (exit code, output). Past ``timeout_s`` DVC and every process under it (the stage command, its
    workers) are killed and ``subprocess.TimeoutExpired`` is raised."""
    proc = subprocess.Popen([sys.executable, "-m", "dvc", *args], cwd=project_dir, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out: list[str] = []
    err: list[str] = []
    forward = (lambda: RunLogLines(log)) if log is not None else (lambda: None)
    threads = [threading.Thread(target=_tee, args=(proc.stdout, sys.stdout, out, forward())),
               threading.Thread(target=_tee, args=(proc.stderr, sys.stderr, err, forward()))]
    for thread in threads:
        thread.start()
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        proc.wait()
        raise
    finally:
        for thread in threads:
            thread.join()
    return code, "".join(out) + "".join(err)


def changed(stage: str, project_dir: str = ".") -> bool:
    """Whether DVC will run ``stage`` (its own deps, params or outs changed, or it is always changed),
    from DVC's Python API: the same status `dvc repro --single-item` acts on."""
    from dvc.repo import Repo

    with Repo(project_dir) as repo:  # a target is read against the working directory: name the file
        return bool(repo.status(targets=[f"{Path(project_dir, 'dvc.yaml').resolve()}:{stage}"]))


KEEP = Path(".dvc/tmp/distill-kept")  # a stage's outputs as they were before its run (DVC ignores .dvc/tmp)


def stage_outs(stage: str, project_dir: str = ".") -> list[Path]:
    """The outputs ``dvc.yaml`` declares for ``stage`` (cached or not), relative to the project."""
    stages = (yaml.safe_load((Path(project_dir) / "dvc.yaml").read_text()) or {}).get("stages", {})
    return [Path(next(iter(out)) if isinstance(out, dict) else out) for out in stages.get(stage, {}).get("outs", [])]


def _link_copy(source: Path, dest: Path) -> None:
    """``source`` (a file or folder) at ``dest`` as hard links: no data copied, and the copy survives DVC
    deleting ``source``. Copies where links are refused."""
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst, follow_symlinks=False)
        except OSError:
            shutil.copy2(src, dst, follow_symlinks=False)

    dest.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir() and not source.is_symlink():
        shutil.copytree(source, dest, symlinks=True, copy_function=link)
    else:
        link(str(source), str(dest))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def outputs_kept(stage: str, project_dir: str = "."):
    """Put ``stage``'s outputs back as they were if the block fails.

    ``dvc repro`` deletes a stage's outputs before its command runs, so a stage that then refuses a
    parameter (or crashes) would cost the last good outputs; reports that DVC does not cache could
    not even be checked out again. The outputs are kept as hard links under ``.dvc/tmp`` for the
    length of the run and moved back on failure; dvc.lock, which a failed run does not touch,
    still describes them.
    """
    root = Path(project_dir)
    keep = root / KEEP / stage
    _remove(keep)
    kept = []
    for out in stage_outs(stage, project_dir):
        if (root / out).exists():
            _link_copy(root / out, keep / out)
            kept.append(out)
    try:
        yield
    except BaseException:
        for out in kept:
            _remove(root / out)
            (root / out).parent.mkdir(parents=True, exist_ok=True)
            os.replace(keep / out, root / out)
        raise
    finally:
        _remove(keep)


def stage_timeout(project_dir: str) -> float:
    """``timeouts.stage_s`` of the project's run (params.yaml and this run's overrides)."""
    from distill.config import run_config

    try:
        return run_config(project_dir).timeouts.stage_s
    except (ConfigError, OSError):  # the config stage reports a bad params file itself
        return TimeoutsConfig().stage_s


@task(name="dvc repro", task_run_name="dvc repro {stage}")
def repro(stage: str, project_dir: str = ".", force: bool = False) -> StageRun:
    """`dvc repro <stage>`: DVC runs the stage only when its deps or params changed (or when forced).

    DVC's and the stage's output stream through as they come, to the terminal and to the task run's
    log (the Prefect UI's run page). Whether the stage ran comes from DVC's status (its Python API),
    never from its printed text.
    """
    logger = get_run_logger()
    runs = force or changed(stage, project_dir)
    limit = stage_timeout(project_dir)
    with outputs_kept(stage, project_dir) if runs else nullcontext():
        try:
            code, output = dvc_streamed(["repro", "--single-item", *(["--force"] if force else []), stage],
                                        project_dir, log=api_only(logger), timeout_s=limit)
        except subprocess.TimeoutExpired:
            raise StageTimedOut(f"stage {stage!r} ran past its {limit:g} s (timeouts.stage_s) and was stopped; its "
                                "previous outputs are kept. Raise timeouts.stage_s if it needs longer, or look "
                                "at where it hung in this run's log") from None
        if code != 0:
            lines = [line.split("\r")[-1] for line in output.splitlines()]
            tail = "\n".join(line for line in lines[-25:] if "%|" not in line)
            raise StageFailed(f"stage {stage!r} failed (dvc repro {stage}); its previous outputs are "
                              f"kept:\n{tail}")
    logger.info("stage %s %s", stage, "ran" if runs else "unchanged, skipped")
    result_file = LAYOUT.under(project_dir).result(stage)
    return StageRun(stage, not runs, output, json.loads(result_file.read_text()) if result_file.is_file() else None)


def start_run(project_dir: str, overrides: list[str]) -> tuple[PipelineConfig, list[StageRun]]:
    """The first steps of every flow run: record the run's overrides (params.yaml is not written), then
    run the ``config`` stage (params.yaml + overrides -> the params file every stage reads) and
    ``prepare``. Returns the run's configuration and the two stage runs."""
    cfg = write_run_overrides(project_dir, overrides)
    return cfg, [repro("config", project_dir), repro("prepare", project_dir)]


def queue_experiments(project_dir: str, params: list[list[str]], names: list[str],
                      target: str = "audit") -> list[str]:
    """Queue one DVC experiment per list of ``section.key=value`` items (``dvc exp run --queue -S ...``,
    named ``names``), each running the classifier pipeline up to ``target`` (not the LM stages); DVC runs
    them from the last commit when the queue starts. Returns the names."""
    for name, items in zip(names, params, strict=True):
        proc = dvc(["exp", "run", "--queue", "--name", name, *[arg for item in items for arg in ("-S", item)],
                    target], project_dir)
        if proc.returncode != 0:
            raise ConfigError(f"dvc exp run --queue ({name}) failed: {proc.stderr.strip()[-500:]}")
    return list(names)


@task(name="dvc push", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_on_transient)
def push(project_dir: str = ".") -> None:
    """Push the cached outputs to the configured DVC remote."""
    proc = dvc(["push"], project_dir)  # not --quiet: it hides the error itself
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")] or [proc.stderr.strip()]
        raise ConnectionError(f"dvc push failed: {' '.join(errors)[-500:]} (check the remote: dvc remote list)")


def lock_hashes(project_dir: str = ".") -> dict[str, str]:
    """The md5 of every stage output recorded in dvc.lock, by path."""
    lock = Path(project_dir) / "dvc.lock"
    if not lock.is_file():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    return {out["path"]: out.get("md5", "") for stage in stages.values() for out in stage.get("outs", [])}
