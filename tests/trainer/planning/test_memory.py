"""The planner's memory figures: model states against DeepSpeed's own estimators, activations against what
autograd really keeps on CPU."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import shlex
from pathlib import Path

import pytest
import torch
from deepspeed.runtime.zero.stage3 import (
    estimate_zero3_model_states_mem_needs,
    estimate_zero3_model_states_mem_needs_all_cold,
)
from deepspeed.runtime.zero.stage_1_and_2 import (
    estimate_zero2_model_states_mem_needs,
    estimate_zero2_model_states_mem_needs_all_cold,
)
from transformers import AutoModelForSeq2SeqLM, T5Config

from trainer.models.architecture import T5Architecture
from trainer.objectives.task import token_cross_entropy
from trainer.planning.architecture import resolve_architecture
from trainer.planning.memory import GIB, Workload, ZeroSetup, activation_memory, model_state_memory
from trainer.planning.plan import build_parser, format_table

README = Path(__file__).resolve().parents[3] / "README.md"
TABLE_COMMAND = re.compile(r"^\s*(?:\.venv/bin/)?python -m trainer\.planning\.plan --table(?P<args>.*)$")


def readme_tables() -> list[tuple[list[str], str]]:
    """Each `python -m trainer.planning.plan --table ...` command in README and the markdown table after it."""
    lines = README.read_text().splitlines()
    tables = []
    for index, line in enumerate(lines):
        match = TABLE_COMMAND.match(line)
        if not match:
            continue
        rows = []
        for following in lines[index + 1 :]:
            if following.startswith("|"):
                rows.append(following)
            elif rows:
                break
        tables.append((shlex.split(match["args"]), "\n".join(rows)))
    return tables


def readme_cases() -> list[tuple[str, int, int]]:
    """(preset, GPUs per node, nodes) for every cell of README's preset x GPU-count tables."""
    cases = set()
    for args, table in readme_tables():
        parsed = build_parser().parse_args(["--table", *args])
        presets = [row.split("|")[1].strip() for row in table.splitlines()[2:]]
        for name in presets:
            for count in parsed.gpus:
                per_node = min(count, parsed.gpus_per_node)
                cases.add((name, per_node, count // per_node))
    return sorted(cases)


def test_readme_has_preset_tables() -> None:
    tables = readme_tables()
    assert tables, "README.md has no `python -m trainer.planning.plan --table` command with its table"
    assert len(readme_cases()) >= 12 * 5


def test_readme_tables_are_the_commands_output() -> None:
    for args, table in readme_tables():
        parsed = build_parser().parse_args(["--table", *args])
        work = Workload(parsed.micro_batch, parsed.input_length, parsed.target_length)
        expected = format_table(
            parsed.gpus, parsed.gpus_per_node, parsed.gpu_memory_gib, parsed.node_memory_gib, parsed.precision, work
        )
        assert table == expected, f"README table for `--table {' '.join(args)}` is stale; re-run the command"


def _deepspeed_printed(function, **kwargs) -> dict[str, tuple[float, float]]:
    """The `..._all_cold` table DeepSpeed prints: options -> (GiB per CPU, GiB per GPU)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        function(**kwargs)
    rows = {}
    for line in out.getvalue().splitlines():
        match = re.match(r"\s*([\d.]+)GB \|\s*([\d.]+)GB \| (.*)$", line)
        if match:
            rows[match[3].replace(" ", "")] = (float(match[1]), float(match[2]))
    return rows


def _close(ours: int, theirs: float, printed: bool = False) -> bool:
    # The printed tables round to 0.01 GB; allow half of that beyond the 5% for the smallest figures.
    slack = 0.005 * GIB if printed else 0
    return abs(ours - theirs) <= 0.05 * theirs + slack


@pytest.mark.parametrize(("name", "per_node", "nodes"), readme_cases())
def test_model_states_match_deepspeed_estimators(name: str, per_node: int, nodes: int) -> None:
    arch = resolve_architecture(name)
    p, largest = arch.num_parameters, arch.largest_layer_parameters

    def ours(setup: ZeroSetup):
        return model_state_memory(p, largest, setup, "bf16", per_node, nodes)

    for offload in (False, True):
        cpu, gpu = estimate_zero2_model_states_mem_needs(p, per_node, nodes, cpu_offload=offload)
        planned = ours(ZeroSetup(2, offload_optimizer=offload))
        assert _close(planned.gpu_bytes, gpu) and _close(planned.cpu_bytes, cpu), (name, "zero2", offload)
    for offload_optimizer, offload_param in ((False, False), (True, False), (True, True)):
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            p, largest, per_node, nodes, cpu_offload=offload_optimizer, cpu_offload_params=offload_param, zero_init=True
        )
        planned = ours(ZeroSetup(3, offload_optimizer, offload_param))
        assert _close(planned.gpu_bytes, gpu) and _close(planned.cpu_bytes, cpu), (name, "zero3", offload_param)

    printed2 = _deepspeed_printed(
        estimate_zero2_model_states_mem_needs_all_cold, total_params=p, num_gpus_per_node=per_node, num_nodes=nodes
    )
    cpu, gpu = printed2["offload_optimizer=none"]
    planned = ours(ZeroSetup(2))
    assert _close(planned.gpu_bytes, gpu * GIB, printed=True) and _close(planned.cpu_bytes, cpu * GIB, printed=True)
    printed3 = _deepspeed_printed(
        estimate_zero3_model_states_mem_needs_all_cold,
        total_params=p,
        largest_layer_params=largest,
        num_gpus_per_node=per_node,
        num_nodes=nodes,
    )
    cpu, gpu = printed3["offload_param=none,offload_optimizer=none,zero_init=1"]
    planned = ours(ZeroSetup(3))
    assert _close(planned.gpu_bytes, gpu * GIB, printed=True) and _close(planned.cpu_bytes, cpu * GIB, printed=True)


def test_issue_examples() -> None:
    """T5-3B: ZeRO-3 on 4 GPUs ~12.1 GiB (bf16, DeepSpeed's figure); ZeRO-2 on 8 ~15.9 GiB, which is the fp32
    figure (4-byte working parameters: 4P + 16P/8); DeepSpeed's bf16 ZeRO-2 figure on 8 is 11.3 GiB."""
    arch = resolve_architecture("t5-3b")
    p, largest = arch.num_parameters, arch.largest_layer_parameters
    assert model_state_memory(p, largest, ZeroSetup(3), "bf16", 4, 1).gpu_bytes / GIB == pytest.approx(12.07, abs=0.01)
    assert model_state_memory(p, largest, ZeroSetup(2), "fp32", 8, 1).gpu_bytes / GIB == pytest.approx(15.93, abs=0.01)
    assert model_state_memory(p, largest, ZeroSetup(2), "bf16", 8, 1).gpu_bytes / GIB == pytest.approx(11.29, abs=0.01)


def _saved_bytes(arch: T5Architecture, work: Workload, dtype: torch.dtype) -> int:
    """Bytes of every distinct tensor autograd keeps for backward (parameters excluded), plus the logits."""
    config = T5Config(
        vocab_size=arch.vocab_size,
        d_model=arch.d_model,
        d_ff=arch.d_ff,
        num_layers=arch.num_layers,
        num_decoder_layers=arch.num_decoder_layers,
        num_heads=arch.num_heads,
        d_kv=arch.d_kv,
        feed_forward_proj=arch.feed_forward_proj,
        dropout_rate=arch.dropout_rate,
        decoder_start_token_id=0,
    )
    torch.manual_seed(0)
    model = AutoModelForSeq2SeqLM.from_config(config).to(dtype).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    inputs = torch.randint(3, 1000, (work.micro_batch_size, work.source_length))
    targets = torch.randint(3, 1000, (work.micro_batch_size, work.target_length))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logits = model(input_ids=inputs, attention_mask=torch.ones_like(inputs), decoder_input_ids=targets).logits
        token_cross_entropy(logits, targets)
    kept.setdefault(logits.untyped_storage().data_ptr(), logits.untyped_storage().nbytes())
    return sum(kept.values())


SMALL = T5Architecture(512, 2048, 2, 2, 8, 64, "relu", tie_word_embeddings=True, name="t5-small-2l")


@pytest.mark.parametrize(
    "arch",
    [
        SMALL,
        dataclasses.replace(SMALL, dropout_rate=0.0),
        dataclasses.replace(SMALL, feed_forward_proj="gated-gelu", d_ff=1024, num_heads=6),
    ],
    ids=["relu", "relu-no-dropout", "gated-gelu"],
)
@pytest.mark.parametrize(("precision", "dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_activation_estimate_matches_what_autograd_keeps(arch: T5Architecture, precision: str, dtype) -> None:
    work = Workload(micro_batch_size=4, source_length=128, target_length=32)
    estimated = activation_memory(arch, work, precision, kernel="math").total_bytes
    measured = _saved_bytes(arch, work, dtype)
    assert estimated == pytest.approx(measured, rel=0.08)


def test_checkpointing_keeps_block_inputs_only() -> None:
    arch = resolve_architecture("t5-large")
    work = Workload(8, 512, 128)
    full = activation_memory(arch, work, "bf16")
    checkpointed = activation_memory(arch, work, "bf16", gradient_checkpointing=True)
    assert checkpointed.total_bytes < full.total_bytes / 5
    assert checkpointed.output_bytes == full.output_bytes  # logits and cross-entropy are never recomputed
