"""The planner's choices, `ds.zero_stage=auto` resolution, and the plan CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.config.loader import ConfigError, load_config
from trainer.config.schema import DeepSpeedConfig, OptimConfig
from trainer.planning.architecture import ArchitectureError, resolve_architecture
from trainer.planning.from_config import plan_for_config, resolve_auto_zero, workload
from trainer.planning.memory import GIB, Workload, ZeroSetup
from trainer.planning.plan import main
from trainer.planning.planner import Hardware, PlanRequest, Teacher, make_plan
from trainer.strategy.ds_config import DeepSpeedConfigError, ResolveContext, load_template, resolve_training_config

WORK = Workload(8, 512, 128)


def chosen(model: str, gpus: int, gpu_gib: float, node_gib: float = 512, work: Workload = WORK) -> ZeroSetup | None:
    hardware = Hardware(min(gpus, 8), max(1, gpus // 8), gpu_gib, node_gib)
    plan = make_plan(PlanRequest(resolve_architecture(model), hardware, "bf16", work))
    return plan.chosen.setup if plan.chosen else None


def test_small_models_take_plain_zero2() -> None:
    assert chosen("t5-base", 1, 24) == ZeroSetup(2)


def test_three_billion_on_one_80gb_gpu_needs_checkpointing() -> None:
    assert chosen("t5-3b", 1, 80) == ZeroSetup(2, gradient_checkpointing=True)
    assert chosen("t5-3b", 8, 80) == ZeroSetup(2)


def test_three_billion_on_small_gpus_offloads_the_optimizer() -> None:
    setup = chosen("t5-3b", 2, 24, node_gib=192)
    assert setup is not None and setup.offload_optimizer and setup.gradient_checkpointing


def test_host_memory_limits_offload() -> None:
    """ZeRO-2 offload keeps the optimizer on the host: a small node rules it out, parameter offload follows."""
    assert chosen("t5-3b", 1, 16, node_gib=32) is None
    plan = make_plan(PlanRequest(resolve_architecture("t5-3b"), Hardware(1, 1, 16, 32), "bf16", Workload(1, 64, 16)))
    assert all(not e.fits for e in plan.estimates if e.setup.offload_optimizer)


def test_nothing_fits() -> None:
    assert chosen("t5-3b", 1, 4, node_gib=16, work=Workload(64, 2048, 512)) is None


def test_required_flags_stay_on() -> None:
    request = PlanRequest(
        resolve_architecture("t5-small"), Hardware(8, 1, 80, 512), "bf16", WORK, required=ZeroSetup(0, True, True)
    )
    plan = make_plan(request)
    assert all(e.setup.offload_param and e.setup.zero_stage == 3 for e in plan.estimates)


def test_teacher_adds_its_weights_and_outputs() -> None:
    arch = resolve_architecture("t5-large")
    hardware = Hardware(4, 1, 80, 512)
    alone = make_plan(PlanRequest(arch, hardware, "bf16", WORK)).estimates[0]
    teacher = Teacher(arch, Workload(8, 1024, 128), zero_stage=0)
    with_teacher = make_plan(PlanRequest(arch, hardware, "bf16", WORK, teacher)).estimates[0]
    assert with_teacher.teacher_states_bytes == 2 * arch.num_parameters  # replicated bf16 weights
    assert with_teacher.activations.teacher_bytes > 0
    assert with_teacher.device_bytes > alone.device_bytes + with_teacher.teacher_states_bytes
    partitioned = make_plan(PlanRequest(arch, hardware, "bf16", WORK, Teacher(arch, teacher.work, 3))).estimates[0]
    assert partitioned.teacher_states_bytes < with_teacher.teacher_states_bytes / 3


def test_unknown_models_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ArchitectureError, match="neither a preset"):
        resolve_architecture("runs:/abc/model")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bart", "d_model": 8}))
    with pytest.raises(ArchitectureError, match="not a T5"):
        resolve_architecture(str(tmp_path))
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "t5",
                "d_model": 512,
                "d_ff": 1024,
                "num_layers": 8,
                "num_heads": 6,
                "d_kv": 64,
                "feed_forward_proj": "gated-gelu",
                "tie_word_embeddings": False,
                "vocab_size": 32128,
            }
        )
    )
    assert resolve_architecture(str(tmp_path)).num_parameters == 76_961_152
    assert resolve_architecture("google/flan-t5-small").num_parameters == 76_961_152


def gpu_config(*overrides: str):
    return load_config(
        overrides=[
            "model.name=t5-3b",
            "run.use_gpu=true",
            "run.num_workers=4",
            "ds.precision=bf16",
            "optim.micro_batch_size=8",
            "data.max_input_length=512",
            "data.max_target_length=128",
            *overrides,
        ]
    )


def test_auto_resolves_stage_template_and_checkpointing(capsys) -> None:
    cfg = resolve_auto_zero(gpu_config("ds.zero_stage=auto", "cluster.gpu_memory_gib=40"))
    assert (cfg.ds.zero_stage, cfg.ds.template, cfg.model.gradient_checkpointing) == (2, "zero2", True)
    assert "ds.zero_stage=auto -> ZeRO-2 + gradient checkpointing" in capsys.readouterr().err
    cfg = resolve_auto_zero(gpu_config("ds.zero_stage=auto", "cluster.gpu_memory_gib=24", "run.num_workers=8"))
    assert cfg.ds.zero_stage == 2 and cfg.model.gradient_checkpointing
    cfg = resolve_auto_zero(gpu_config("ds.zero_stage=auto", "ds.offload_param=true"))
    assert (cfg.ds.zero_stage, cfg.ds.template, cfg.ds.offload_param) == (3, "zero3", True)


def test_auto_keeps_a_custom_template_and_leaves_other_configs_alone(tmp_path: Path) -> None:
    custom = tmp_path / "mine.json"
    custom.write_text("{}")
    cfg = resolve_auto_zero(gpu_config("ds.zero_stage=auto", f"ds.template={custom}"))
    assert cfg.ds.template == str(custom) and cfg.ds.zero_stage == 2
    explicit = gpu_config("ds.zero_stage=3")
    assert resolve_auto_zero(explicit) is explicit


def test_auto_with_a_template_fixing_another_stage_fails_at_submission(tmp_path: Path) -> None:
    stage3 = tmp_path / "stage3.json"
    stage3.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    with pytest.raises(ConfigError, match=rf"auto chose ZeRO-2.*ds.zero_stage=2 contradicts ds.template={stage3}"):
        resolve_auto_zero(gpu_config("ds.zero_stage=auto", f"ds.template={stage3}"))


def test_auto_that_fits_nowhere_names_what_to_change() -> None:
    cfg = gpu_config(
        "ds.zero_stage=auto", "cluster.gpu_memory_gib=4", "cluster.node_memory_gib=16", "run.num_workers=1"
    )
    with pytest.raises(ConfigError, match="does not fit .* lower optim.micro_batch_size"):
        resolve_auto_zero(cfg)


def test_auto_needs_an_architecture_it_can_read() -> None:
    with pytest.raises(ConfigError, match="model.name: .*runs:/x/model"):
        resolve_auto_zero(load_config(overrides=["model.name=runs:/x/model", "ds.zero_stage=auto"]))


def test_gpu_workers_must_fill_nodes() -> None:
    with pytest.raises(ConfigError, match="run.num_workers=12 is not a multiple of cluster.gpus_per_node=8"):
        plan_for_config(gpu_config("run.num_workers=12"))


def test_cpu_runs_plan_per_worker_without_offload() -> None:
    cfg = load_config(overrides=["model.name=t5-small", "ds.zero_stage=auto", "cluster.node_memory_gib=8"])
    plan = plan_for_config(cfg)
    assert plan.request.kernel == "math" and not any(e.setup.offload_optimizer for e in plan.estimates)
    assert resolve_auto_zero(cfg).ds.zero_stage == 2


def test_workloads_follow_the_method() -> None:
    base = ["data.max_input_length=100", "data.max_rationale_length=60", "data.max_target_length=10"]
    assert workload(load_config(overrides=[*base, "method.name=ft_io"])) == Workload(8, 100, 10)
    assert workload(load_config(overrides=[*base, "method.name=ft_iro"])) == Workload(8, 100, 70)
    assert workload(load_config(overrides=[*base, "method.name=knife_teacher"])) == Workload(8, 160, 10)
    student = plan_for_config(load_config(overrides=[*base, "method.name=knife_student", "model.name=t5-base"]))
    assert student.request.teacher is not None and student.request.teacher.work.source_length == 160


def test_unresolved_auto_never_reaches_deepspeed() -> None:
    template, _ = load_template("zero2")
    with pytest.raises(DeepSpeedConfigError, match="ds.zero_stage=auto is resolved by the memory planner"):
        resolve_training_config(
            template, DeepSpeedConfig(zero_stage="auto"), OptimConfig(), ResolveContext(2, 64, on_gpu=False)
        )


def test_cli_prints_the_plan_and_json(capsys) -> None:
    assert main(["--model", "t5-3b", "--gpus-per-node", "4", "--gpu-memory-gib", "80"]) == 0
    out = capsys.readouterr().out
    assert "plan: ZeRO-2" in out and "2,851,598,336 parameters" in out
    assert main(["--model", "t5-3b", "--gpus-per-node", "4", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    zero3 = next(c for c in data["candidates"] if c["setup"] == ZeroSetup(3).__dict__)
    assert zero3["model_states_gib"] == pytest.approx(18 * 2_851_598_336 / 4 / GIB + 4 * 32_899_072 / GIB)
    assert main(["--model", "t5-3b", "--gpus-per-node", "1", "--gpu-memory-gib", "8", "--node-memory-gib", "8"]) == 1
    assert "NOTHING FITS" in capsys.readouterr().out
    assert main(["--model", "nope"]) == 2


def test_cli_plans_a_config_with_a_teacher(capsys) -> None:
    assert main(["--config", "ray_jobs/configs/demo.yaml", "method.name=knife_student", "model.name=t5-base"]) == 0
    out = capsys.readouterr().out
    assert "frozen KNIFE teacher t5-base (ZeRO-3)" in out and "teacher weights" in out
