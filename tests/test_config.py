from pathlib import Path

import pytest
import yaml

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


def test_a_missing_params_file_is_refused_by_name_not_read_as_defaults(tmp_path):
    with pytest.raises(ConfigError, match=r"parms\.yaml: params file not found; .* --params"):
        load_config(tmp_path / "parms.yaml")
    assert load_config(tmp_path / "parms.yaml", missing_ok=True) == PipelineConfig()


def test_heads_must_divide_width():
    with pytest.raises(ConfigError, match="multiple of num_heads"):
        load_config(Path("/nonexistent/params.yaml"), ["student.hidden_size=100", "student.num_heads=3"],
                    missing_ok=True)


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


def test_a_run_records_its_overrides_beside_the_user_params_and_never_writes_them(tmp_path):
    from distill.config import RUN_OVERRIDES, read_run_overrides, run_config, write_run_overrides

    user = "# my settings\ntrain:\n  alpha: 0.5   # chosen by hand\nteacher:\n  path: null\n"
    (tmp_path / "params.yaml").write_text(user)
    cfg = write_run_overrides(tmp_path, ["train.alpha=0.9", "data.path=data/raw/mine.csv"])
    assert (cfg.train.alpha, cfg.data.path) == (0.9, "data/raw/mine.csv")
    assert (tmp_path / "params.yaml").read_text() == user
    assert read_run_overrides(tmp_path) == ["train.alpha=0.9", "data.path=data/raw/mine.csv"]
    assert run_config(tmp_path).train.alpha == 0.9
    write_run_overrides(tmp_path, [])  # the next run without overrides: back to the user's values
    assert run_config(tmp_path).train.alpha == 0.5 and (tmp_path / RUN_OVERRIDES).is_file()


def test_a_bad_run_override_is_refused_before_anything_is_written(tmp_path):
    from distill.config import RUN_OVERRIDES, write_run_overrides

    (tmp_path / "params.yaml").write_text("train:\n  alpha: 0.5\n")
    with pytest.raises(ConfigError, match="train.alpha"):
        write_run_overrides(tmp_path, ["train.alpha=7"])
    assert not (tmp_path / RUN_OVERRIDES).exists()


def test_a_damaged_overrides_file_is_named_with_what_to_do(tmp_path):
    from distill.config import RUN_OVERRIDES, read_run_overrides

    (tmp_path / RUN_OVERRIDES).parent.mkdir()
    (tmp_path / RUN_OVERRIDES).write_text("overrides: {train.alpha: 1}\n")
    with pytest.raises(ConfigError, match="overrides.yaml.*list"):
        read_run_overrides(tmp_path)
    # Settings nested as in params.yaml would be applied as nothing: refused, naming the key.
    (tmp_path / RUN_OVERRIDES).write_text("lm:\n  select:\n    rule: diversity\n")
    with pytest.raises(ConfigError, match="overrides.yaml: holds 'lm' besides the `overrides` list.*--set"):
        read_run_overrides(tmp_path)
    (tmp_path / RUN_OVERRIDES).write_text("# nothing yet\n")
    assert read_run_overrides(tmp_path) == []


def test_the_effective_params_hold_every_key_and_round_trip(tmp_path):
    from distill.config import write_run_params

    (tmp_path / "params.yaml").write_text("train:\n  alpha: 0.5\n")
    (tmp_path / "overrides.yaml").write_text("overrides: ['student.warm_start=models:/s@champion']\n")
    out = tmp_path / "run/params.yaml"
    cfg = write_run_params(tmp_path / "params.yaml", tmp_path / "overrides.yaml", out)
    written = yaml.safe_load(out.read_text())
    assert set(written) == set(PipelineConfig.model_fields)  # DVC finds every key a stage declares
    assert written["student"]["warm_start"] == "models:/s@champion" and written["train"]["alpha"] == 0.5
    assert load_config(out) == cfg
    before = out.stat().st_mtime_ns
    write_run_params(tmp_path / "params.yaml", tmp_path / "overrides.yaml", out)
    assert out.stat().st_mtime_ns == before, "an unchanged file is not rewritten"


def test_a_later_override_replaces_an_earlier_one_for_its_key():
    from distill.config import merge_overrides

    assert merge_overrides(["a.b=1", "c.d=2"], ["a.b=3"]) == ["c.d=2", "a.b=3"]
    assert merge_overrides([], ["x.y=1"]) == ["x.y=1"]


def test_a_section_given_twice_is_refused_with_both_lines(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  alpha: 0.5\nseed: 3\ntrain:\n  epochs: 2\n")
    with pytest.raises(ConfigError, match=r"params.yaml: key 'train' appears twice \(lines 1 and 4\)"):
        load_config(path)
