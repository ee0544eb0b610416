"""What a flow run takes and how it ends: typed settings, Failed when a gate stopped it, a name that says what it made."""

import pytest
from prefect.states import Completed, Failed

from flows.outcome import MAX_MESSAGE, end, gate_failures, summary_of

PROMOTED = {"completed": True, "student_version": "3", "promoted": True,
            "promotion": {"promoted": True, "outcome": "promoted"}, "decision": {"passed": True, "reasons": []}}


def test_a_promoted_or_reviewed_run_is_returned_as_it_is():
    assert end(PROMOTED) is PROMOTED
    rejected = {**PROMOTED, "promoted": False, "promotion": {"promoted": False, "outcome": "review rejected"}}
    assert gate_failures(rejected) == []  # a reviewer's no is a decision, not a failure


def test_a_failed_teacher_gate_ends_the_run_failed_with_its_reasons_and_the_summary():
    summary = {"completed": False, "teacher_gate": {"passed": False, "reasons": ["accuracy 0.61 < 0.8 on 40 test rows"]}}
    state = end(summary)
    assert state.is_failed() and state.message == "teacher gate failed: accuracy 0.61 < 0.8 on 40 test rows"
    assert summary_of(state) == summary


def test_a_blocked_student_and_a_rolled_back_promotion_each_name_the_gate():
    blocked = {**PROMOTED, "promoted": False, "promotion": {"promoted": False, "outcome": "blocked by gates"},
               "decision": {"passed": False, "reasons": ["audit failed: 0.15 below the teacher on 'positive'"]}}
    assert gate_failures(blocked) == ["student v3 blocked by its gates: audit failed: 0.15 below the teacher on "
                                      "'positive'"]
    lm = {**blocked, "promotion": "blocked by gates"}  # the LM flow's summary holds the outcome itself
    assert gate_failures(lm) == gate_failures(blocked)
    rolled_back = {**PROMOTED, "promotion": {"promoted": False, "outcome": "promoted",
                                             "serving": {"ok": False, "error": "no answer", "rolled_back_to": "2"}}}
    assert gate_failures(rolled_back) == ["student v3 failed its serving check and was rolled back to v2: no answer"]


def test_a_long_message_is_cut_but_the_summary_keeps_everything():
    reasons = [f"label {i} below the teacher" for i in range(200)]
    summary = {"completed": False, "teacher_gate": {"passed": False, "reasons": reasons}}
    state = end(summary)
    assert len(state.message) == MAX_MESSAGE and state.message.endswith("…")
    assert summary_of(state)["teacher_gate"]["reasons"] == reasons


def test_summary_of_passes_a_plain_summary_and_raises_what_a_crashed_run_raised():
    assert summary_of(PROMOTED) is PROMOTED
    assert summary_of(Completed(data=PROMOTED)) == PROMOTED
    with pytest.raises(ValueError, match="boom"):
        summary_of(Failed(data=ValueError("boom")))


def test_a_runs_name_says_what_it_made():
    from flows.distillation import run_name

    card = {"student": {"num_layers": 2, "hidden_size": 128, "vocab_size": 8000}, "method": "kl",
            "kd_temperature": 4.0, "alpha": 0.7}
    metrics = {"student": {"accuracy": 0.9621}, "teacher": {"accuracy": 0.981}}
    assert run_name("drift", card, metrics) == "drift: kl T=4 a=0.7 2x128 v8k -> 0.962 (98.1% of teacher)"
    assert run_name("manual", {}, metrics).startswith("manual: kd student -> 0.962")


def test_the_typed_settings_become_overrides_and_the_free_ones_win():
    from distill.config import load_config
    from flows.settings import RunSettings, run_overrides

    settings = RunSettings(data_path="data/raw/tickets: 2026.csv", text_column="body", label_column="queue",
                           teacher_path="models:/distill-teacher@champion", min_speedup_int8=2.0,
                           student_shape="as configured", kd_temperature=2.0, promote_mode="review")
    overrides = run_overrides(settings.model_dump(), ["train.kd_temperature=8", "train.epochs=3"])
    assert overrides.count("train.kd_temperature=8") == 1 and not any("=2.0" in o and "kd_" in o for o in overrides)
    cfg = load_config("params.yaml", overrides)
    assert (cfg.data.path, cfg.data.text_column, cfg.data.label_column) == ("data/raw/tickets: 2026.csv", "body", "queue")
    assert cfg.teacher.path == "models:/distill-teacher@champion" and cfg.size.min_speedup_int8 == 2.0
    assert cfg.size.search is False and cfg.train.kd_temperature == 8 and cfg.train.epochs == 3
    assert cfg.promote.mode == "review" and cfg.train.alpha == load_config("params.yaml").train.alpha  # unset: kept
    assert run_overrides(None, None) == [] and RunSettings().to_overrides() == []
    with pytest.raises(ValueError, match="alpha"):
        RunSettings(alpha=1.5)


def test_the_deployment_form_shows_the_typed_settings_with_descriptions_and_dropdowns():
    from prefect.utilities.callables import parameter_schema

    from flows.pipeline import distill_pipeline
    from flows.redistill import run_redistillation

    schema = parameter_schema(distill_pipeline).model_dump_for_openapi()
    fields = schema["definitions"]["RunSettings"]["properties"]
    assert {"data_path", "teacher_path", "min_speedup", "kd_temperature", "alpha", "promote_mode"} <= set(fields)
    assert all(field.get("description") for field in fields.values())
    # plain inputs in the form (a dropdown, a number box), not a choice between a type and None
    assert fields["promote_mode"]["enum"] == ["params.yaml", "auto", "review"] and fields["alpha"]["type"] == "number"
    assert all("anyOf" not in field for field in fields.values())
    assert "settings" in schema["properties"] and "overrides" in schema["properties"]
    assert {"settings", "overrides"} <= set(parameter_schema(run_redistillation).model_dump_for_openapi()["properties"])


def test_a_run_logs_the_headline_figures_per_model_not_all_140():
    from tasks.tracking import HEADLINE, headline

    figures = {key: 0.5 for key in (*HEADLINE, "ece", "latency_p99_ms", "throughput_ratio_to_teacher")}
    cut = headline({"student": figures, "teacher": {"accuracy": 0.9, "ece": 0.1}})
    assert set(cut["student"]) == set(HEADLINE) and cut["teacher"] == {"accuracy": 0.9}


def test_the_run_summary_lists_the_teacher_first_whatever_order_the_metrics_file_has():
    """metrics.json is written with sorted keys; the table a user reads goes teacher, students, baseline."""
    from flows.distillation import summary_table

    figures = {"accuracy": 0.9, "macro_f1": 0.9, "agreement_with_teacher": 1.0, "latency_p50_ms": 1.0,
               "latency_p95_ms": 1.0, "parameters": 1e6, "size_mb": 1.0}
    table = summary_table({name: figures for name in sorted(["teacher", "student", "compressed_int8", "baseline",
                                                              "extra"])})
    rows = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
    assert rows == ["teacher", "student", "compressed_int8", "baseline", "extra"]
