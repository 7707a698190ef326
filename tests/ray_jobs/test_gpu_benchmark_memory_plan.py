"""The GPU benchmark's memory-vs-plan check, on a results.json fixture (tests/ray_jobs/data/gpu_results.json,
hand-made measurements of an H100 run): every DeepSpeed case's measured peak allocated memory over the memory
planner's figure for the same config, in the table, results.json and the targets."""

import json
from pathlib import Path

import pytest

from ray_jobs.benchmarks.gpu_cases import StepCase
from ray_jobs.benchmarks.gpu_report import (
    add_memory_plan,
    add_utilisation,
    case_row,
    comparisons,
    render_markdown,
    resolve_peak,
)
from trainer.config.loader import load_config
from trainer.planning.from_config import estimate_for_config
from trainer.planning.memory import GIB

FIXTURE = Path(__file__).parent / "data" / "gpu_results.json"


@pytest.fixture
def summary() -> dict:
    summary = json.loads(FIXTURE.read_text())
    summary["peak"] = resolve_peak(summary["device"], None)
    for result in summary["cases"].values():
        add_utilisation(result, summary["peak"])
        add_memory_plan(result)
    summary["comparisons"] = comparisons(summary)
    return summary


def _by_case(summary: dict, **fields: object) -> dict:
    (result,) = [r for r in summary["cases"].values() if all(r["case"][k] == v for k, v in fields.items())]
    return result


def test_each_deepspeed_case_is_compared_with_the_planners_figure_for_its_config(summary: dict) -> None:
    for result in summary["cases"].values():
        case = StepCase(**result["case"])
        if case.engine == "plain":  # the planner models DeepSpeed runs only
            assert result["planned_memory_gib"] is None and result["peak_over_plan"] is None
            continue
        est = estimate_for_config(load_config(overrides=case.config_overrides()))
        assert est.setup.zero_stage == int(case.template[-1]) and est.setup.offload_optimizer == case.offload_optimizer
        planned = (est.model_states.gpu_bytes + est.activations.total_bytes + est.teacher_states_bytes) / GIB
        assert result["planned_memory_gib"] == pytest.approx(planned)
        if result["status"] == "ok":
            assert result["peak_over_plan"] == pytest.approx(result["peak_memory_allocated_gib"] / planned)
        else:  # out of memory: its peak is where it failed, not a measurement of the plan
            assert result["peak_over_plan"] is None
    knife = _by_case(summary, method="knife_student")
    assert knife["planned_memory_gib"] > _plan_without_teacher(StepCase(**knife["case"]))


def _plan_without_teacher(case: StepCase) -> float:
    est = estimate_for_config(load_config(overrides=case.config_overrides()))
    return (est.model_states.gpu_bytes + est.activations.total_bytes) / GIB


def test_the_target_names_the_worst_case_and_the_report_shows_every_ratio(summary: dict) -> None:
    target = summary["comparisons"]["targets"]["memory_within_plan"]
    offload = _by_case(summary, offload_optimizer=True)
    assert target["key"] == offload["key"] and target["worst"] == pytest.approx(offload["peak_over_plan"])
    assert target["worst"] > 1.10 and target["met"] is False and target["cases"] == 3  # zero2, offload, knife
    markdown = render_markdown(summary)
    zero2 = _by_case(summary, engine="deepspeed", template="zero2", method="ft_io", micro_batch_size=8)
    row = case_row(zero2)
    assert f"| {zero2['planned_memory_gib']:.2f} | {zero2['peak_over_plan']:.2f} | ok |" in row and row in markdown
    assert "| plan GiB | peak / plan | status |" in markdown
    assert (
        f"- Peak memory within 10% of the memory plan: not met (worst peak / plan {target['worst']:.2f}, "
        f"`{offload['key']}`, of 3 GPU case(s))." in markdown
    )
    header, rule = next(
        (line, following)
        for line, following in zip(markdown.splitlines(), markdown.splitlines()[1:], strict=False)
        if line.startswith("| model |")
    )
    assert header.count("|") == rule.count("|")


def test_without_a_gpu_measurement_the_target_is_not_measured(summary: dict) -> None:
    for result in summary["cases"].values():
        result["peak_memory_allocated_gib"] = None  # a CPU run: torch.cuda has no peak
        add_memory_plan(result)
    target = comparisons(summary)["targets"]["memory_within_plan"]
    assert target["met"] is None and target["key"] is None
    summary["comparisons"]["targets"]["memory_within_plan"] = target
    assert "memory plan: not measured (no GPU case with a planned figure ran)." in render_markdown(summary)
