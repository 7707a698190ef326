from pathlib import Path

import pytest

from trainer.config.loader import ConfigError, flatten, load_config, split_config_args, with_overrides


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_yaml_then_dotted_overrides_with_typed_values(tmp_path: Path) -> None:
    path = write(tmp_path, "method:\n  name: ft_iro\nds:\n  precision: bf16\noptim:\n  lr: 0.01\n")
    cfg = load_config(path, ["ds.zero_stage=3", "optim.max_steps=7"])
    assert cfg.method.name == "ft_iro"
    assert cfg.ds.zero_stage == 3 and cfg.ds.template == "zero3" and cfg.ds.precision == "bf16"
    assert cfg.optim.max_steps == 7 and cfg.optim.lr == 0.01


def test_nested_override_and_list_values() -> None:
    cfg = load_config(
        overrides=["method.name=knife_student", "method.knife.encoder_layers=[0, -1]", "method.knife.lambda_in=0.5"]
    )
    assert cfg.method.knife.encoder_layers == [0, -1]
    assert cfg.method.knife.lambda_in == 0.5


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"optim\.learning_rate: unknown key") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_wrong_type_names_field_and_value() -> None:
    with pytest.raises(ConfigError, match=r"optim\.max_steps: .*'many'"):
        load_config(overrides=["optim.max_steps=many"])


def test_out_of_range_and_bad_choice() -> None:
    with pytest.raises(ConfigError, match=r"data\.train_fraction"):
        load_config(overrides=["data.train_fraction=1.5"])
    with pytest.raises(ConfigError, match=r"ds\.precision"):
        load_config(overrides=["ds.precision=fp16"])


def test_missing_file_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(write(tmp_path, "optim: [unclosed\n"))


def test_malformed_override() -> None:
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(overrides=["optim.lr"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(overrides=["optim.lr=1", "optim.lr.x=2"])


def test_offload_param_needs_zero3() -> None:
    with pytest.raises(ConfigError, match="offload_param needs ds.zero_stage=3"):
        load_config(overrides=["ds.zero_stage=2", "ds.offload_param=true"])


def test_one_setting_decides_the_zero_stage(tmp_path: Path) -> None:
    """ds.zero_stage alone picks zero{N}; a template alone keeps its own; both must agree, also after a round trip
    through the JSON a Ray worker receives."""
    assert load_config().ds.template == "zero2" and load_config().ds.zero_stage is None
    for stage in (0, 1, 2, 3):
        cfg = load_config(overrides=[f"ds.zero_stage={stage}"])
        assert cfg.ds.template == f"zero{stage}"
        assert type(cfg).model_validate(cfg.model_dump(mode="json")) == cfg
    assert load_config(overrides=["ds.template=zero3", "ds.zero_stage=3"]).ds.template == "zero3"
    assert load_config(overrides=["ds.zero_stage=auto"]).ds.template == "zero2"  # the planner picks it later
    path = write(tmp_path, "ds:\n  template: zero2\n")
    with pytest.raises(ConfigError, match=r"ds.zero_stage=3 contradicts ds.template=zero2 \(stage 2\)"):
        load_config(path, ["ds.zero_stage=3"])
    with pytest.raises(ConfigError, match=r"ds.zero_stage=1 contradicts ds.template=zero3"):
        load_config(overrides=["ds.zero_stage=1", "ds.template=zero3"])


def test_flatten_gives_dotted_params() -> None:
    flat = flatten(load_config(overrides=["optim.lr=0.5", "method.name=knife_student"]))
    assert flat["optim.lr"] == "0.5"
    assert flat["method.knife.lambda_in"] == "1.0"


def test_method_section_is_the_named_methods_own() -> None:
    """Only the named method's knobs are accepted, and errors name the field under `method`."""
    with pytest.raises(ConfigError, match=r"method\.knife: unknown key"):
        load_config(overrides=["method.name=ft_io", "method.knife.lambda_in=0.5"])
    with pytest.raises(ConfigError, match=r"method\.knife\.lambda_in: Input should be greater than or equal to 0"):
        load_config(overrides=["method.name=knife_student", "method.knife.lambda_in=-1"])
    with pytest.raises(ConfigError, match="'t5_magic' is not a registered method; known: ft_io, "):
        load_config(overrides=["method.name=t5_magic"])
    assert "method.knife.lambda_in" not in flatten(load_config())


def test_with_overrides_switches_the_method_section() -> None:
    cfg = load_config(overrides=["optim.lr=0.5"])
    cfg = with_overrides(cfg, "method.name=knife_student", "method.knife.lambda_in=2")
    assert type(cfg.method).__name__ == "KnifeStudentSection" and cfg.method.knife.lambda_in == 2.0
    assert cfg.optim.lr == 0.5


def test_split_config_args() -> None:
    assert split_config_args(["a.yaml", "x.y=1"]) == ("a.yaml", ["x.y=1"])
    assert split_config_args(["x.y=1"]) == (None, ["x.y=1"])
    assert split_config_args([]) == (None, [])
