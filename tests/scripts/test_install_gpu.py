"""scripts/install_gpu.py on this CPU machine: the install plan (one torch, CUDA first, everything constrained to
it), pins, and how the installed versions are checked against them.

No GPU and no PyTorch CUDA index can be reached here, so `install` itself is not run; its plan is checked. The
offline machines' parts: tests/scripts/test_pack_device_wheels.py.
"""

import argparse
import subprocess
import sys
from pathlib import Path

import install_gpu
import pytest

REPO = Path(__file__).resolve().parents[2]


def plan_args(venv: Path, **changes) -> argparse.Namespace:
    defaults = {
        "venv": str(venv),
        "python": sys.executable,
        "cuda": "cu128",
        "torch_index": install_gpu.TORCH_INDEX,
        "ds_ops": "jit",
        "dev": False,
    }
    return argparse.Namespace(**{**defaults, **changes})


def pip_installs(steps) -> list[list[str]]:
    return [s.argv for s in steps if s.argv[1:4] == ["-m", "pip", "install"]]


def test_pins_are_exact_and_constraints_pin_the_same_torch() -> None:
    pins = install_gpu.read_pins(REPO / "requirements.txt")
    constraints = install_gpu.read_pins(REPO / "constraints.txt")
    assert constraints["torch"].version == pins["torch"].version
    assert pins["ray"].requirement == f"ray[default,train]=={pins['ray'].version}"
    dev = install_gpu.read_pins(REPO / "requirements-dev.txt")
    assert "torch" not in dev  # only requirements.txt/constraints.txt name torch


def test_unpinned_requirement_is_rejected_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "requirements.txt"
    bad.write_text("# comment\ntorch==2.13.0\nray>=2.0\n")
    with pytest.raises(SystemExit, match=r"requirements.txt:3: 'ray>=2.0' is not pinned"):
        install_gpu.read_pins(bad)


def test_plan_installs_cuda_torch_first_and_constrains_every_later_install_to_it(tmp_path: Path) -> None:
    steps = install_gpu.online_plan(plan_args(tmp_path / "venv"))
    torch_pin = install_gpu.read_pins(REPO / "requirements.txt")["torch"].requirement
    assert steps[0].argv == [sys.executable, "-m", "venv", str(tmp_path / "venv")]
    installs = pip_installs(steps)
    torch_install = next(i for i, argv in enumerate(installs) if torch_pin in argv)
    assert installs[torch_install][-3:] == ["--index-url", "https://download.pytorch.org/whl/cu128", torch_pin]
    for argv in installs[torch_install + 1 :]:
        # Nothing after the torch step may resolve dependencies without the torch constraint.
        constrained = "-c" in argv and argv[argv.index("-c") + 1] == str(REPO / "constraints.txt")
        assert constrained or "--no-deps" in argv, argv
        assert not any(arg.startswith("torch") for arg in argv), argv
    assert any(["-r", str(REPO / "requirements.txt")] == argv[-2:] for argv in installs)
    deepspeed = next(s for s in steps if any(a.startswith("deepspeed==") for a in s.argv))
    assert deepspeed.env == {"DS_BUILD_OPS": "0"} and "--no-build-isolation" in deepspeed.argv
    assert steps[-1].argv[-4:] == ["verify", "--load-ops", "--json", str(tmp_path / "venv" / "gpu-install.json")]


def test_prebuild_mode_builds_fused_and_cpu_adam_at_install(tmp_path: Path) -> None:
    steps = install_gpu.online_plan(plan_args(tmp_path / "venv", ds_ops="prebuild", torch_index="pypi"))
    deepspeed = next(s for s in steps if any(a.startswith("deepspeed==") for a in s.argv))
    assert deepspeed.env == {"DS_BUILD_OPS": "0", "DS_BUILD_FUSED_ADAM": "1", "DS_BUILD_CPU_ADAM": "1"}
    assert "--no-build-isolation" in deepspeed.argv  # the build must see the CUDA torch, not fetch its own
    torch_step = next(argv for argv in pip_installs(steps) if any(a.startswith("torch==") for a in argv))
    assert "--index-url" not in torch_step  # pypi: PyPI's Linux wheel (the CUDA 12.8 build)


def test_an_existing_cpu_torch_of_the_pinned_version_is_replaced(tmp_path: Path) -> None:
    """This machine's venv holds torch 2.13.0+cpu, which `torch==2.13.0` would accept as installed."""
    venv = Path(sys.executable).parents[1]
    steps = install_gpu.online_plan(plan_args(venv))
    torch_step = next(argv for argv in pip_installs(steps) if any(a.startswith("torch==") for a in argv))
    assert "--force-reinstall" in torch_step and "--no-deps" in torch_step
    assert not any(s.argv[2:3] == ["venv"] for s in steps)  # an existing environment is reused


def test_plan_command_prints_runnable_shell_lines(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "install_gpu.py"), "plan", "--venv", str(tmp_path / "v")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "# 3. CUDA torch" in out and "DS_BUILD_OPS=0 " in out and "verify --load-ops" in out


def test_check_pins_reports_each_pin_and_allows_the_image_its_own_torch() -> None:
    pins = install_gpu.read_pins(REPO / "requirements.txt")
    installed = {name: pin.version for name, pin in pins.items()}
    installed.update(torch="2.11.0+cu130", numpy="2.5.2", transformers="5.17.0", tantivy=None)
    rows = {r["package"]: r["status"] for r in install_gpu.check_pins(pins, installed, image=True, tiers={"bench"})}
    assert rows["torch"] == rows["numpy"] == "image's own"
    assert rows["transformers"] == "differs"
    assert rows["tantivy"] == "not carried yet (rest)"
    assert rows["deepspeed"] == "ok"
    strict = {r["package"]: r["status"] for r in install_gpu.check_pins(pins, installed, image=False)}
    assert strict["torch"] == "differs" and strict["tantivy"] == "missing"
    local = {**installed, "torch": pins["torch"].version + "+cu128"}
    assert {r["package"]: r["status"] for r in install_gpu.check_pins(pins, local, image=False)}["torch"] == "ok"
