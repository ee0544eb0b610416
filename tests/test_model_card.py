"""The model card is pure: dicts in, Markdown out."""

from distill.config import PipelineConfig
from distill import model_card
from distill.model_card import params_hash, render

METRICS = {
    "teacher": {"accuracy": 0.97, "macro_f1": 0.97, "agreement_with_teacher": 1.0, "latency_p50_ms": 11.8,
                "parameters": 22_700_000, "size_mb": 86.7, "accuracy_ci_low": 0.95, "accuracy_ci_high": 0.98},
    "student": {"accuracy": 0.95, "macro_f1": 0.949, "agreement_with_teacher": 0.96, "latency_p50_ms": 2.36,
                "parameters": 4_400_000, "size_mb": 16.7, "ece": 0.031, "kl_to_teacher": 0.12},
}
AUDIT = {"passed": True, "reasons": ["no slice of at least 10 examples drops more than 0.15"],
         "worst": [{"slice": "label=timer", "n": 24, "teacher_accuracy": 1.0, "student_accuracy": 0.875,
                    "drop": 0.125}, {"slice": "label=weather", "n": 24, "teacher_accuracy": 0.9,
                                     "student_accuracy": 0.95, "drop": -0.05}]}


def card(**overrides) -> str:
    params = PipelineConfig().model_dump(mode="json")
    args = dict(name="distill-student", version="7",
                student_card={"method": "hinton-kd", "losses": {"kl": 0.7, "ce": 0.3}, "parameters": 4_400_000,
                              "labels": ["lights_on", "timer", "weather"]},
                teacher={"name": "distill-teacher", "version": "2", "fingerprint": "ab" * 32, "source": "bootstrap"},
                lineage={"git_commit": "c0ffee1", "params_sha256": params_hash(params), "prepared_md5": "11aa.dir",
                         "teacher_outputs_md5": "22bb"},
                params=params, metrics=METRICS, audit=AUDIT,
                decision={"passed": True, "reasons": ["no champion yet: the champion gates ... are skipped"]},
                champion={"version": "6", "accuracy": 0.94, "slices": {}},
                confused=[{"true": "timer", "predicted": "weather", "count": 3, "share_of_true": 0.1}])
    return render(**(args | overrides))


def test_card_has_every_section_and_figure():
    text = card()
    for heading in ("## Intended use", "## Teacher", "## Data snapshot", "## Distillation and hyperparameters",
                    "## Evaluation against the teacher", "## Promotion decision", "## Audit", "## Known failure modes",
                    "## How to reproduce"):
        assert heading in text, heading
    assert "97.9% of the teacher's 0.970" in text and "5.0× the teacher's speed" in text
    assert "| figure | &emsp; | teacher&emsp; | **student**&emsp; | champion v6&emsp; |" in text
    assert "| accuracy |  | 0.970 | 0.950 | 0.940 |" in text and "| accuracy, 95 % CI low |  | 0.950 | – | – |" in text
    assert "| latency p50 (ms, batch 1) |  | 11.80 | 2.36 | – |" in text
    assert "`distill-teacher` v2" in text and "`11aa.dir`" in text and "`22bb`" in text
    assert "`kl` (weight 0.7), `ce` (weight 0.3)" in text and "kd_temperature `4.0` · alpha `0.7`" in text
    assert "`label=timer`" in text and "label=weather" not in text.split("## Known failure modes")[1]
    assert "`label=timer` (n=24): student 0.875, teacher 1.000" in text and "`timer` → `weather`: 3" in text
    assert "git checkout c0ffee1\ndvc pull" in text and "models:/distill-student/7" in text


def test_card_without_optional_parts_still_reads():
    text = card(champion=None, confused=[], audit={"passed": False, "reasons": ["slice x failed"], "worst": []},
                student_card={"labels": ["a", "b"]}, decision={"passed": False, "reasons": ["audit failed"]})
    assert "**Promotion gates: failed.**" in text and "Audit against the teacher: failed" in text
    assert "champion v" not in text and "an unknown method" in text
    assert "No slice is worse than the teacher" in text


def test_params_hash_is_canonical():
    assert params_hash({"a": 1, "b": {"c": 2}}) == params_hash({"b": {"c": 2}, "a": 1})
    assert params_hash({"a": 1}) != params_hash({"a": 2})


def test_losses_as_written_by_the_trainer_read_as_names_and_weights():
    text = card(student_card={"method": "kl", "labels": ["a"], "losses": [
        {"name": "kl", "kind": "kl", "weight": 1.0, "beta": 0.5}, {"name": "hidden", "weight": 0.1}]})
    assert "losses: `kl` (weight 1.0), `hidden` (weight 0.1)." in text and "beta" not in text


def test_a_run_outside_git_says_the_code_version_is_not_recorded():
    text = card(lineage={"git_commit": "unknown"})
    assert "not made from a git commit" in text and "git checkout <commit>" in text


def test_a_compressed_version_says_what_each_step_did_and_shows_the_shape_it_has():
    steps = [{"step": "student", "detail": "the distilled student", "parameters": 4_389_016, "size_mb": 16.74,
              "val_accuracy": 0.990},
             {"step": "feed-forward", "detail": "512 -> 128 neurons per layer", "parameters": 4_191_640,
              "size_mb": 15.99, "val_accuracy": 0.984},
             {"step": "recovery", "detail": "200 distillation steps", "parameters": 4_191_640, "size_mb": 15.99,
              "val_accuracy": 0.984}]
    metrics = METRICS | {"compressed": METRICS["student"] | {"accuracy": 0.948, "parameters": 4_191_640}}
    text = card(student_card={"method": "kl", "parameters": 4_191_640, "labels": ["a", "b"],
                              "student": {"num_layers": 2, "intermediate_size": 128},
                              "compression": {"steps": steps, "skipped": []}},
                metrics=metrics, registered="compressed",
                compression={"passed": True, "reasons": ["the compressed student is registered in the student's "
                                                         "place"]})
    assert "then compressed (feed-forward, recovery)" in text and "scores 0.948 accuracy" in text
    assert "| feed-forward | 512 -> 128 neurons per layer | 4.19 | 16.0 | 0.984 |" in text
    assert "Compression gate: **passed**" in text and "**compressed**" in text
    assert "intermediate_size `128`" in text and "intermediate_size `512`" not in text


def test_an_int8_version_says_it_serves_the_int8_model_and_a_continued_one_says_whence_its_shape():
    int8 = {"step": "INT8 (dynamic)", "detail": "ONNX Runtime's dynamic quantization", "parameters": 4_191_640,
            "size_mb": 4.04, "val_accuracy": 0.984}
    steps = [{"step": "student", "detail": "the distilled student", "parameters": 4_191_640, "size_mb": 15.99,
              "val_accuracy": 0.990}]
    student_card = {"method": "kl", "parameters": 4_191_640, "labels": ["a", "b"],
                    "warm_start": {"from": "models:/distill-student@champion", "compressed": True},
                    "compression": {"steps": steps, "skipped": ["pruning: pruned already"], "int8": int8}}
    metrics = METRICS | {"compressed_int8": METRICS["student"] | {"accuracy": 0.981}}
    text = card(student_card=student_card, metrics=metrics, registered="compressed_int8",
                compression={"passed": True, "reasons": ["its INT8 model (compressed_int8) is registered"]})
    assert ("continuing from a compressed model (its pruned shape), then compressed (INT8 (dynamic))." in text
            and "scores 0.981 accuracy" in text)
    assert "(`compressed_int8` in the evaluation; this version serves it)" in text and "**compressed_int8**" in text
    assert model_card.compression_tag(student_card, True, "int8") == (
        "INT8 (dynamic): 4.19 M -> 4.19 M parameters, 4.0 MB")
    fp32 = card(student_card={**student_card, "warm_start": None}, metrics=metrics, registered="compressed",
                compression={"passed": True, "reasons": []})
    assert "reported, not registered" in fp32 and "continuing from" not in fp32 and "then compressed" not in fp32
