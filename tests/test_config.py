from pathlib import Path

import pytest

from distill.config import ConfigError, PipelineConfig, apply_overrides, load_config, write_overrides

ROOT = Path(__file__).resolve().parents[1]


def test_params_yaml_matches_the_typed_defaults():
    # params.yaml holds every tunable value; the model's defaults mirror it.
    assert load_config(ROOT / "params.yaml") == PipelineConfig()


def test_unknown_key_is_named(tmp_path):
    (tmp_path / "params.yaml").write_text("train:\n  temperature: 4\n")
    with pytest.raises(ConfigError, match=r"train\.temperature: unknown key"):
        load_config(tmp_path / "params.yaml")


def test_out_of_range_value_is_named(tmp_path):
    (tmp_path / "params.yaml").write_text("train:\n  alpha: 1.5\n")
    with pytest.raises(ConfigError, match=r"train\.alpha"):
        load_config(tmp_path / "params.yaml")


def test_heads_must_divide_width():
    with pytest.raises(ConfigError, match="multiple of num_heads"):
        load_config(Path("/nonexistent/params.yaml"), ["student.hidden_size=100", "student.num_heads=3"])


def test_override_sets_nested_values_with_yaml_types():
    merged = apply_overrides({"train": {"alpha": 0.7}}, ["train.alpha=0.5", "data.path=x.csv", "seed=7"])
    assert merged == {"train": {"alpha": 0.5}, "data": {"path": "x.csv"}, "seed": 7}


def test_malformed_override_is_refused():
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides({}, ["train.alpha"])


def test_write_overrides_keeps_comments_and_refuses_bad_values(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("# top comment\ntrain:\n  alpha: 0.7  # mix\n")
    assert write_overrides(params, ["train.alpha=0.5"]) is True
    text = params.read_text()
    assert "# top comment" in text and "# mix" in text and "alpha: 0.5" in text
    assert write_overrides(params, ["train.alpha=0.5"]) is False
    with pytest.raises(ConfigError):
        write_overrides(params, ["train.alpha=2"])
    assert "alpha: 0.5" in params.read_text()
