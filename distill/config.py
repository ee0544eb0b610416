"""One typed configuration for every stage, loaded from ``params.yaml``.

Each stage reads its own section; the flow passes the whole ``PipelineConfig``.
Bad values fail at load time with the dotted key in the message.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from distill.io import atomic_file


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Where the examples come from and how they are split."""

    path: str | None = Field(
        None,
        description="CSV / JSONL / Parquet file with a text and a label column. "
        "None builds the default intent data set from home-assistant-intents.",
    )
    text_column: str = Field("text", description="Column holding the input text.")
    label_column: str = Field("label", description="Column holding the gold label.")
    language: str = Field("en", description="Language of the default intent data set.")
    gold_per_label: int = Field(
        48, ge=3, description="Labelled examples kept per label (split into train/val/test)."
    )
    gold_fractions: tuple[float, float, float] = Field(
        (0.34, 0.16, 0.5), description="Train / validation / test shares of the gold set."
    )
    transfer_size: int = Field(
        3000, ge=1, description="Unlabelled transfer inputs the teacher labels."
    )
    production_windows: int = Field(
        4, ge=1, description="Windows of in-domain simulated production traffic."
    )
    shifted_windows: int = Field(
        2, ge=0, description="Windows of domain-shifted simulated production traffic at the end."
    )
    window_size: int = Field(200, ge=10, description="Production requests per window.")
    max_text_chars: int = Field(
        100_000, ge=1, description="Longest text accepted, in characters (longer inputs are refused)."
    )
    slice_columns: list[str] = Field(
        default_factory=list, description="Extra columns of the user's data kept as audit slices."
    )

    @field_validator("gold_fractions")
    @classmethod
    def _fractions_sum_to_one(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(v <= 0 for v in value) or abs(sum(value) - 1.0) > 1e-6:
            raise ValueError("must be three positive shares that sum to 1")
        return value


class TeacherConfig(_Section):
    """The teacher: a given model, or one bootstrapped from the packaged MiniLM."""

    path: str | None = Field(
        None,
        description="Hugging Face model folder or MLflow model URI (models:/name@alias). "
        "None fine-tunes the packaged all-MiniLM-L6-v2 on the gold training set.",
    )
    epochs: int = Field(10, ge=1, description="Bootstrap fine-tuning epochs.")
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(3e-4, gt=0, lt=1)
    max_length: int = Field(64, ge=8, le=512, description="Longest input, in tokens.")
    min_accuracy: float = Field(0.8, ge=0, le=1, description="Teacher gate: gold test accuracy.")
    min_macro_f1: float = Field(0.75, ge=0, le=1, description="Teacher gate: gold test macro-F1.")


class LabelConfig(_Section):
    """Teacher labelling of the transfer set."""

    batch_size: int = Field(64, ge=1)


class StudentConfig(_Section):
    """Shape of the student transformer, built from the teacher's config and tokenizer."""

    num_layers: int = Field(2, ge=1, le=24)
    hidden_size: int = Field(128, ge=16)
    num_heads: int = Field(2, ge=1)
    intermediate_size: int = Field(512, ge=16)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "StudentConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})"
            )
        return self


class TrainConfig(_Section):
    """Student training: Hinton distillation and the undistilled baseline."""

    kd_temperature: float = Field(4.0, gt=0, description="Softmax temperature of the KD term.")
    alpha: float = Field(
        0.7, ge=0, le=1, description="Weight of the KD term; 1 - alpha weighs gold cross-entropy."
    )
    epochs: int = Field(15, ge=1, description="Most passes over the distillation set (early stopping may end sooner).")
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(5e-4, gt=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    max_length: int = Field(64, ge=8, le=512)
    patience: int = Field(
        3, ge=1, description="Evaluations without validation improvement before stopping."
    )
    eval_every: int = Field(50, ge=1, description="Optimizer steps between validation checks.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto picks CUDA when present.")


class EvaluateConfig(_Section):
    """The evaluation harness."""

    batch_size: int = Field(64, ge=1)
    latency_samples: int = Field(100, ge=5, description="Batch-1 requests timed per model.")
    warmup: int = Field(10, ge=0)
    threads: int = Field(1, ge=1, description="torch threads while timing latency and throughput.")
    throughput_batch_size: int = Field(32, ge=1, description="Batch size of the throughput measurement.")
    bootstrap_samples: int = Field(1000, ge=10, description="Resamples of the accuracy / macro-F1 intervals.")


class AuditConfig(_Section):
    """Per-slice comparison of student and teacher."""

    length_buckets: list[int] = Field(
        default_factory=lambda: [4, 8], description="Word-count edges of the length slices."
    )
    min_slice_size: int = Field(10, ge=1, description="Smaller slices are reported, not gated.")
    max_slice_drop: float = Field(
        0.15, ge=0, le=1, description="Largest accuracy drop, student vs teacher, on any slice."
    )
    significance: float = Field(
        0.05, gt=0, le=1,
        description="A slice over the drop limit fails only if the drop is significant at this level "
        "(one-sided exact McNemar test, Bonferroni-corrected over the slices).",
    )


class PromoteConfig(_Section):
    """Registration and promotion gates."""

    student_model: str = Field("distill-student", description="Registered model name of students.")
    teacher_model: str = Field("distill-teacher", description="Registered model name of teachers.")
    min_teacher_share: float = Field(
        0.9, ge=0, le=1, description="Student accuracy must reach this share of the teacher's."
    )


class MonitorConfig(_Section):
    """Drift detection over the production stream."""

    drift_share: float = Field(
        0.5, gt=0, le=1, description="Share of drifted columns that declares dataset drift."
    )
    redistill: bool = Field(True, description="Start a re-distillation run when drift is detected.")


class TrackingConfig(_Section):
    """Where MLflow keeps runs and the registry."""

    tracking_uri: str = Field(
        "sqlite:///mlflow.db", description="MLFLOW_TRACKING_URI overrides it."
    )
    experiment: str = Field("distill")


class PipelineConfig(_Section):
    """Every tunable value of the pipeline; the sections mirror params.yaml."""

    seed: int = 13
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    label: LabelConfig = Field(default_factory=LabelConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    promote: PromoteConfig = Field(default_factory=PromoteConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)


def parse_override(item: str) -> tuple[str, Any]:
    """Split ``train.kd_temperature=4`` into the key and a YAML-parsed value."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(params: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``params`` with dotted ``key=value`` overrides set."""
    merged = yaml.safe_load(yaml.safe_dump(params)) or {}
    for item in overrides:
        key, value = parse_override(item)
        node = merged
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[leaf] = value
    return merged


def config_from_dict(params: dict[str, Any], source: str = "params") -> PipelineConfig:
    """Validate a params mapping, naming the first bad key on failure."""
    try:
        return PipelineConfig.model_validate(params)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{key}: {msg}")
        raise ConfigError(f"{source}: invalid configuration: " + "; ".join(problems)) from None


def load_config(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> PipelineConfig:
    """Load ``params.yaml`` (a missing file means all defaults) and apply overrides."""
    path = Path(path)
    params: dict[str, Any] = {}
    if path.exists():
        try:
            params = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(params, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return config_from_dict(apply_overrides(params, overrides or []), source=str(path))


def write_overrides(path: str | Path, overrides: list[str]) -> bool:
    """Set dotted overrides in the params file itself, keeping its comments (as `dvc exp run -S` does).

    Returns True when the file changed. The result is validated before anything is written.
    """
    from ruamel.yaml import YAML

    path = Path(path)
    if not overrides:
        return False
    load_config(path, overrides)  # refuse bad values before touching the file
    rt = YAML()
    doc = rt.load(path.read_text()) if path.exists() else {}
    before = yaml.safe_dump(yaml.safe_load(path.read_text()) if path.exists() else {})
    for item in overrides:
        key, value = parse_override(item)
        node = doc
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    buffer = io.StringIO()
    rt.dump(doc, buffer)
    if yaml.safe_dump(yaml.safe_load(buffer.getvalue())) == before:
        return False
    with atomic_file(path) as handle:
        handle.write(buffer.getvalue())
    return True
