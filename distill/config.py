"""One typed configuration for every stage, loaded from ``params.yaml``.

Each stage reads its own section; the flow passes the whole ``PipelineConfig``.
Bad values fail at load time with the dotted key in the message.

One long file on purpose: the typed config is the single source of every key, its default and
its description (params.yaml's defaults test, the error messages and the docs read it here);
spreading the sections over modules would scatter that source.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from distill.io import atomic_file


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


def url_without_credentials(url: str, instead: str) -> str:
    """``url`` when it carries no user name or password; else a refusal that says where secrets go.

    A setting is written to params.yaml, the run's parameters, the tracking server and the logs, so a
    password in it would be everywhere. The message never repeats the URL.
    """
    from urllib.parse import urlsplit

    if "@" in (urlsplit(url).netloc or ""):
        raise ValueError(f"holds a user name or password (user:...@host); secrets do not belong in params, "
                         f"which are written to params files, run parameters and logs: give the URL without "
                         f"them and {instead}")
    return url


class _Section(BaseModel):
    # No setting is infinite or NaN: `.inf` as a weight decay or a temperature trains a NaN model.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


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
    gold: Literal["auto", "all", "per_label"] = Field(
        "auto",
        description="How labelled rows are used. all: every one (test and validation sets sized by test_share / "
        "val_share, stratified; the rest trains the bootstrapped teacher and anchors the student's hard-label "
        "term). per_label: the limited-label scenario, gold_per_label rows per label split by gold_fractions; "
        "the other labelled rows join the unlabelled transfer set. auto: per_label for the built-in intent "
        "data (that is its scenario), all for a file.",
    )
    gold_per_label: int = Field(
        48, ge=3, description="per_label: labelled examples kept per label (split into train/val/test)."
    )
    gold_fractions: tuple[float, float, float] = Field(
        (0.34, 0.16, 0.5), description="per_label: train / validation / test shares of the gold set."
    )
    test_share: float = Field(
        0.2, gt=0, lt=1, description="all: share of the labelled rows held out as the test set (stratified)."
    )
    max_test_rows: int = Field(
        2000, ge=10, description="all: the largest test set (2,000 rows give a 95 % interval of about +-2 points)."
    )
    val_share: float = Field(
        0.1, gt=0, lt=1, description="all: share of the labelled rows held out for early stopping (stratified)."
    )
    max_val_rows: int = Field(1000, ge=5, description="all: the largest validation set.")
    transfer_size: int | None = Field(
        None, ge=1,
        description="Most unlabelled texts the teacher labels (a sample when there are more). null: every "
        "unlabelled text within distill_rows; the built-in intent scenario takes 3,000.",
    )
    augment: float | None = Field(
        None, ge=0,
        description="Edited copies of the gold training texts (words dropped, neighbours swapped, halves of two "
        "texts joined; distill/augment.py) added to the transfer set for the teacher to label, per training text. "
        "null: as many as bring the transfer set to twice the training rows, when the file has fewer unlabelled "
        "texts than that (a fully labelled file); 0: none. Within distill_rows.",
    )
    distill_rows: int = Field(
        20_000, ge=10,
        description="Budget of the distillation set: the most texts (gold training rows plus transfer rows) the "
        "teacher labels and the student trains on. Larger files are sampled, and prepare says how many rows "
        "were left out.",
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

    @model_validator(mode="after")
    def _held_out_leaves_training_rows(self) -> "DataConfig":
        if self.test_share + self.val_share >= 0.9:
            raise ValueError(f"test_share + val_share is {self.test_share + self.val_share:.2f}; keep it below "
                             "0.9 so that rows are left to train on")
        return self

    @model_validator(mode="after")
    def _distinct_columns(self) -> "DataConfig":
        if self.text_column == self.label_column:
            raise ValueError(f"text_column and label_column are both {self.text_column!r}; name the column "
                             "that holds the labels in label_column")
        return self

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
    epochs: int = Field(10, ge=1, description="Bootstrap fine-tuning epochs (within max_tokens and max_steps).")
    max_tokens: int | None = Field(
        1_200_000, ge=1,
        description="Budget of the bootstrap fine-tuning, in tokens read: optimizer steps x batch_size x the "
        "padded batch length, estimated from the training texts' measured token lengths. Compute follows tokens, "
        "so short texts get more passes than long ones for the same time: about 2,000 tokens/s on a 2-core CPU, "
        "so the default is about 10 minutes there. null: no token budget.",
    )
    max_steps: int | None = Field(
        None, ge=1,
        description="A hard cap on the bootstrap fine-tuning's optimizer steps, on top of max_tokens. "
        "null: no cap.",
    )
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(3e-4, gt=0, lt=1)
    max_length: int | None = Field(
        None, ge=8, le=512,
        description="Longest input, in tokens (longer texts are cut). null: chosen from the data by the teacher "
        "stage, the length_quantile of the distillation texts' token lengths (teacher's tokenizer), rounded up "
        "to a multiple of 8, between 32 and max_length_cap; recorded in the teacher's card with the share cut.",
    )
    length_quantile: float = Field(
        0.99, gt=0, le=1, description="Share of the texts that the chosen max_length reads whole.")
    max_length_cap: int = Field(
        128, ge=16, le=512,
        description="Largest max_length chosen from the data (CPU cost grows with it: ~2.5 s per teacher step at "
        "64 tokens here, about twice that at 128).",
    )
    cut: Literal["head", "head_tail"] = Field(
        "head_tail",
        description="How a text longer than max_length is cut: head keeps its first tokens; head_tail keeps "
        "the first head_share of them and the rest from its end (a subject and a conclusion, a question and a "
        "signature). Texts that fit are never touched. Recorded in every model's card; students, the served "
        "model and the monitor read as their teacher did.",
    )
    head_share: float = Field(0.5, ge=0, le=1, description="head_tail: the share of max_length kept from the start.")
    min_accuracy: float = Field(0.8, ge=0, le=1, description="Teacher gate: gold test accuracy.")
    min_macro_f1: float = Field(
        0.75, ge=0, le=1,
        description="Teacher gate: gold test macro-F1, over the labels with at least min_label_support test "
        "examples.")
    min_label_support: int = Field(
        5, ge=1,
        description="Fewest gold test examples for a label to count in the gate's macro-F1: a label with 1-4 "
        "test examples has an F1 of 0, 0.5 or 1 by chance. The labels left out, and their share of the test "
        "rows, are named in the gate report. When no label has this many, every label counts.",
    )


class LabelConfig(_Section):
    """Teacher labelling of the transfer set."""

    batch_size: int = Field(64, ge=1)
    workers: int = Field(
        1, ge=1, description="Shards of the inputs (ranges of the length-sorted batch plan) labelled at once: "
        "processes of a local pool, or Dask workers of a temporary cluster; the merged file is byte-identical "
        "to one process's.")
    engine: Literal["local", "dask"] = Field(
        "local", description="local: shards in a process pool inside the stage. dask: shards mapped as Prefect "
        "tasks on prefect-dask's DaskTaskRunner (a temporary LocalCluster, or the scheduler at dask_address).")
    dask_address: str | None = Field(
        None, description="Scheduler of a running Dask cluster (tcp://host:8786) for engine dask; null starts a "
        "LocalCluster of `workers` processes for the stage.")


class StudentConfig(_Section):
    """The student: a smaller transformer built from the teacher's config, or a model folder.

    A shape field left null takes the teacher's value, so all four null is a
    same-size copy (born-again self-distillation) and ``num_layers`` alone makes
    a shallower copy of the teacher.
    """

    path: str | None = Field(
        None,
        description="Hugging Face model folder to use as the student (a fresh classification head is added). "
        "None builds the student from the teacher's config with the shape below.",
    )
    num_layers: int | None = Field(2, ge=1, le=48, description="Transformer layers; null = the teacher's.")
    hidden_size: int | None = Field(128, ge=16, description="Width; null = the teacher's.")
    num_heads: int | None = Field(2, ge=1, description="Attention heads; null = the teacher's.")
    intermediate_size: int | None = Field(512, ge=16, description="Feed-forward width; null = the teacher's.")
    vocab_size: int | None = Field(
        None, ge=100,
        description="null shares the teacher's tokenizer; a number trains a smaller WordPiece vocabulary on "
        "the distillation texts (token-level feature losses then cannot be used).",
    )
    init: Literal["auto", "random", "teacher"] = Field(
        "auto",
        description="teacher: copy the teacher's embeddings and a subset of its layers (the width must match, "
        "as DistilBERT did); random: fresh weights with PCA-projected teacher word embeddings; "
        "auto: teacher when the width matches, else random.",
    )
    teacher_layers: list[int] | None = Field(
        None, description="Teacher layers (0-based) copied into the student when init is teacher; "
        "null picks evenly spaced ones (every other layer for half depth).",
    )
    warm_start: str | None = Field(
        None, description="Continue from an earlier student instead of fresh weights: a classifier folder or "
        "an MLflow URI (models:/distill-student@champion, fetched by the flow). Its shape and labels must be "
        "the configured ones. Re-distillation sets it when monitor.warm_start is on; the baseline always "
        "starts fresh.",
    )

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "StudentConfig":
        if self.hidden_size and self.num_heads and self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})"
            )
        if self.teacher_layers is not None and self.num_layers is not None \
                and len(self.teacher_layers) != self.num_layers:
            raise ValueError(
                f"teacher_layers names {len(self.teacher_layers)} layers but num_layers is {self.num_layers}"
            )
        return self


class AssistantConfig(StudentConfig):
    """An optional teacher assistant: teacher -> assistant -> student (Mirzadeh et al. 2020).

    The assistant is distilled from the teacher with the train section's losses; its
    outputs on the distillation set are versioned like the teacher's and teach the student.
    """

    enabled: bool = Field(False, description="Distil through the assistant.")
    num_layers: int | None = Field(4, ge=1, le=48)
    hidden_size: int | None = Field(256, ge=16)
    num_heads: int | None = Field(4, ge=1)
    intermediate_size: int | None = Field(1024, ge=16)


class SizeConfig(_Section):
    """size_student: the student's shape chosen for the deployment budget (distill/sizing.py)."""

    search: bool = Field(
        True, description="Choose the student's layers and width from `candidates` within the budget below; "
        "false trains the shape in the student section as given.")
    candidates: list[tuple[int, int]] = Field(
        default_factory=lambda: [(2, 128), (3, 128), (2, 192), (3, 192), (2, 256), (4, 256)],
        description="(layers, width) pairs tried; heads are width / 64 (at least 2), the feed-forward 4 x width.")
    min_speedup: float = Field(8.0, ge=0, description="Batch-1 CPU latency: at least this many times faster "
                               "than the fp32 teacher.")
    min_speedup_int8: float = Field(3.0, ge=0, description="... and this many times faster than the INT8 teacher.")
    max_size_mb: float | None = Field(None, gt=0, description="Largest fp32 weights of the student; null: no limit.")
    vocab_sizes: list[int] = Field(
        default_factory=lambda: [16000, 8000, 4000],
        description="Smaller vocabularies for the memory budget: a candidate fast enough but over `max_size_mb` "
        "is tried again with the largest of these that fits (trained on the distillation texts).")
    steps: int = Field(200, ge=1, description="Distillation steps each fitting candidate trains before it is "
                       "scored on the validation set.")
    tolerance: float = Field(0.005, ge=0, le=1, description="Of candidates this close in validation accuracy, "
                             "the faster is chosen.")

    @field_validator("vocab_sizes")
    @classmethod
    def _vocabularies(cls, value: list[int]) -> list[int]:
        if any(size < 100 for size in value):
            raise ValueError("a vocabulary needs room for the special tokens and the alphabet: give sizes >= 100, "
                             "e.g. [8000, 4000]")
        return value

    @field_validator("candidates")
    @classmethod
    def _some_candidates(cls, value: list[tuple[int, int]]) -> list[tuple[int, int]]:
        if not value or any(layers < 1 or width < 16 for layers, width in value):
            raise ValueError("give at least one (layers >= 1, width >= 16) pair, e.g. [[2, 128]]")
        return value


RESPONSE_LOSSES = ("kl", "forward_kl", "reverse_kl", "js", "gjsd", "skew_kl", "skew_reverse_kl", "tvd",
                   "logit_mse")
TOKEN_FEATURE_LOSSES = ("hidden_mse", "hidden_cosine", "attention")
FEATURE_LOSSES = (*TOKEN_FEATURE_LOSSES, "pkd")
RELATION_LOSSES = ("rkd_distance", "rkd_angle", "similarity")
LOSS_NAMES = (*RESPONSE_LOSSES, *FEATURE_LOSSES, *RELATION_LOSSES)


class LossTerm(_Section):
    """One weighted distillation term; the train section sums them.

    Layer maps pair student layers with teacher layers, counting transformer
    layers from 1 (0 is the embedding output): ``uniform`` spreads the student's
    layers over the teacher's depth, ``last`` pairs the last ``k`` of each, and an
    explicit list of ``[student, teacher]`` pairs says exactly which.
    """

    name: str = Field(description="One of: " + ", ".join(LOSS_NAMES))
    weight: float = Field(1.0, ge=0, description="Weight in the sum of distillation terms.")
    beta: float = Field(0.5, ge=0, le=1, description="gjsd mixing: exactly 0 is forward KL and exactly 1 reverse "
                        "KL (special-cased, as in TRL); in between a generalized JSD that shrinks towards 0 near "
                        "either end, so a small beta is not close to forward KL.")
    skew: float = Field(0.1, ge=0, lt=1, description="skew_kl / skew_reverse_kl skew lambda.")
    layers: Literal["uniform", "last"] | list[tuple[int, int]] = Field(
        "uniform", description="Student-teacher layer map of feature losses."
    )
    k: int = Field(1, ge=1, description="How many layers the 'last' map pairs.")
    kind: Literal["kl", "mse"] = Field("kl", description="attention: KL or MSE between attention maps.")

    @field_validator("name")
    @classmethod
    def _known_name(cls, value: str) -> str:
        if value not in LOSS_NAMES:
            raise ValueError(f"unknown loss {value!r}; choose from {', '.join(LOSS_NAMES)}")
        return value

    @property
    def family(self) -> str:
        if self.name in RESPONSE_LOSSES:
            return "response"
        return "feature" if self.name in FEATURE_LOSSES else "relation"


class CompressConfig(_Section):
    """compress_student: prune the distilled student, recover it by distillation, then INT8 (distill/compress.py)."""

    enabled: bool = Field(True, description="Compress the student into models/student_compressed; the evaluation "
                          "scores it (compressed, compressed_int8) beside the student.")
    vocabulary: bool = Field(False, description="Drop the word-embedding rows of tokens the distillation data never "
                             "uses (single characters stay, so unseen words still read as their letters). Most of a "
                             "narrow student's size, but words that arrive later (new names, a shifted domain) read "
                             "as letters: measured 12 points lost on the default data's shifted traffic. For a "
                             "vocabulary that does not move, or a memory budget.")
    ffn_keep: float = Field(0.25, gt=0, le=1, description="Share of each layer's feed-forward neurons kept, the "
                            "most important by activation x output weight (rounded up to a multiple of 8); 1 keeps "
                            "all.")
    heads_keep: float = Field(1.0, gt=0, le=1, description="Share of each layer's attention heads kept (the "
                              "nearest count, at least one: 0.67 of 3 heads keeps 2), the most important by how "
                              "much each writes through the attention's output projection; 1 keeps all. Measured: "
                              "free after recovery on the default data, 0.75-3.5 points lost on news posts: "
                              "docs/compression.md.")
    keep_layers: int | None = Field(None, ge=1, description="Layers kept, dropping those whose removal costs the "
                                    "least validation accuracy; null keeps every layer.")
    importance_texts: int = Field(2000, ge=1, description="Distillation texts the neuron importance is measured on.")
    recovery_epochs: int = Field(6, ge=0, description="Epochs of distillation from the cached teacher outputs "
                                 "after pruning (early stopping on gold_val: the best check's weights are kept); "
                                 "0: none.")
    learning_rate: float = Field(1.0e-3, gt=0, description="Learning rate of the recovery.")
    int8: Literal["dynamic", "static", "qat"] = Field(
        "dynamic", description="How the compressed student's INT8 model (compressed_int8) is made. dynamic: int8 "
        "weights, each request's activations scaled by their own range. static: fixed activation scales calibrated "
        "on distillation texts. qat: quantization-aware distillation first (qat_epochs of distillation from the "
        "cached teacher outputs with weights and layer inputs rounded as static INT8 rounds them), then static.")
    qat_epochs: int = Field(2, ge=1, description="Epochs of quantization-aware distillation (int8: qat); the best "
                            "validation check's weights are kept.")
    qat_learning_rate: float = Field(2.0e-4, gt=0, description="Learning rate of the quantization-aware distillation.")
    calibration_texts: int = Field(256, ge=1, description="Distillation texts (a seeded sample), run one at a time, "
                                   "that static INT8 calibrates its activation scales on (int8: static or qat).")
    register_int8: bool = Field(True, description="Compression gate: register the compressed student's INT8 model "
                                "(compressed_int8) when it passes the gate, before its fp32 weights (compressed). "
                                "false: the INT8 model is reported, never registered (a server that runs the float "
                                "weights, a GPU).")
    max_accuracy_drop: float = Field(0.005, ge=0, le=1, description="Compression gate: the model registered in the "
                                     "student's place (the INT8 model, else the fp32 compressed student) may score "
                                     "at most this much below the student on the gold test set.")


class TrainConfig(_Section):
    """Student training: the distillation loss and the undistilled baseline.

    The loss is ``alpha * sum(weight * term) + (1 - alpha) * cross-entropy`` on the
    rows with a gold label; the baseline trains on the cross-entropy alone.
    """

    losses: list[LossTerm] = Field(
        default_factory=lambda: [LossTerm(name="kl")],
        description="Distillation terms by name and weight (response, feature and relation families).",
    )
    kd_temperature: float = Field(4.0, gt=0, description="Softmax temperature of the response terms.")
    alpha: float = Field(
        0.7, ge=0, le=1, description="Weight of the distillation terms; 1 - alpha weighs gold cross-entropy."
    )
    epochs: int = Field(15, ge=1, description="Most passes over the distillation set (early stopping may end sooner).")
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(5e-4, gt=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    max_length: int | None = Field(
        None, ge=8, le=512, description="Longest student input, in tokens; null: the teacher's (its card's).")
    patience: int = Field(
        3, ge=1, description="Evaluations without validation improvement before stopping."
    )
    eval_every: int = Field(50, ge=1, description="Optimizer steps between validation checks.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto picks CUDA when present.")
    checkpoint_every: int = Field(
        100, ge=0, description="Optimizer steps between training checkpoints (model, optimizer, scheduler, RNG, "
        "data position); a killed run resumes from the last one. 0 turns checkpoints off.")
    checkpoint_dir: str | None = Field(
        None, description="Folder for training checkpoints (one subfolder per stage output); null keeps them "
        "in a hidden sibling of the stage output (.student.checkpoint). Removed once the output is written.")

    @field_validator("losses")
    @classmethod
    def _some_loss(cls, value: list[LossTerm]) -> list[LossTerm]:
        if not value:
            raise ValueError("name at least one distillation term, e.g. [{name: kl}]")
        return value


class SweepConfig(_Section):
    """The temperature / alpha grid of ``distill sweep``, chosen on the gold validation set."""

    temperatures: list[float] = Field(default_factory=lambda: [1.0, 2.0, 4.0, 8.0])
    alphas: list[float] = Field(default_factory=lambda: [0.5, 0.7, 0.9])
    epochs: int | None = Field(None, ge=1, description="Epochs per grid point; null = train.epochs.")
    workers: int = Field(1, ge=1, description="Grid points trained at once (Prefect task concurrency).")

    @field_validator("temperatures", "alphas")
    @classmethod
    def _nonempty(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("the grid needs at least one value")
        return value


CANDIDATES = ("teacher", "teacher_int8", "student", "student_int8", "compressed", "compressed_int8", "baseline")

DEFAULT_TERM_LISTS = {
    "pronouns_female": ["she", "her", "hers", "herself"],
    "pronouns_male": ["he", "him", "his", "himself"],
    "pronouns_neutral": ["they", "them", "their", "theirs", "themselves"],
    "names": ["james", "john", "michael", "david", "mary", "sarah", "emily", "maria", "mohammed", "ahmed",
              "aisha", "fatima", "wei", "priya", "raj", "carlos", "jose", "kwame", "amara", "yuki"],
    "places": ["london", "new york", "paris", "tokyo", "lagos", "mumbai", "delhi", "beijing", "cairo",
               "mexico city", "moscow", "sydney", "nairobi", "berlin", "dubai", "texas", "india", "china",
               "nigeria", "mexico"],
}
DEFAULT_COUNTERFACTUAL_GROUPS = {
    "pronouns": ["he", "she", "they"],
    "possessives": ["his", "her", "their"],
    "names": DEFAULT_TERM_LISTS["names"],
    "places": DEFAULT_TERM_LISTS["places"],
}


class EvaluateConfig(_Section):
    """The evaluation harness."""

    candidates: list[Literal["teacher", "teacher_int8", "student", "student_int8", "compressed", "compressed_int8",
                             "baseline"]] = Field(
        default_factory=lambda: list(CANDIDATES),
        description="Models compared, in this order; the teacher is required (the others are scored against it). "
        "The compressed ones are left out while compress.enabled is false.",
    )
    batch_size: int = Field(64, ge=1)
    latency_samples: int = Field(100, ge=5, description="Batch-1 requests timed per model and round.")
    latency_rounds: int = Field(
        5, ge=1, description="Timing rounds over all models in turn; figures are the median over rounds.")
    warmup: int = Field(10, ge=0)
    threads: int = Field(1, ge=1, description="Threads (torch or ONNX Runtime) while timing latency and throughput; "
                         "the registered pyfunc serves with as many.")
    runtime: Literal["eager", "onnxruntime"] = Field(
        "onnxruntime", description="How the fp32 candidates are served while timed on CPU: ONNX Runtime on the "
        "model's ONNX export (checked against the eager model first; the serving pyfunc runs the same file) or "
        "eager PyTorch. INT8 candidates are always ONNX Runtime models.")

    @field_validator("runtime", mode="before")
    @classmethod
    def _replaced_runtime(cls, value):
        if value == "torchscript":
            raise ValueError("torchscript was replaced by onnxruntime (TorchScript is deprecated in torch): set "
                             "evaluate.runtime to onnxruntime, or eager")
        return value
    throughput_batch_size: int = Field(32, ge=1, description="Batch size of the throughput measurement.")
    bootstrap_samples: int = Field(1000, ge=10, description="Resamples of the accuracy / macro-F1 intervals.")
    confident: float = Field(
        0.9, gt=0, le=1, description="Teacher confidence above which a wrong teacher answer is 'wrong and confident'.")
    failure_examples: int = Field(20, ge=1, description="Rows kept per failure-mode table of the report.")

    @field_validator("candidates")
    @classmethod
    def _teacher_first(cls, value: list[str]) -> list[str]:
        if "teacher" not in value or len(set(value)) != len(value):
            raise ValueError(f"must name each model once and include 'teacher'; choose from {list(CANDIDATES)}")
        return ["teacher"] + [v for v in value if v != "teacher"]


class AuditConfig(_Section):
    """Per-slice comparison of student, teacher and baseline; counterfactual and robustness flips."""

    length_buckets: list[int] = Field(
        default_factory=lambda: [4, 8], description="Word-count edges of the length slices."
    )
    term_lists: dict[str, list[str]] = Field(
        default_factory=lambda: {k: list(v) for k, v in DEFAULT_TERM_LISTS.items()},
        description="Slices by term presence: {group: [terms]}; a text is in group=present when it holds "
        "any of the terms as a whole word (case-insensitive).",
    )
    counterfactual_groups: dict[str, list[str]] = Field(
        default_factory=lambda: {k: list(v) for k, v in DEFAULT_COUNTERFACTUAL_GROUPS.items()},
        description="Swap groups: a text holding one member gets it replaced by another; the prediction "
        "should not change.",
    )
    perturbations: list[Literal["typo", "lowercase", "uppercase", "strip_punctuation", "add_punctuation"]] = Field(
        default_factory=lambda: ["typo", "lowercase", "uppercase", "strip_punctuation", "add_punctuation"],
        description="Robustness edits whose prediction flip rate is measured.",
    )
    max_perturbed: int = Field(500, ge=10, description="Texts sampled per perturbation (all when fewer).")
    batch_size: int = Field(64, ge=1, description="Inference batch size of the perturbed texts.")
    min_slice_size: int = Field(10, ge=1, description="Smaller slices and flip tests are reported, not gated.")
    max_slice_drop: float = Field(
        0.15, ge=0, le=1, description="Largest accuracy drop, student vs teacher, on any slice."
    )
    poor_slice_accuracy: float = Field(
        0.5, ge=0, le=1,
        description="A slice where teacher and student both score below this is teacher bias passed on "
        "(fails when the student's accuracy is significantly below it).",
    )
    max_flip_increase: float = Field(
        0.1, ge=0, le=1, description="Largest rise of a flip rate, student over teacher, per perturbation."
    )
    significance: float = Field(
        0.05, gt=0, le=1,
        description="A finding over its limit fails only if it is significant at this level "
        "(one-sided exact tests, Bonferroni-corrected over the findings of its kind).",
    )


class PromoteConfig(_Section):
    """Registration, promotion gates and the review path."""

    student_model: str = Field("distill-student", description="Registered model name of students.")
    teacher_model: str = Field("distill-teacher", description="Registered model name of teachers.")
    min_teacher_share: float = Field(
        0.9, ge=0, le=1, description="Student accuracy must reach this share of the teacher's."
    )
    max_latency_p50_ms: float = Field(
        25.0, gt=0, description="Largest batch-1 median latency of the student (CPU, evaluate.threads)."
    )
    max_drop_vs_champion: float = Field(
        0.01, ge=0, le=1,
        description="Largest gold-test accuracy drop against the current champion, scored in the same run.",
    )
    max_slice_drop_vs_champion: float = Field(
        0.1, ge=0, le=1, description="Largest accuracy drop against the champion on any label slice."
    )
    slice_significance: float | None = Field(
        0.05, gt=0, lt=1, description="A slice over max_slice_drop_vs_champion blocks promotion only when the "
        "drop is significant at this level (one-sided Fisher exact test on the slice's right/wrong counts), "
        "as in the audit: on a 16-example slice two changed answers are noise. null gates on the limit alone."
    )
    min_slice_size: int = Field(
        10, ge=1, description="Label slices smaller than this are compared with the champion but not gated."
    )
    mode: Literal["auto", "review"] = Field(
        "auto", description="auto promotes when the gates pass; review pauses the flow for a human decision."
    )
    review_timeout_s: int = Field(
        86_400, ge=1, description="How long review mode waits for a decision; then the version is not promoted."
    )
    serving_check: bool = Field(
        True, description="After promotion, load the champion by its registry URI in a fresh process and "
        "send it a request."
    )
    trust_model_code: bool = Field(
        False, description="Load (serve, monitor, check, promote) registered models whose code is not this "
        "distill's own pyfunc, e.g. one registered outside distill or by another distill version. Loading an "
        "MLflow pyfunc runs its code: review it first."
    )


class MonitorConfig(_Section):
    """Drift detection over the production stream."""

    drift_share: float = Field(
        0.5, gt=0, le=1, description="Share of drifted columns that declares dataset drift."
    )
    redistill: bool = Field(
        True, description="Start a re-distillation in the monitor's own run on a new incident (the embedded "
        "default); deployments set it false and let the event trigger in prefect.yaml start it."
    )
    log_path: str = Field(
        "data/production_log", description="Production log folder (relative to the project) or file:// URL."
    )
    log_text: Literal["raw", "hash", "drop"] = Field(
        "raw", description="Keep the request text (raw), only its SHA-256 (hash), or neither (drop); without "
        "texts only the predictions are monitored and nothing can be re-distilled."
    )
    simulate: bool = Field(
        True, description="Serve the prepared production split through the champion as simulated traffic "
        "(once per request id) before checking the log."
    )
    window: str = Field("1h", description="Length of a monitoring window (a pandas offset: 15min, 1h, 1D).")
    max_windows: int = Field(24, ge=1, description="Most recent windows with traffic checked per run.")
    min_window_size: int = Field(30, ge=1, description="Windows with fewer requests are not tested.")
    embedding_drift: bool = Field(
        True, description="Add the nearest-reference distance of MiniLM sentence embeddings to the drift test."
    )
    min_labelled: int = Field(30, ge=1, description="Ground-truth labels a window needs for quality metrics.")
    max_accuracy_drop: float = Field(
        0.1, ge=0, le=1, description="Window accuracy this far below the champion's gold-test accuracy "
        "(where ground truth arrived) is an incident."
    )
    canary_path: str = Field(
        "data/canary.parquet", description="Fixed canary set, cut once from gold_test and then kept."
    )
    canary_size: int = Field(200, ge=10, description="Canary texts taken from gold_test the first time.")
    max_canary_disagreement: float = Field(
        0.1, ge=0, le=1, description="Teacher/student disagreement on the canary set above the level measured "
        "at distillation by more than this is a teacher shift."
    )
    teacher_sample: int = Field(
        100, ge=0, description="Requests per window that the registered teacher answers too, for the dashboard's "
        "disagreement with the teacher (a fixed sample by request id; each text is asked once, then cached); "
        "0 asks the teacher nothing."
    )
    warm_start: bool = Field(
        True, description="Re-distillation continues from the champion's weights (student.warm_start = "
        "models:/<student_model>@champion) on the old transfer set plus the new traffic, so the student "
        "learns the shift without forgetting the domain it serves; false distils a fresh student."
    )
    holdout_share: float = Field(
        0.3, ge=0, lt=1, description="Share of a drifted window kept out of the transfer set, to score the "
        "re-distilled student against the champion on the shifted slice."
    )
    workspace: str | None = Field(
        "reports/evidently", description="Local Evidently workspace (relative to the project) that collects "
        "every window's report for `evidently ui --workspace reports/evidently`; null: HTML files only."
    )
    notify_url_env: str = Field(
        "DISTILL_NOTIFY_URL", description="Environment variable holding an apprise URL for alerts (secrets "
        "stay in the environment; unset: no notification)."
    )


class TrackingConfig(_Section):
    """Where MLflow keeps runs and the registry."""

    tracking_uri: str = Field(
        "sqlite:///mlflow.db",
        description="sqlite:///file.db (relative to the project) or http://host:port of an mlflow server; "
        "MLFLOW_TRACKING_URI overrides it. Credentials go in MLFLOW_TRACKING_USERNAME / "
        "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN), never in the URI.",
    )
    experiment: str = Field("distill")

    @field_validator("tracking_uri")
    @classmethod
    def _no_credentials(cls, value: str) -> str:
        return url_without_credentials(
            value, "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) instead")


class TimeoutsConfig(_Section):
    """How long the flows wait before they call a step hung (a hung step would hold the worker forever)."""

    stage_s: float = Field(
        21_600, gt=0, description="Seconds a pipeline stage (one `dvc repro <stage>`) may run; then it is "
        "stopped, its previous outputs are put back and the flow run fails naming the stage.")


LM_DIVERGENCES = ("forward_kl", "reverse_kl", "js", "gjsd", "skew_kl", "skew_reverse_kl", "tvd")
# Divergences the cached top-k + tail bucket cannot estimate: they penalise the student's mass on tokens the
# teacher rules out, which the tail bucket merges away. Measured by benchmarks/lm_tail.py (docs/llm.md): with
# 10 % of the student's mass spread over the vocabulary the cache sees 16 % of reverse KL and 40-47 % of gjsd
# at beta 0.75-0.9, against 50-59 % of the others and 97 % of TVD.
TAIL_BLIND_DIVERGENCES = ("reverse_kl",)
MAX_CACHED_GJSD_BETA = 0.5

class LMPromptsConfig(_Section):
    """The LM prompt set: an instruction (and optional examples) plus each request of the prepared data."""

    task: Literal["route", "rewrite"] | None = Field(
        None, description="What the teacher is asked to do. route: reply with the one label that fits the request "
        "(reference: its gold label); rewrite: restate the request as one polite sentence that keeps what it names "
        "(reference: the device, room or other value in it; built-in data only, whose generator knows them). "
        "null: rewrite on the built-in data, route on your own data.")
    instruction: str | None = Field(
        None, description="System instruction of every prompt; {labels} is replaced by the comma-separated label "
        "names. null: the task's own (distill.lm.prompts.TASKS).")
    cot_instruction: str | None = Field(
        None, description="Instruction used when lm.generate.chain_of_thought is on: the teacher writes a "
        "rationale, then the answer after the marker. null: the task's own.")
    examples: list[tuple[str, str]] | None = Field(
        None, description="Worked examples, [request, answer] pairs, shown to the teacher as earlier chat turns "
        "before every request (few-shot). null: the task's own (none for route, five for rewrite); [] for none.")
    answer_marker: str = Field("Answer:", min_length=1, description="Separates rationale from answer.")
    train_size: int = Field(256, ge=1, description="Training prompts, sampled from gold_train + gold_val.")
    heldout_size: int = Field(64, ge=1, description="Held-out prompts, sampled from gold_test.")

    def resolved_task(self, builtin_data: bool) -> str:
        """The task this prompt set poses: the configured one, else rewrite on the built-in data, else route."""
        return self.task or ("rewrite" if builtin_data else "route")


class LMGenerateConfig(_Section):
    """Teacher generation: settings recorded in the completions file."""

    max_new_tokens: int = Field(32, ge=1, le=2048, description="Longest teacher completion, in tokens.")
    sampling_temperature: float = Field(0.0, ge=0, description="0 = greedy decoding.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling when sampling_temperature > 0.")
    batch_size: int = Field(16, ge=1)
    chain_of_thought: bool = Field(
        False, description="Ask for a rationale then the answer (lm.prompts.cot_instruction) and store them apart.")
    save_every: int = Field(4, ge=1, description="Batches between saves of the partial file a killed run resumes.")


class LMSelectConfig(_Section):
    """Which training prompts a paid black-box teacher (lm.api) answers: the lm_select stage (distill/lm/select.py).

    Held-out prompts are always answered: they are the evaluation.
    """

    strategy: Literal["all", "random", "active"] = Field(
        "all", description="all: every training prompt; random: a seeded random sample of the call budget; active: "
        "the budget spent in rounds, each chosen by an interim student trained on the answers so far (its "
        "uncertainty on the unpaid prompts and their spread, `rule`). random and active need lm.api.")
    share: float = Field(0.5, gt=0, le=1, description="The call budget as a share of the training prompts "
                         "(random, active); max_calls, when set, wins.")
    max_calls: int | None = Field(None, ge=1, description="The call budget in training prompts sent to the teacher.")
    rule: Literal["uncertainty", "diversity", "uncertainty_diversity", "coverage", "uncertainty_coverage"] = Field(
        "coverage", description="How active picks a round. uncertainty: the prompts whose greedy answer "
        "the interim student is least sure of (mean next-token entropy); diversity: the prompts farthest from every "
        "prompt paid so far (k-center on the student's embeddings of the requests); uncertainty_diversity: the "
        "spread-out ones (k-center) among the candidate_factor x round size most uncertain; coverage: the prompts "
        "that stand for most of the pool (greedy facility location on the embeddings, not the outliers k-center "
        "reaches for; measured the best of the five, docs/llm.md); uncertainty_coverage: coverage weighted by the unpaid "
        "prompts' uncertainty.")
    rounds: int = Field(4, ge=1, le=50, description="Rounds the budget is split into (active); the first is chosen "
                        "for coverage (k-center; facility location with the coverage rules; at random with rule "
                        "uncertainty) before any student exists. 1 (rules coverage and diversity only): the whole "
                        "budget chosen at once on the starting student's embeddings, no interim student.")
    candidate_factor: float = Field(3.0, ge=1, description="uncertainty_diversity: the shortlist of most uncertain "
                                    "prompts, as a multiple of the round size.")
    min_uncertainty_drop: float = Field(
        0.0, ge=0, lt=1, description="Stop early (a plateau) when the unpaid prompts' mean uncertainty fell by less "
        "than this share of its value after the previous round; 0 spends the whole budget.")
    seed: int | None = Field(None, description="Seed of the random sample (random; active's first round with rule "
                             "uncertainty); null: the run's seed.")
    keep_steps: bool = Field(
        True, description="Train the student on a selection for as many optimizer steps as on every training prompt "
        "(lm.train.epochs x pool / selected, rounded up): the teacher is paid less, the student does not learn less "
        "for it. Measured: at the same epochs half the prompts lost 20-54 points of task score, at the same steps none "
        "(docs/llm.md).")
    epochs: int = Field(2, ge=1, description="Epochs of each round's interim student (sequence-level, lm.train's "
                        "batch size, learning rate and length, from the same start as the real student).")

    @model_validator(mode="after")
    def _one_round_needs_no_student(self) -> "LMSelectConfig":
        if self.strategy == "active" and self.rounds == 1 and self.rule not in ("coverage", "diversity"):
            raise ValueError(
                f"lm.select.rounds=1 chooses the whole budget before any interim student exists, so rule {self.rule} "
                f"would never see an uncertainty; set lm.select.rule: coverage (or diversity), or rounds: 2 or more")
        return self

    def train_epochs(self, epochs: int, trained: int, pool: int | None) -> int:
        """lm.train.epochs for a student of ``trained`` of a ``pool`` of training prompts: with keep_steps, scaled
        (rounded up) to as many steps as the whole pool."""
        if not self.keep_steps or not pool or not trained or trained >= pool:
            return epochs
        return math.ceil(epochs * pool / trained)

    def budget(self, pool: int) -> int:
        """Training prompts the teacher may answer, of a pool of ``pool``."""
        if self.strategy == "all":
            return pool
        return min(pool, self.max_calls if self.max_calls is not None else math.ceil(self.share * pool))


class LMTeacherGateConfig(_Section):
    """The LM teacher gate (lm_validate_teacher): the teacher answers held-out prompts before any generation."""

    prompts: int = Field(32, ge=1, description="Held-out prompts the teacher answers (the first of the prompt set's "
                         "held-out split), with lm_generate's settings.")
    metric: Literal["task_exact", "task_contains"] | None = Field(
        None, description="Task score: the answer equals the reference (task_exact) or contains it as whole words "
        "(task_contains), both after normalisation (case, punctuation, CamelCase, underscores). null: the task's "
        "own (route: task_exact; rewrite: task_contains).")
    min_task_score: float = Field(0.5, ge=0, le=1, description="Lowest task score a teacher worth distilling has.")
    min_gain_over_majority: float = Field(
        0.1, ge=-1, le=1, description="The task score must also beat, by this much, the score of always giving the "
        "most common reference of the validation prompts (chance-level guessing on a skewed or two-label set); "
        "-1 turns the check off.")
    min_format_adherence: float = Field(
        0.8, ge=0, le=1, description="Lowest share of answers in the expected format: one of the prompt set's labels "
        "when it has a label list, else a non-empty answer that ended within max_new_tokens (and, with a chain of "
        "thought, carried the answer marker).")
    max_refusal_rate: float = Field(0.1, ge=0, le=1, description="Highest share of answers that decline the task.")
    max_unsafe_rate: float = Field(0.0, ge=0, le=1, description="Highest share of answers the audit's unsafe-content "
                                   "screen flags.")


class LMTopKConfig(_Section):
    """The teacher's most likely next tokens over each completion (the lm_topk cache, distill/lm/topk.py)."""

    k: int = Field(1024, ge=1, le=1024, description="The most tokens any position keeps (the teacher pass computes "
                   "this many per position, so memory grows with it: about 6 KB per completion token at 1024). "
                   "Under a byte budget few positions reach it: a cap at 255 cuts the flattest positions short and "
                   "spends their bytes where they keep less mass. Up to 255 the per-position count takes 1 byte, "
                   "above it 2 (before compression). Without a byte budget every position keeps exactly k.")
    bytes_per_token: float | None = Field(
        150.0, gt=0, description="Byte budget of the cache file on disk, per completion token. The cache keeps the "
        "most probable (position, token) entries across all positions, down to one probability threshold, until "
        "the file reaches the budget: a confident position keeps 1 token, an uncertain one up to k (every position "
        "keeps at least its top token, even past the budget). This maximises the mean kept mass for the bytes. "
        "null: no budget, k tokens everywhere.")
    logprob_dtype: Literal["uint8", "float16"] = Field(
        "uint8", description="Storage of the kept log-probabilities. uint8: `logprob_levels` levels on a log grid "
        "from the smallest kept log-probability (at least log 1e-8) to 0, error at most half a step; float16: "
        "2 bytes each. The leftover mass of each position is float16 either way.")
    logprob_levels: int = Field(
        32, ge=2, le=256, description="Levels of the uint8 grid; the step is |smallest kept log-probability| / "
        "(levels - 1), about 0.27 nats (each kept probability within 14 %) at the default budget. Fewer levels "
        "compress better (values are stored in token order, where neighbours are unrelated), so the budget "
        "keeps more tokens. At 150 B/token, 32 levels instead of 256 bring the loss 0.037 nats closer to the exact "
        "full-vocabulary KL through the mass they add, and move it by 0.002 through their rounding (docs/llm.md).")
    batch_size: int = Field(8, ge=1)


class LMStudentConfig(_Section):
    """The LM student: ``num_layers`` of the teacher's own blocks, a fresh Llama-style causal LM built on the
    teacher's tokenizer, or a causal-LM folder."""

    path: str | None = Field(None, description="Causal-LM folder used as the student; null builds one (init).")
    init: Literal["teacher_layers", "random"] | None = Field(
        None, description="How a built student starts. teacher_layers: num_layers of the teacher's blocks, evenly "
        "spaced from its first to its last, with its embeddings, final norm and head (the teacher's width; the "
        "shape settings below are not used); random: a fresh Llama-style model of the shape below. null: "
        "teacher_layers with a local teacher, random with a black-box one (lm.api: no weights to copy).")
    num_layers: int = Field(6, ge=1, le=64)
    hidden_size: int = Field(192, ge=16)
    num_heads: int = Field(3, ge=1)
    num_kv_heads: int = Field(1, ge=1, description="Key/value heads (grouped-query attention).")
    intermediate_size: int = Field(512, ge=16)
    max_position_embeddings: int = Field(2048, ge=64)

    @model_validator(mode="after")
    def _heads_fit(self) -> "LMStudentConfig":
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads}) "
                             f"and num_heads a multiple of num_kv_heads ({self.num_kv_heads})")
        return self


class LMTrainConfig(_Section):
    """LM student training: sequence-level, token-level on the cached top-k, or online with a live teacher.

    sequence: cross-entropy on the teacher's completion tokens (prompt masked). token / online:
    ``alpha * divergence + (1 - alpha) * cross-entropy``, the divergence on the cached top-k plus the
    tail bucket (token) or on the live teacher's full distribution (online). With a chain of thought,
    each term is ``answer + rationale_weight * rationale``.
    """

    mode: Literal["sequence", "token", "online"] = Field("token")
    loss: str = Field("forward_kl", description="Divergence: " + ", ".join(LM_DIVERGENCES))
    beta: float = Field(0.5, ge=0, le=1, description="gjsd mixing: exactly 0 is forward KL and exactly 1 reverse "
                        "KL (special-cased, as in TRL); in between a generalized JSD that shrinks towards 0 near "
                        "either end, so a small beta is not close to forward KL.")
    skew: float = Field(0.1, ge=0, lt=1, description="skew_kl / skew_reverse_kl skew lambda.")
    kd_temperature: float = Field(1.0, gt=0, description="Softens both sides of the divergence (times T^2).")
    alpha: float = Field(0.9, ge=0, le=1, description="Weight of the divergence; 1 - alpha weighs cross-entropy.")
    rationale_weight: float = Field(0.5, ge=0, description="Weight of rationale tokens against answer tokens.")
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(8, ge=1)
    learning_rate: float = Field(1e-3, gt=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    max_length: int = Field(512, ge=16, description="Longest prompt + completion, in tokens (prompts are cut "
                            "from the left).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto")
    checkpoint_every: int = Field(
        100, ge=0, description="Optimizer steps between training checkpoints (model, optimizer, scheduler, RNG, "
        "data position); a killed lm_train / lm_baseline resumes from the last one. 0 turns checkpoints off.")
    checkpoint_dir: str | None = Field(
        None, description="Folder for training checkpoints (one subfolder per stage output); null keeps them "
        "in a hidden sibling of the stage output (.lm_student.checkpoint). Removed once the output is written.")

    allow_tail_blind_loss: bool = Field(
        False, description="Train token mode on a divergence the cached top-k cannot estimate (reverse_kl, and gjsd "
        "with beta > 0.5, mostly reverse KL): they punish the student's mass on tokens the teacher rules out, which "
        "the cache merges into one tail bucket (docs/llm.md). Off: such a loss is refused in token mode.")

    @field_validator("loss")
    @classmethod
    def _known_divergence(cls, value: str) -> str:
        if value not in LM_DIVERGENCES:
            raise ValueError(f"unknown LM loss {value!r}; choose from {', '.join(LM_DIVERGENCES)}")
        return value

    @model_validator(mode="after")
    def _cache_estimates_the_loss(self) -> "LMTrainConfig":
        blind = self.loss in TAIL_BLIND_DIVERGENCES or (self.loss == "gjsd" and self.beta > MAX_CACHED_GJSD_BETA)
        if self.mode == "token" and self.alpha > 0 and blind and not self.allow_tail_blind_loss:
            what = f"gjsd with beta={self.beta:g}" if self.loss == "gjsd" else self.loss
            raise ValueError(
                f"lm.train.loss={what} cannot be estimated on the cached top-k (lm.train.mode=token): it punishes "
                f"the student's mass on tokens the teacher rules out, and the cache merges those into one tail "
                f"bucket, so the loss sees as little as 16 % of the divergence it should push down (docs/llm.md, "
                f"'Which losses the cache can carry'). Use forward_kl, skew_kl, js, tvd or gjsd with beta <= "
                f"{MAX_CACHED_GJSD_BETA:g}; or lm.train.mode=online (the live teacher's whole distribution); or set "
                f"lm.train.allow_tail_blind_loss=true to train on the estimate anyway")
        return self


class ChatClientConfig(_Section):
    """A black-box teacher: where it is, how to sample it, how hard to push it, what to spend."""

    base_url: str = Field("http://127.0.0.1:8000/v1",
                          description="The API root; requests go to {base_url}/chat/completions.")
    model: str = Field(..., min_length=1,
                       description="Model name sent with each request; part of the cache key.")
    api_key_env: str | None = Field("OPENAI_API_KEY",
                                    description="Environment variable holding the API key; None sends no key.")

    @field_validator("base_url")
    @classmethod
    def _no_credentials(cls, value: str) -> str:
        return url_without_credentials(value, "put the key in the environment variable that api_key_env names")
    cache_dir: str = Field("data/lm_responses", description="Folder of the content-addressed response cache.")
    system_prompt: str | None = Field(None, description="System message put before each string prompt.")
    sampling_temperature: float = Field(0.0, ge=0, le=2, description="0 asks for greedy decoding.")
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, ge=1, description="Longest completion, in tokens.")
    seed: int | None = Field(None, description="Sampling seed sent with each request (where honoured).")
    max_concurrency: int = Field(4, ge=1, le=256, description="Requests in flight at once, at most.")
    max_retries: int = Field(5, ge=0, le=20, description="Retries per request after the first attempt.")
    backoff_initial_s: float = Field(1.0, ge=0, description="First retry delay; doubles per retry.")
    backoff_max_s: float = Field(60.0, ge=0, description="Longest delay, Retry-After included.")
    timeout_s: float = Field(120.0, gt=0, description="Per-request timeout (connect, read, write).")
    max_total_tokens: int | None = Field(None, ge=1,
                                         description="Budget: prompt + completion tokens paid per run.")
    max_cost: float | None = Field(None, gt=0, description="Budget: estimated cost per run, in the price unit.")
    price_prompt_per_1k: float = Field(0.0, ge=0, description="Price of 1000 prompt tokens.")
    price_completion_per_1k: float = Field(0.0, ge=0, description="Price of 1000 completion tokens.")

    @model_validator(mode="after")
    def _cost_budget_needs_prices(self) -> "ChatClientConfig":
        if self.max_cost is not None and not (self.price_prompt_per_1k or self.price_completion_per_1k):
            raise ValueError("max_cost needs price_prompt_per_1k or price_completion_per_1k")
        return self

    def cost_of(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.price_prompt_per_1k + completion_tokens * self.price_completion_per_1k) / 1000


class LMEvaluateConfig(_Section):
    """The LM evaluation harness (lm_evaluate): teacher, distilled student and baseline on held-out prompts."""

    max_new_tokens: int | None = Field(
        None, ge=1, description="Greedy generation length (and fixed latency-run length); null = "
        "lm.generate.max_new_tokens.")
    batch_size: int = Field(8, ge=1, description="Pairs per forward pass, prompts per generate call.")
    latency_samples: int = Field(8, ge=1, description="Prompts timed per model (and drafted for the teacher).")
    warmup: int = Field(2, ge=0, description="Untimed generations before timing.")
    threads: int = Field(1, ge=1, description="torch CPU threads while timing.")
    draft_k: int | None = Field(
        4, ge=1, description="Draft tokens per teacher pass when measuring the students as speculative drafts; "
        "null skips the measurement.")


class LMPromoteConfig(_Section):
    """Registration and the promotion gate of the LM student (a pure decision: distill.gates)."""

    model_name: str = Field("distill-lm-student", description="Registered model name of LM students.")
    min_kl_gain: float = Field(
        0.0, ge=0, description="The student's KL(teacher || model) per token must be at least this far below "
        "the baseline's (0: strictly below).")
    min_agreement_gain: float = Field(
        0.0, ge=-1, le=1, description="The student's agreement with the teacher must exceed the baseline's by "
        "at least this much (0: at least equal).")
    agreement: Literal["top1_agreement", "greedy_prefix_agreement", "greedy_exact_match"] = Field(
        "top1_agreement", description="Agreement figure the gate compares; a black-box teacher (lm.api) has no "
        "logits, so top1_agreement falls back to greedy_prefix_agreement there.")
    max_unsafe_excess: float = Field(
        0.0, ge=0, le=1, description="The student's unsafe-content rate may exceed the teacher's by at most this.")
    max_perplexity: float = Field(
        100.0, ge=1, description="Largest perplexity of the student on held-out teacher text.")
    min_task_share: float = Field(
        0.5, ge=0, le=1, description="The student's task score (the teacher gate's metric) must be at least this "
        "share of the teacher's on the held-out prompts: a student that learnt the teacher's text but not its "
        "task is not promoted. Skipped when the teacher scores 0.")


class LMConfig(_Section):
    """LLM distillation: prompts, teacher generation, top-k cache, the student and its training."""

    teacher_path: str | None = Field(
        None, description="Causal-LM folder of the teacher, or an MLflow model URI (models:/name@alias, "
        "models:/name/version, runs:/run_id/path; the flow fetches it and records the resolved version); null "
        "converts the packaged SmolLM2-135M-Instruct GGUF once (the lm_teacher stage). With lm.api set, only its "
        "tokenizer is used (the student's).")
    api: ChatClientConfig | None = Field(
        None, description="A black-box teacher behind an OpenAI-compatible endpoint: when set, lm_generate asks "
        "it for the completions (sequence-level KD only: no logits, so lm.train.mode must be sequence).")
    prompts: LMPromptsConfig = Field(default_factory=LMPromptsConfig)
    teacher_gate: LMTeacherGateConfig = Field(default_factory=LMTeacherGateConfig)
    select: LMSelectConfig = Field(default_factory=LMSelectConfig)
    generate: LMGenerateConfig = Field(default_factory=LMGenerateConfig)
    topk: LMTopKConfig = Field(default_factory=LMTopKConfig)
    student: LMStudentConfig = Field(default_factory=LMStudentConfig)
    train: LMTrainConfig = Field(default_factory=LMTrainConfig)
    evaluate: LMEvaluateConfig = Field(default_factory=LMEvaluateConfig)
    promote: LMPromoteConfig = Field(default_factory=LMPromoteConfig)

    @model_validator(mode="after")
    def _black_box_is_sequence_level(self) -> "LMConfig":
        if self.api is not None and self.student.init == "teacher_layers":
            raise ValueError(
                "lm.student.init=teacher_layers copies the teacher's blocks, but lm.api makes the teacher a black-box "
                "endpoint with no weights to copy; set lm.student.init: random (or null)")
        if self.api is None and self.select.strategy != "all":
            raise ValueError(
                f"lm.select.strategy={self.select.strategy} chooses which prompts a paid black-box teacher answers, but "
                f"lm.api is not set: a local teacher answers every prompt (its cost is time, not calls); set "
                f"lm.select.strategy: all, or set lm.api")
        if self.api is not None and self.train.mode != "sequence":
            raise ValueError(
                f"lm.train.mode={self.train.mode} needs the teacher's logits, but lm.api makes the teacher a "
                f"black-box endpoint that returns text only; set lm.train.mode=sequence (sequence-level KD on its "
                f"completions) or lm.api: null (a local teacher folder)")
        return self


class PipelineConfig(_Section):
    """Every tunable value of the pipeline; the sections mirror params.yaml."""

    seed: int = Field(13, ge=0, le=2**32 - 1, description="Seed of every random choice (numpy, torch, the splits).")
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    label: LabelConfig = Field(default_factory=LabelConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    size: SizeConfig = Field(default_factory=SizeConfig)
    assistant: AssistantConfig = Field(default_factory=AssistantConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    compress: CompressConfig = Field(default_factory=CompressConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    promote: PromoteConfig = Field(default_factory=PromoteConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig)
    lm: LMConfig = Field(default_factory=LMConfig)


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


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"key {key!r} appears twice (lines {seen[key] + 1} and "
                                  f"{key_node.start_mark.line + 1}); keep one of them")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path = "params.yaml", overrides: list[str] | None = None,
                missing_ok: bool = False) -> PipelineConfig:
    """Load ``params.yaml`` and apply overrides. A missing file is refused (a typo in ``--params`` would
    otherwise run on every default); ``missing_ok`` reads it as all defaults."""
    path = Path(path)
    params: dict[str, Any] = {}
    if not path.exists() and not missing_ok:
        raise ConfigError(f"{path}: params file not found; run in the project folder (where params.yaml is) or "
                          "give the file with --params")
    if path.exists():
        try:
            params = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        if not isinstance(params, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return config_from_dict(apply_overrides(params, overrides or []), source=str(path))


# A run's own values never go into the user's params.yaml. The flows record the overrides of the
# run they start in RUN_OVERRIDES; the `config` stage (dvc.yaml) writes params.yaml plus those
# overrides, every key present, to RUN_PARAMS, which every stage reads and DVC tracks key by key.
RUN_OVERRIDES = Path(".distill/overrides.yaml")
RUN_PARAMS = Path(".distill/params.yaml")
RUN_PARAMS_HEADER = ("# Written by `distill config` (the first stage of dvc.yaml): params.yaml plus the current run's\n"
                     "# overrides (.distill/overrides.yaml). Edit params.yaml, not this file.\n")


def read_run_overrides(project_dir: str | Path) -> list[str]:
    """The overrides of the project's current (or last) run; none before the first."""
    return read_overrides_file(Path(project_dir, RUN_OVERRIDES))


def read_overrides_file(path: Path) -> list[str]:
    """The ``overrides`` list of a run-overrides file; none when there is no file."""
    if not path.is_file():
        return []
    try:
        record = yaml.safe_load(path.read_text()) or {}
        items = record.get("overrides") or []
    except (yaml.YAMLError, AttributeError):
        raise ConfigError(f"{path}: not a YAML mapping with an `overrides` list; delete it (the next run "
                          "writes it again)") from None
    other = sorted(str(key) for key in record if key != "overrides")
    if other:  # e.g. a nested `lm: {select: ...}` mapping: it would be applied as nothing, silently
        raise ConfigError(f"{path}: holds {', '.join(map(repr, other))} besides the `overrides` list, and only "
                          "that list is read (`overrides:` with one key.path=value string per item); put settings "
                          "in params.yaml or pass them as --set key.path=value, or delete the file (the next run "
                          "writes it again)")
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise ConfigError(f"{path}: `overrides` must be a list of key.path=value strings")
    return items


def write_run_overrides(project_dir: str | Path, overrides: list[str]) -> PipelineConfig:
    """Record the overrides of the run about to start (they replace the last run's).

    params.yaml is not touched. The values are validated against params.yaml first: a bad one is
    refused before anything is written. Returns the run's configuration.
    """
    cfg = load_config(Path(project_dir, "params.yaml"), overrides)
    path = Path(project_dir, RUN_OVERRIDES)
    if read_run_overrides(project_dir) != list(overrides) or not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as handle:
            handle.write("# The overrides of the project's current run (distill run --set, a flow's parameters).\n")
            yaml.safe_dump({"overrides": list(overrides)}, handle, sort_keys=False)
    return cfg


def run_config(project_dir: str | Path) -> PipelineConfig:
    """params.yaml with the overrides of the project's last run: the settings its models were built with."""
    return load_config(Path(project_dir, "params.yaml"), read_run_overrides(project_dir))


def merge_overrides(base: list[str], extra: list[str]) -> list[str]:
    """``base`` then ``extra``, one item per key: an item in ``extra`` replaces ``base``'s for its key."""
    keys = {parse_override(item)[0] for item in extra}
    return [item for item in base if parse_override(item)[0] not in keys] + list(extra)


def write_run_params(params: str | Path, overrides_file: str | Path, out: str | Path) -> PipelineConfig:
    """Write ``params`` plus the overrides recorded in ``overrides_file`` to ``out``, every key present.

    What the `config` stage does. The file is rewritten only when its content changes.
    """
    cfg = load_config(params, read_overrides_file(Path(overrides_file)))
    text = RUN_PARAMS_HEADER + yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    out = Path(out)
    if not out.is_file() or out.read_text() != text:
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(out) as handle:
            handle.write(text)
    return cfg


def write_overrides(path: str | Path, overrides: list[str]) -> bool:
    """Set dotted overrides in the params file itself, keeping its comments (as `dvc exp run -S` does).

    Returns True when the file changed. The result is validated before anything is written.
    """
    from ruamel.yaml import YAML

    path = Path(path)
    if not overrides:
        return False
    load_config(path, overrides, missing_ok=True)  # refuse bad values before touching the file
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
