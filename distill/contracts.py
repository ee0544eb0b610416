"""Data contracts: Great Expectations suites checked at the pipeline's hand-offs.

Every suite and the runner live in this one (long) module on purpose: the committed GX context is
regenerated from it, so the contracts have one source.

The suites, validation definitions and checkpoints live in a committed GX file
context (``gx/`` at the repository root). Run results and the HTML data docs go
to ``gx/uncommitted/`` (git-ignored). Regenerate the committed part with::

    python -m distill.contracts gx

Suites
------
``raw_examples``
    The user's data after loading and renaming to ``text`` / ``label``.
``prepared_splits``
    The union of all prepared splits (``text``, ``label``, ``split``).
``teacher_outputs``
    Per-row summaries of the teacher's logits (``text``, ``split``, ``prob_sum``,
    ``max_abs_logit``, ``num_logits``), computed by the caller.

Suite values that depend on the run (``max_text_chars``, ``label_set``,
``num_labels``) are GX expectation parameters (``{"$PARAMETER": name}``) and are
passed to :func:`check_frame` as ``parameters``.

Great Expectations is imported lazily: importing this module does not import it.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import sys
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "ContractError",
    "ContractReport",
    "SUITES",
    "DEFAULT_CONTEXT_ROOT",
    "build_context",
    "check_frame",
]

#: The committed GX file context: ``gx/`` next to the ``distill`` package.
DEFAULT_CONTEXT_ROOT = Path(__file__).resolve().parents[1] / "gx"

#: The one pandas data source in the context; each suite gets a dataframe asset of its name.
DATASOURCE_NAME = "distill"
BATCH_DEFINITION_NAME = "whole_dataframe"
DOCS_SITE_NAME = "local_site"

#: Splits a prepared data set may contain.
SPLITS = ("gold_train", "gold_val", "gold_test", "transfer", "reference", "production")
GOLD_SPLITS = ("gold_train", "gold_val", "gold_test")

#: Suite name -> the expectation parameters it needs at run time.
SUITES: dict[str, tuple[str, ...]] = {
    "raw_examples": ("max_text_chars",),
    "prepared_splits": ("max_text_chars", "label_set"),
    "teacher_outputs": ("num_labels",),
}

#: How many unexpected values GX keeps per failed expectation (and we quote).
PARTIAL_UNEXPECTED_COUNT = 5
#: Validation results kept per suite in gx/uncommitted (older ones, and their data docs
#: pages, are deleted before each run). GX lists and re-reads the stored results on every
#: data docs update, so an unbounded history makes each check slower run after run.
KEEP_RESULTS_PER_SUITE = 20
#: Validation results listed on the data docs index page.
DOCS_VALIDATION_RESULTS_LIMIT = KEEP_RESULTS_PER_SUITE * len(SUITES)

_GX_FILES = (
    "great_expectations.yml",
    ".gitignore",
    "expectations",
    "validation_definitions",
    "checkpoints",
    "plugins",
)


class ContractError(ValueError):
    """A data contract failed; the message names the suite, the failed expectation(s),
    the column and the source file."""

    def __init__(self, message: str, report: ContractReport | None = None):
        super().__init__(message)
        self.report = report


@dataclass
class ContractReport:
    suite: str
    passed: bool
    failures: list[str] = field(default_factory=list)
    docs_path: Path | None = None


# --------------------------------------------------------------------------- #
# GX setup (lazy)
# --------------------------------------------------------------------------- #


def _quiet_gx() -> None:
    """Turn off GX analytics before GX is imported; keep its loggers quiet."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import logging

    logger = logging.getLogger("great_expectations")
    if logger.level == logging.NOTSET:  # leave a level the application chose alone
        logger.setLevel(logging.ERROR)


def _param(name: str) -> dict[str, str]:
    return {"$PARAMETER": name}


def _suite_expectations(name: str) -> list[Any]:
    """The expectations of one suite, as GX expectation objects."""
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    if name == "raw_examples":
        return [
            gxe.ExpectTableRowCountToBeBetween(min_value=1),
            gxe.ExpectColumnToExist(column="text"),
            gxe.ExpectColumnToExist(column="label"),
            gxe.ExpectColumnValuesToNotBeNull(column="text"),
            gxe.ExpectColumnValueLengthsToBeBetween(
                column="text", min_value=1, max_value=_param("max_text_chars")
            ),
            gxe.ExpectColumnValuesToNotBeNull(column="label"),
        ]
    if name == "prepared_splits":
        return [
            gxe.ExpectTableRowCountToBeBetween(min_value=1),
            gxe.ExpectColumnToExist(column="text"),
            gxe.ExpectColumnToExist(column="label"),
            gxe.ExpectColumnToExist(column="split"),
            gxe.ExpectColumnValuesToNotBeNull(column="text"),
            gxe.ExpectColumnValueLengthsToBeBetween(
                column="text", min_value=1, max_value=_param("max_text_chars")
            ),
            gxe.ExpectColumnValuesToNotBeNull(column="split"),
            gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
            # No text twice, within or across splits (the pipeline de-duplicates first).
            gxe.ExpectColumnValuesToBeUnique(column="text"),
            # Nulls (unlabelled transfer / production rows) are skipped by GX here.
            gxe.ExpectColumnValuesToBeInSet(column="label", value_set=_param("label_set")),
            # ... but the gold splits must be labelled.
            gxe.ExpectColumnValuesToNotBeNull(
                column="label", row_condition=Column("split").is_in(GOLD_SPLITS)
            ),
        ]
    if name == "teacher_outputs":
        return [
            gxe.ExpectColumnToExist(column="text"),
            gxe.ExpectColumnToExist(column="split"),
            gxe.ExpectColumnToExist(column="prob_sum"),
            gxe.ExpectColumnToExist(column="max_abs_logit"),
            gxe.ExpectColumnToExist(column="num_logits"),
            gxe.ExpectColumnValuesToNotBeNull(column="text"),
            gxe.ExpectColumnValuesToNotBeNull(column="prob_sum"),
            gxe.ExpectColumnValuesToBeBetween(column="prob_sum", min_value=0.999, max_value=1.001),
            # NaN counts as null (and is skipped by the range check); inf is out of range.
            gxe.ExpectColumnValuesToNotBeNull(column="max_abs_logit"),
            gxe.ExpectColumnValuesToBeBetween(column="max_abs_logit", min_value=0, max_value=1e4),
            gxe.ExpectColumnValuesToNotBeNull(column="num_logits"),
            gxe.ExpectColumnValuesToBeBetween(
                column="num_logits",
                min_value=_param("num_labels"),
                max_value=_param("num_labels"),
            ),
        ]
    raise ValueError(f"unknown data contract suite {name!r}; known: {sorted(SUITES)}")


def build_context(root: Path) -> Any:
    """(Re)create the GX file context at ``root`` (the folder holding great_expectations.yml).

    The committed part (config, suites, validation definitions, checkpoints) is written
    anew; ``root/uncommitted`` (run results, data docs) is left as it is. Returns the
    FileDataContext.
    """
    with _LOCK:
        return _build_context(Path(root).resolve())


def _build_context(root: Path) -> Any:
    if root.exists():
        if not root.is_dir():
            raise NotADirectoryError(f"{root} is not a folder")
        if any(root.iterdir()) and not (root / "great_expectations.yml").is_file():
            raise FileExistsError(
                f"{root} is not empty and holds no great_expectations.yml; refusing to write a "
                "GX context into it"
            )
        for name in _GX_FILES:
            path = root / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    _CONTEXTS.pop(root, None)

    _quiet_gx()
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.data_context.types.base import ProgressBarsConfig

    with warnings.catch_warnings():
        # "An existing config_variables.yml was found ... No action was taken." on a rebuild
        warnings.simplefilter("ignore", UserWarning)
        context = gx.get_context(mode="file", context_root_dir=str(root))
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    context.variables.analytics_enabled = False
    sites = context.variables.data_docs_sites
    sites[DOCS_SITE_NAME]["show_how_to_buttons"] = False
    sites[DOCS_SITE_NAME].setdefault("site_index_builder", {})[
        "validation_results_limit"
    ] = DOCS_VALIDATION_RESULTS_LIMIT
    context.variables.data_docs_sites = sites
    context.variables.save()

    datasource = context.data_sources.add_pandas(DATASOURCE_NAME)
    for name in SUITES:
        asset = datasource.add_dataframe_asset(name)
        batch_definition = asset.add_batch_definition_whole_dataframe(BATCH_DEFINITION_NAME)
        suite = context.suites.add(gx.ExpectationSuite(name=name))
        for expectation in _suite_expectations(name):
            suite.add_expectation(expectation)
        validation = context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch_definition, suite=suite)
        )
        context.checkpoints.add(
            gx.Checkpoint(
                name=name,
                validation_definitions=[validation],
                actions=[UpdateDataDocsAction(name="update_data_docs", site_names=[DOCS_SITE_NAME])],
                result_format={
                    "result_format": "SUMMARY",
                    "partial_unexpected_count": PARTIAL_UNEXPECTED_COUNT,
                },
            )
        )
    return context


# --------------------------------------------------------------------------- #
# Checking a frame
# --------------------------------------------------------------------------- #

_LOCK = threading.RLock()  # GX contexts and pandas data sources are not thread-safe
_CONTEXTS: dict[Path, Any] = {}


def _get_context(root: Path) -> Any:
    context = _CONTEXTS.get(root)
    if context is not None:
        return context
    if not (root / "great_expectations.yml").is_file():
        raise FileNotFoundError(
            f"no Great Expectations context at {root} (great_expectations.yml is missing); "
            "create it with `python -m distill.contracts gx` from the repository root"
        )
    _quiet_gx()
    import great_expectations as gx

    context = gx.get_context(mode="file", context_root_dir=str(root))
    _CONTEXTS[root] = context
    return context


def _plain(value: Any) -> Any:
    """numpy / pandas values -> Python values, so parameters serialise and messages read well."""
    if isinstance(value, (str, bytes)):
        return value
    if hasattr(value, "tolist"):  # numpy scalars and arrays, pandas Series / Index
        return value.tolist()
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    return value


def _show_value(value: Any) -> str:
    value = _plain(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
    return repr(value)


def _show(values: Any, limit: int = PARTIAL_UNEXPECTED_COUNT) -> str:
    values = list(values)
    shown = ", ".join(_show_value(v) for v in values[:limit])
    more = f", ... (+{len(values) - limit} more)" if len(values) > limit else ""
    return f"[{shown}{more}]"


def _exception_message(info: Any) -> str | None:
    """The first exception message in a GX exception_info (flat, or keyed by metric)."""
    if not isinstance(info, dict):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message") or "error")
    for value in info.values():
        message = _exception_message(value)
        if message:
            return message
    return None


def _describe_condition(condition: Any) -> str:
    if not condition:
        return ""
    if isinstance(condition, dict) and {"column", "operator", "parameter"} <= condition.keys():
        column = condition["column"].get("name") if isinstance(condition["column"], dict) else condition["column"]
        return f" where {column} {condition['operator']} {_show(condition['parameter'], 10)}"
    return f" where {condition}"


def _describe_failure(result: Any, columns: list[str]) -> str:
    """One line for a failed GX expectation result."""
    config = result.expectation_config
    kwargs = config.kwargs
    column = kwargs.get("column")
    head = config.type + (f" on column '{column}'" if column is not None else "")
    condition = kwargs.get("row_condition")
    if condition is not None and hasattr(condition, "to_dict"):
        condition = condition.to_dict()
    head += _describe_condition(condition)
    error = _exception_message(result.exception_info)
    if error:
        if column is not None and column not in columns:
            return f"{head}: not evaluated, the column is missing"
        return f"{head}: could not be evaluated ({error.strip().splitlines()[0]})"
    if config.type == "expect_column_to_exist":
        return f"{head}: the column is missing (columns are {columns})"
    bounds = [
        f"{k}={_show(kwargs[k], 10) if k == 'value_set' else _show_value(kwargs[k])}"
        for k in ("min_value", "max_value", "value_set")
        if k in kwargs
    ]
    expected = "; expected " + ", ".join(bounds) if bounds else ""
    res = result.result or {}
    if "unexpected_count" in res:
        count = res.get("unexpected_count") or 0
        total = res.get("element_count")
        examples = res.get("partial_unexpected_list") or []
        rows = res.get("partial_unexpected_index_list") or []
        if config.type == "expect_column_values_to_not_be_null":
            what = f"{count} null values"
        elif config.type == "expect_column_values_to_be_unique":
            what = f"{count} duplicated values such as {_show(examples)}"
        else:
            what = f"{count} unexpected values such as {_show(examples)}"
        if total is not None:
            what += f" out of {total}"
        if rows:
            what += f" (rows {_show(rows)})"
        return f"{head}: {what}{expected}"
    if "observed_value" in res:
        return f"{head}: observed {_show_value(res['observed_value'])}{expected}"
    return f"{head}: failed{expected}"


def _prune_results(root: Path, suite: str, keep: int) -> None:
    """Delete all but the newest ``keep`` stored validation results of a suite (and their
    data docs pages). Results sit at uncommitted/validations/<suite>/<run name>/<run time>/
    <batch id>.json; run-time folder names sort in time order."""
    store = root / "uncommitted" / "validations"
    pages = root / "uncommitted" / "data_docs" / DOCS_SITE_NAME / "validations"
    base = store / suite
    if not base.is_dir():
        return
    results = sorted(base.glob("*/*/*.json"), key=lambda p: (p.parent.name, str(p)))
    for old in results[: max(len(results) - keep, 0)]:
        relative = old.relative_to(store)
        for path in (old, pages / relative.with_suffix(".html")):
            path.unlink(missing_ok=True)
            for folder in (path.parent, path.parent.parent):
                try:
                    folder.rmdir()  # only when empty
                except OSError:
                    break


def _run_name(source: str) -> str:
    """A run name GX can use as a folder name, shown on the data docs index."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(source)).name or str(source)).strip("._")
    return (name or "frame")[:80]


def check_frame(
    df: pd.DataFrame,
    suite: str,
    *,
    source: str,
    parameters: dict | None = None,
    context_root: Path | None = None,
    raise_on_failure: bool = True,
) -> ContractReport:
    """Validate df against the named suite from the file context at context_root
    (default: ``gx/`` in the working directory, the project a DVC stage runs in, else the gx/
    folder next to the package; an error says to run `python -m distill.contracts gx` if missing).
    Runs the suite's checkpoint so results and HTML data docs are written; raises ContractError
    (message: f"{source}: data contract '{suite}' failed: " + "; ".join(failures)) unless
    raise_on_failure is False."""
    if suite not in SUITES:
        raise ValueError(f"unknown data contract suite {suite!r}; known: {sorted(SUITES)}")
    parameters = dict(parameters or {})
    missing = [p for p in SUITES[suite] if p not in parameters]
    if missing:
        raise ValueError(
            f"data contract '{suite}' needs the parameter(s) {missing}; got {sorted(parameters)}"
        )
    expectation_parameters = {k: _plain(v) for k, v in parameters.items()}
    if context_root is None:
        context_root = Path("gx") if Path("gx", "great_expectations.yml").is_file() else DEFAULT_CONTEXT_ROOT
    root = Path(context_root).resolve()

    with _LOCK:
        context = _get_context(root)
        from great_expectations.core.run_identifier import RunIdentifier
        from great_expectations.exceptions import DataContextError

        try:
            checkpoint = context.checkpoints.get(suite)
        except DataContextError as exc:
            raise FileNotFoundError(
                f"the GX context at {root} has no checkpoint '{suite}'; regenerate it with "
                "`python -m distill.contracts gx`"
            ) from exc
        _prune_results(root, suite, KEEP_RESULTS_PER_SUITE - 1)
        result = checkpoint.run(
            batch_parameters={"dataframe": df},
            expectation_parameters=expectation_parameters,
            run_id=RunIdentifier(run_name=_run_name(source)),
        )

    columns = [str(c) for c in df.columns]
    failures = [
        _describe_failure(r, columns)
        for validation in result.run_results.values()
        for r in validation.results
        if not r.success
    ]
    # Missing columns first: they explain the failures that follow.
    failures.sort(key=lambda line: not line.startswith("expect_column_to_exist"))
    index = root / "uncommitted" / "data_docs" / DOCS_SITE_NAME / "index.html"
    report = ContractReport(
        suite=suite,
        passed=bool(result.success) and not failures,
        failures=failures,
        docs_path=index if index.is_file() else None,
    )
    if not report.passed and raise_on_failure:
        raise ContractError(
            f"{source}: data contract '{suite}' failed: " + "; ".join(failures), report
        )
    return report


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1 or (args and args[0] in {"-h", "--help"}):
        print("usage: python -m distill.contracts [GX_FOLDER]  (default: the repository's gx/)")
        return 0 if args and args[0] in {"-h", "--help"} else 2
    root = Path(args[0]) if args else DEFAULT_CONTEXT_ROOT
    build_context(root)
    print(f"wrote GX context with suites {', '.join(SUITES)} to {root.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
