import json
from pathlib import Path

import pytest

from trainer.config.loader import load_config
from trainer.strategy.ds_config import (
    DS_CONFIG_DIR,
    MAX_BUCKET_ELEMENTS,
    DeepSpeedConfigError,
    ResolveContext,
    assert_no_auto,
    load_template,
    resolve_inference_config,
    resolve_training_config,
    size_buckets,
    zero_bucket_elements,
)

CTX = ResolveContext(world_size=4, hidden_size=64, on_gpu=False)
TINY_MODEL_PARAMETERS = 529_411


def resolve(*overrides: str, ctx: ResolveContext = CTX, parameters: int = TINY_MODEL_PARAMETERS) -> dict:
    cfg = load_config(overrides=list(overrides))
    template, _ = load_template(cfg.ds.template)
    return size_buckets(resolve_training_config(template, cfg.ds, cfg.optim, ctx), parameters)


@pytest.mark.parametrize("name", ["zero0", "zero1", "zero2", "zero3"])
def test_every_template_resolves_without_auto(name: str) -> None:
    config = resolve(f"ds.template={name}", "optim.micro_batch_size=3", "optim.gradient_accumulation_steps=2")
    assert_no_auto(config)
    assert config["train_micro_batch_size_per_gpu"] == 3
    assert config["gradient_accumulation_steps"] == 2
    assert config["train_batch_size"] == 3 * 2 * 4
    assert config["zero_optimization"]["stage"] == int(name[-1])
    assert config["optimizer"]["params"]["torch_adam"] is True  # no CUDA kernels on CPU
    assert config["scheduler"]["params"]["total_num_steps"] == 100
    assert "fp16" not in config


def test_all_shipped_templates_are_valid_json() -> None:
    for path in DS_CONFIG_DIR.glob("*.json"):
        json.loads(path.read_text())


def test_buckets_hold_the_whole_model_up_to_the_cap() -> None:
    for name in ("zero1", "zero2"):
        zero = resolve(f"ds.template={name}")["zero_optimization"]
        # One reduce and one all-gather per step: the bucket holds every trainable parameter (rounded up to even).
        assert zero["reduce_bucket_size"] == zero["allgather_bucket_size"] == TINY_MODEL_PARAMETERS + 1
    t5_3b = resolve("ds.template=zero2", parameters=2_851_598_336)["zero_optimization"]
    assert t5_3b["reduce_bucket_size"] == t5_3b["allgather_bucket_size"] == MAX_BUCKET_ELEMENTS
    assert [zero_bucket_elements(n) for n in (0, 1, 2, 7)] == [2, 2, 2, 8]


def test_training_config_leaves_only_bucket_sizes_for_the_model() -> None:
    cfg = load_config(overrides=["ds.template=zero2"])
    template, _ = load_template(cfg.ds.template)
    before_model = resolve_training_config(template, cfg.ds, cfg.optim, CTX)
    assert before_model["zero_optimization"]["reduce_bucket_size"] == "auto"
    with pytest.raises(DeepSpeedConfigError, match="reduce_bucket_size"):
        assert_no_auto(before_model)
    assert_no_auto(size_buckets(before_model, 1000))


def test_zero3_prefetch_and_persistence_follow_hidden_size() -> None:
    zero = resolve("ds.template=zero3")["zero_optimization"]
    assert zero["reduce_bucket_size"] == TINY_MODEL_PARAMETERS + 1
    assert zero["stage3_prefetch_bucket_size"] == int(0.9 * 64 * 64)
    assert zero["stage3_param_persistence_threshold"] == 640
    assert "allgather_bucket_size" not in zero
    assert "offload_param" not in zero and "offload_optimizer" not in zero


def test_zero_stage_alone_runs_its_template_with_its_stage3_settings() -> None:
    zero = resolve("ds.zero_stage=3")["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True  # zero3.json's; zero2.json has none
    assert zero["stage3_max_live_parameters"] == 1_000_000_000


def test_a_template_without_a_stage_takes_ds_zero_stage_and_drops_other_stages_keys(tmp_path: Path) -> None:
    template, _ = load_template("zero3")
    del template["zero_optimization"]["stage"]
    path = tmp_path / "stageless.json"
    path.write_text(json.dumps(template))
    zero = resolve(f"ds.template={path}", "ds.zero_stage=2")["zero_optimization"]
    assert zero["stage"] == 2
    assert not [k for k in zero if k.startswith("stage3_")]


def test_a_json_template_whose_stage_contradicts_ds_zero_stage_fails_naming_both(tmp_path: Path) -> None:
    template, _ = load_template("zero2")
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(template))
    assert resolve(f"ds.template={path}", "ds.zero_stage=2")["zero_optimization"]["stage"] == 2  # agreeing: fine
    with pytest.raises(DeepSpeedConfigError, match=rf"ds.zero_stage=3 contradicts ds.template={path} \(stage 2\)"):
        resolve(f"ds.template={path}", "ds.zero_stage=3")


def test_precision_and_offload() -> None:
    config = resolve("ds.template=zero3", "ds.precision=bf16", "ds.offload_optimizer=true", "ds.offload_param=true")
    assert config["bf16"]["enabled"] is True
    assert config["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": False}
    assert config["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert "torch_adam" not in config["optimizer"]["params"]  # offload uses DeepSpeedCPUAdam


def test_gpu_context_keeps_fused_adam_and_overlap() -> None:
    config = resolve("ds.template=zero2", ctx=ResolveContext(world_size=8, hidden_size=512, on_gpu=True))
    assert "torch_adam" not in config["optimizer"]["params"]
    assert config["zero_optimization"]["overlap_comm"] is True


def test_explicit_template_values_win(tmp_path: Path) -> None:
    template, _ = load_template("zero2")
    template["gradient_clipping"] = 0.25
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(template))
    assert resolve(f"ds.template={path}")["gradient_clipping"] == 0.25


def test_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(DeepSpeedConfigError, match="ds.template: 'zero9' not found.*zero2"):
        resolve("ds.template=zero9")
    fp16 = tmp_path / "fp16.json"
    fp16.write_text(json.dumps({"fp16": {"enabled": True}}))
    with pytest.raises(DeepSpeedConfigError, match="fp16 is not supported"):
        resolve(f"ds.template={fp16}")
    unknown_auto = tmp_path / "auto.json"
    unknown_auto.write_text(json.dumps({"zero_optimization": {"stage": 2, "sub_group_size": "auto"}}))
    with pytest.raises(DeepSpeedConfigError, match="'zero_optimization.sub_group_size' is still 'auto'"):
        resolve(f"ds.template={unknown_auto}")
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "a": 1,\n}')
    with pytest.raises(DeepSpeedConfigError, match=f"{broken}:3: invalid JSON"):
        resolve(f"ds.template={broken}")


def test_inference_config_is_zero3_without_optimizer() -> None:
    cfg = load_config(overrides=["ds.precision=bf16"])
    template, _ = load_template("zero3_inference")
    config = resolve_inference_config(template, cfg.ds, 8, CTX)
    assert config["zero_optimization"]["stage"] == 3
    assert "optimizer" not in config and config["bf16"]["enabled"] is True
    assert_no_auto(config)
