"""Where a project's stages read and write, declared once.

dvc.yaml names the same paths on each stage's command line and in its outs (DVC reads only its own
file); ``tests/test_layout.py`` checks that the two agree. The stage commands' defaults
(``distill/stages.py``) and the flows read the paths from here: ``LAYOUT.under(project_dir)`` gives
them inside a project folder.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from distill.config import RUN_OVERRIDES, RUN_PARAMS


@dataclass(frozen=True)
class Layout:
    run_overrides: Path = RUN_OVERRIDES        # the current run's overrides (the flows write it)
    run_params: Path = RUN_PARAMS              # config: params.yaml + the run's overrides
    incoming: Path = Path("data/incoming")     # traffic the monitor kept for re-distillation
    prepared: Path = Path("data/prepared")     # prepare: the splits, labels.json, report.json
    teacher: Path = Path("models/teacher")     # teacher
    imported_teacher: Path = Path("models/imported_teacher")  # an MLflow teacher, fetched by the flow
    teacher_report: Path = Path("reports/teacher")  # validate_teacher: metrics.json, gate.json
    outputs: Path = Path("data/teacher_outputs/logits.parquet")  # label: the teacher's outputs
    assistant: Path = Path("models/assistant")  # assistant
    student_shape: Path = Path("models/student_shape.json")  # size_student
    imported_student: Path = Path("models/imported_student")  # student.warm_start, fetched by the flow
    student: Path = Path("models/student")     # train_student
    baseline: Path = Path("models/baseline")   # train_baseline
    compressed: Path = Path("models/student_compressed")  # compress_student
    evaluate: Path = Path("reports/evaluate")  # evaluate: metrics.json, predictions.parquet, report.html
    audit: Path = Path("reports/audit")        # audit: audit.json, audit.html
    lm_teacher: Path = Path("models/lm_teacher")
    lm_imported_teacher: Path = Path("models/lm_imported_teacher")
    lm_prompts: Path = Path("data/lm/prompts.parquet")
    lm_teacher_report: Path = Path("reports/lm_teacher")  # lm_validate_teacher: metrics.json, gate.json, report.md
    lm_selection: Path = Path("reports/lm_selection.json")  # lm_select: the training prompts the teacher answers
    lm_completions: Path = Path("data/lm/completions.parquet")
    lm_topk: Path = Path("data/lm/topk.parquet")
    lm_student: Path = Path("models/lm_student")
    lm_baseline: Path = Path("models/lm_baseline")
    lm_evaluate: Path = Path("reports/lm")
    results: Path = Path("reports/stages")    # every stage's result (JSON), the flows' typed way back

    @property
    def gate(self) -> Path:
        return self.teacher_report / "gate.json"

    @property
    def predictions(self) -> Path:
        return self.evaluate / "predictions.parquet"

    def result(self, stage: str) -> Path:
        """Where the stage ``stage`` (dvc.yaml's name) writes its result."""
        return self.results / f"{stage}.json"

    def under(self, project_dir: str | Path) -> Layout:
        """The same layout inside ``project_dir``."""
        return Layout(**{f.name: Path(project_dir, getattr(self, f.name)) for f in fields(self)})


LAYOUT = Layout()

# What each stage of dvc.yaml writes (besides its result file), by stage name.
STAGE_OUTS = {"config": LAYOUT.run_params, "prepare": LAYOUT.prepared, "teacher": LAYOUT.teacher,
              "validate_teacher": LAYOUT.teacher_report, "label": LAYOUT.outputs, "assistant": LAYOUT.assistant,
              "size_student": LAYOUT.student_shape, "train_student": LAYOUT.student, "train_baseline": LAYOUT.baseline,
              "compress_student": LAYOUT.compressed,
              "evaluate": LAYOUT.evaluate, "audit": LAYOUT.audit, "lm_teacher": LAYOUT.lm_teacher,
              "lm_prompts": LAYOUT.lm_prompts, "lm_validate_teacher": LAYOUT.lm_teacher_report,
              "lm_select": LAYOUT.lm_selection, "lm_generate": LAYOUT.lm_completions, "lm_topk": LAYOUT.lm_topk,
              "lm_train": LAYOUT.lm_student, "lm_baseline": LAYOUT.lm_baseline}
