"""Every core stage on tiny data, through its run() function, on tmp_path."""

import numpy as np
import pandas as pd
import pytest
import torch

from distill import audit, data, evaluate, label, students, teacher
from distill.label import TeacherOutputError
from distill.models import ModelError, load_classifier, read_card, save_classifier


@pytest.fixture
def staged(tiny_cfg, tiny_teacher, tmp_path):
    """Prepared data and an imported teacher."""
    prepared = tmp_path / "prepared"
    data.run(tiny_cfg, prepared)
    teacher_dir = tmp_path / "teacher"
    result = teacher.run(tiny_cfg, prepared, teacher_dir, teacher_path=tiny_teacher)
    return tiny_cfg, prepared, teacher_dir, result


def test_imported_teacher_keeps_its_weights_and_gets_a_fingerprint(staged, tiny_teacher, tmp_path):
    cfg, prepared, teacher_dir, result = staged
    assert not result.bootstrapped and read_card(teacher_dir)["cut"]["how"] == cfg.teacher.cut == "head_tail"
    assert result.fingerprint == read_card(teacher_dir)["fingerprint"] != read_card(tiny_teacher)["fingerprint"]
    assert (teacher_dir / "model.safetensors").read_bytes() == (tiny_teacher / "model.safetensors").read_bytes()
    # Read as the folder was (its head), it is the same teacher, with the same fingerprint.
    head = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"cut": "head"})})
    again = teacher.run(head, prepared, tmp_path / "head", teacher_path=tiny_teacher)
    assert again.fingerprint == read_card(tiny_teacher)["fingerprint"]


def test_missing_teacher_folder_is_named(tiny_cfg, tmp_path):
    prepared = tmp_path / "prepared"
    data.run(tiny_cfg, prepared)
    with pytest.raises(ModelError, match="no_such_teacher: folder not found"):
        teacher.run(tiny_cfg, prepared, tmp_path / "t", teacher_path=tmp_path / "no_such_teacher")
    assert not (tmp_path / "t").exists()


def test_teacher_with_another_label_set_is_refused(tiny_cfg, tiny_teacher, tmp_path):
    frame = pd.read_csv(tiny_cfg.data.path)
    frame.loc[frame["intent"] == "timer", "intent"] = "alarm"
    path = tmp_path / "relabelled.csv"
    frame.to_csv(path, index=False)
    cfg = tiny_cfg.model_copy(update={"data": tiny_cfg.data.model_copy(update={"path": str(path)})})
    prepared = tmp_path / "prepared"
    data.run(cfg, prepared)
    with pytest.raises(ModelError, match="do not match the data's labels"):
        teacher.run(cfg, prepared, tmp_path / "t", teacher_path=tiny_teacher)


def test_the_bootstrapped_teacher_stops_at_its_step_budget(tiny_cfg, tmp_path):
    prepared = tmp_path / "prepared"
    data.run(tiny_cfg, prepared)
    cfg = tiny_cfg.model_copy(update={"teacher": tiny_cfg.teacher.model_copy(
        update={"epochs": 10, "max_steps": 3, "batch_size": 8})})
    result = teacher.run(cfg, prepared, tmp_path / "t")
    card = read_card(tmp_path / "t")
    assert result.bootstrapped and card["steps"] == 3
    assert card["train_size"] == len(data.read_split(prepared, "gold_train"))
    gate = teacher.validate(cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"min_accuracy": 1.0})}),
                            prepared, tmp_path / "t", tmp_path / "gate")
    assert not gate.passed and f"fine-tuned on {card['train_size']}" in gate.reasons[-1]


def test_teacher_gate_passes_and_fails_on_its_thresholds(staged, tmp_path):
    cfg, prepared, teacher_dir, _ = staged
    assert teacher.validate(cfg, prepared, teacher_dir, tmp_path / "gate_ok").passed
    strict = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"min_accuracy": 1.0})})
    gate = teacher.validate(strict, prepared, teacher_dir, tmp_path / "gate_fail")
    assert not gate.passed and any("< minimum 1.000" in r for r in gate.reasons)
    assert (tmp_path / "gate_fail" / "gate.json").is_file()


def test_label_stage_records_lineage_and_is_computed_once(staged, tmp_path):
    cfg, prepared, teacher_dir, result = staged
    out = tmp_path / "outputs" / "logits.parquet"
    first = label.run(cfg, prepared, teacher_dir, out)
    frame, logits, meta = label.read_outputs(out, result.fingerprint)
    assert not first.reused and meta["teacher_fingerprint"] == result.fingerprint
    n_inputs = len(data.read_split(prepared, "gold_train")) + len(data.read_split(prepared, "transfer"))
    assert logits.shape == (n_inputs, 4) and np.isfinite(logits).all()
    mtime = out.stat().st_mtime_ns
    assert label.run(cfg, prepared, teacher_dir, out).reused
    assert out.stat().st_mtime_ns == mtime


def test_outputs_of_another_teacher_are_refused(staged, tmp_path):
    cfg, prepared, teacher_dir, _ = staged
    out = tmp_path / "logits.parquet"
    label.run(cfg, prepared, teacher_dir, out)
    with pytest.raises(TeacherOutputError, match="rerun the label stage"):
        label.read_outputs(out, "0" * 64)


def test_non_finite_teacher_outputs_fail_the_contract(staged, tmp_path, monkeypatch):
    from distill.contracts import ContractError

    cfg, prepared, teacher_dir, _ = staged

    def broken(*args, **kwargs):
        out = np.zeros((len(args[1]), 4), dtype=np.float32)
        out[0, 1] = np.nan
        return out

    monkeypatch.setattr(label, "predict_logits", broken)
    out = tmp_path / "logits.parquet"
    with pytest.raises(ContractError, match="teacher_outputs"):
        label.run(cfg, prepared, teacher_dir, out)
    assert not out.exists()


def test_students_train_evaluate_and_audit(staged, tmp_path):
    cfg, prepared, teacher_dir, _ = staged
    outputs = tmp_path / "logits.parquet"
    label.run(cfg, prepared, teacher_dir, outputs)
    logged = []
    student = students.run_student(cfg, prepared, teacher_dir, outputs, tmp_path / "student",
                                   on_log=lambda step, m: logged.append((step, m)))
    baseline = students.run_baseline(cfg, prepared, teacher_dir, tmp_path / "baseline")
    assert student.steps == baseline.steps, "the baseline gets the student's step budget"
    assert logged and all(0 <= m["val_accuracy"] <= 1 for _, m in logged)
    # the curve is saved with each model: every check's step, losses, learning rate, validation accuracy
    from distill.models import read_history

    curve = read_history(tmp_path / "student")
    assert [row["step"] for row in curve] == [step for step, _ in logged]
    assert [row["val_accuracy"] for row in curve] == pytest.approx([m["val_accuracy"] for _, m in logged])
    assert all(row["learning_rate"] > 0 and row["loss_kl"] >= 0 for row in curve)
    assert "loss_kl" not in read_history(tmp_path / "baseline")[0]
    assert read_card(tmp_path / "student")["teacher_fingerprint"] == read_card(teacher_dir)["fingerprint"]

    result = evaluate.run(cfg, prepared, teacher_dir, tmp_path / "student", tmp_path / "baseline", tmp_path / "eval")
    assert set(result.metrics) == {"teacher", "teacher_int8", "student", "student_int8", "baseline"}
    assert result.metrics["teacher"]["agreement_with_teacher"] == 1.0
    for figures in result.metrics.values():
        assert 0 <= figures["accuracy"] <= 1 and figures["latency_p50_ms"] > 0 and figures["size_mb"] > 0
    assert result.metrics["student"]["parameters"] < result.metrics["teacher"]["parameters"]
    for figures in result.metrics.values():
        assert figures["accuracy_ci_low"] <= figures["accuracy"] <= figures["accuracy_ci_high"]
        assert 0 <= figures["ece"] <= 1 and figures["throughput_per_s"] > 0
    assert 0 <= result.metrics["student"]["mcnemar_p_vs_baseline"] <= 1
    report_html = (tmp_path / "eval" / "report.html").read_text()
    assert report_html.count("<tr") >= 6 and report_html.count("data:image/png;base64") == 3

    report = audit.run(cfg, tmp_path / "eval" / "predictions.parquet", tmp_path / "audit")
    assert {s["slice"].split("=")[0] for s in report.slices} >= {"label", "length"}
    assert (tmp_path / "audit" / "audit.json").is_file()


def _state(folder):
    from distill.models import load_classifier

    return load_classifier(folder).model.state_dict()


def test_a_warm_started_student_continues_from_the_earlier_one(staged, tmp_path):
    cfg, prepared, teacher_dir, _ = staged
    outputs = tmp_path / "logits.parquet"
    label.run(cfg, prepared, teacher_dir, outputs)
    students.run_student(cfg, prepared, teacher_dir, outputs, tmp_path / "first")
    # A learning rate too small to move the weights: what comes out is what went in.
    still = cfg.model_copy(update={"student": cfg.student.model_copy(update={"warm_start": str(tmp_path / "first")}),
                                   "train": cfg.train.model_copy(update={"learning_rate": 1e-12})})
    students.run_student(still, prepared, teacher_dir, outputs, tmp_path / "warm")
    first, warm = _state(tmp_path / "first"), _state(tmp_path / "warm")
    assert all(torch.allclose(first[k], warm[k], atol=1e-6) for k in first)
    card = read_card(tmp_path / "warm")
    assert card["warm_start"]["from"] == str(tmp_path / "first")
    assert card["warm_start"]["fingerprint"] == read_card(tmp_path / "first")["fingerprint"]
    # The baseline is the undistilled reference: it never starts from an earlier student.
    students.run_baseline(still, prepared, teacher_dir, tmp_path / "baseline")
    baseline = _state(tmp_path / "baseline")
    assert not torch.allclose(baseline["classifier.weight"], first["classifier.weight"])


def test_a_warm_start_of_another_shape_or_label_set_is_refused(staged, tmp_path, tiny_teacher):
    cfg, prepared, teacher_dir, _ = staged
    outputs = tmp_path / "logits.parquet"
    label.run(cfg, prepared, teacher_dir, outputs)
    students.run_student(cfg, prepared, teacher_dir, outputs, tmp_path / "first")
    wider = cfg.model_copy(update={"student": cfg.student.model_copy(update={
        "warm_start": str(tmp_path / "first"), "hidden_size": 64})})
    with pytest.raises(ModelError, match=r"shape differs.*hidden_size"):
        students.run_student(wider, prepared, teacher_dir, outputs, tmp_path / "wider")
    assert not (tmp_path / "wider").exists()
    other_labels = tmp_path / "other_labels"
    clf = load_classifier(tmp_path / "first")
    clf.labels = list(reversed(clf.labels))
    clf.model.config.id2label = dict(enumerate(clf.labels))
    clf.model.config.label2id = {name: i for i, name in enumerate(clf.labels)}
    save_classifier(clf, other_labels, {"role": "student"})
    reordered = cfg.model_copy(update={"student": cfg.student.model_copy(update={"warm_start": str(other_labels)})})
    with pytest.raises(ModelError, match="same labels in the same order"):
        students.run_student(reordered, prepared, teacher_dir, outputs, tmp_path / "reordered")
    unfetched = cfg.model_copy(update={"student": cfg.student.model_copy(update={
        "warm_start": "models:/distill-student@champion"})})
    with pytest.raises(ModelError, match="has not been fetched.*distill fetch-teacher"):
        students.run_student(unfetched, prepared, teacher_dir, outputs, tmp_path / "unfetched",
                             imported_dir=tmp_path / "imported_student")
