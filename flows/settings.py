"""The settings users change most, as a typed flow parameter (the Prefect UI draws it as a form).

Each field is one key of params.yaml. A field left empty keeps params.yaml's value; a field set
becomes one ``section.key=value`` override of this run (params.yaml is never written). The
flows keep ``overrides``, free ``section.key=value`` items, for every other key: they come after
these, so they win.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from distill.config import merge_overrides


# An empty field keeps params.yaml's value. In the form it is a plain input (a number box), not a choice
# between a type and "None": the schema leaves the null out, and an empty input is not sent.
Number = Annotated[float | None, WithJsonSchema({"type": "number"})]
KEEP = "params.yaml"  # a dropdown's first choice: keep params.yaml's value


def _no_null_defaults(schema: dict) -> None:
    """A null default would be sent as a value (and refused by the form's own validation): leave it out."""
    for field in schema.get("properties", {}).values():
        if field.get("default", "") is None:
            del field["default"]


class RunSettings(BaseModel):
    """What to distil, from which teacher, into what, and how it is promoted."""

    model_config = ConfigDict(extra="forbid", title="Run settings", json_schema_extra=_no_null_defaults)

    data_path: str = Field(
        "", title="Data file", description="Your labelled texts (CSV, Parquet or JSON lines), a path on the "
        "worker (data.path). Empty: params.yaml's, by default the built-in home-automation intents.")
    text_column: str = Field("", title="Text column", description="Column holding the text (data.text_column).")
    label_column: str = Field("", title="Label column", description="Column holding the gold label (data.label_column).")
    teacher_path: str = Field(
        "", title="Teacher", description="Your fine-tuned Hugging Face classifier: a folder on the worker or "
        "models:/name@alias from the MLflow registry (teacher.path). Empty: fine-tune the packaged MiniLM.")
    min_speedup: Number = Field(
        None, title="Speed-up over the teacher", gt=0, description="The student must answer at least this many "
        "times faster than the fp32 teacher at batch 1 (size.min_speedup; params.yaml: 8).")
    min_speedup_int8: Number = Field(
        None, title="Speed-up over the INT8 teacher", gt=0,
        description="... and this many times faster than the INT8 teacher (size.min_speedup_int8; params.yaml: 3).")
    max_size_mb: Number = Field(
        None, title="Largest student (MB)", gt=0,
        description="Memory budget of the student's fp32 weights (size.max_size_mb); empty: no limit.")
    student_shape: Literal["params.yaml", "search", "as configured"] = Field(
        KEEP, title="Student shape", description="search: choose layers, width and vocabulary for the budget "
        "above (size.search: true); as configured: train params.yaml's student section as given.")
    kd_temperature: Number = Field(None, title="Temperature (T)", gt=0,
                                   description="Softens the teacher's outputs (train.kd_temperature).")
    alpha: Number = Field(None, title="Alpha", ge=0, le=1, description="Weight of the teacher's soft targets "
                          "against the gold labels' cross-entropy (train.alpha).")
    promote_mode: Literal["params.yaml", "auto", "review"] = Field(
        KEEP, title="Promotion", description="auto: a student that passes its gates becomes champion; review: "
        "the run pauses for a reviewer in the Prefect UI (promote.mode).")

    def to_overrides(self) -> list[str]:
        """The fields set, as ``section.key=value`` overrides."""
        keys = {"data_path": "data.path", "text_column": "data.text_column", "label_column": "data.label_column",
                "teacher_path": "teacher.path", "min_speedup": "size.min_speedup",
                "min_speedup_int8": "size.min_speedup_int8", "max_size_mb": "size.max_size_mb",
                "kd_temperature": "train.kd_temperature", "alpha": "train.alpha", "promote_mode": "promote.mode"}
        items = [f"{key}={json.dumps(value) if isinstance(value, str) else value}"
                 for field, key in keys.items() if (value := getattr(self, field)) not in (None, "", KEEP)]
        if self.student_shape != KEEP:
            items.append(f"size.search={'true' if self.student_shape == 'search' else 'false'}")
        return items


def run_overrides(settings: RunSettings | dict | None, overrides: list[str] | None) -> list[str]:
    """The run's overrides: the typed settings first, then the free ones (which win)."""
    if isinstance(settings, dict):
        settings = RunSettings.model_validate(settings)
    return merge_overrides(settings.to_overrides() if settings is not None else [], list(overrides or []))
