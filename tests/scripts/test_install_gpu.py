"""scripts/install_gpu.py on this CPU machine: the install plan (one torch, CUDA first, everything constrained to
it), pins, what travels to the lent offline GPU machines, and the carry-and-install round trip of wheel parts.

No GPU and no PyTorch CUDA index can be reached here, so `install` itself is not run; its plan is checked, and
the wheel parts are packed and installed for real (pip --target, offline) from small wheels built in the test.
"""

import argparse
import base64
import hashlib
import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("install_gpu", REPO / "scripts" / "install_gpu.py")
install_gpu = importlib.util.module_from_spec(SPEC)
sys.modules["install_gpu"] = install_gpu  # dataclasses look their module up while the class is built
SPEC.loader.exec_module(install_gpu)


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


def test_only_what_the_image_lacks_or_pins_differently_travels() -> None:
    pins = install_gpu.read_pins(REPO / "requirements.txt")
    image = {"transformers": "5.17.0", "accelerate": pins["accelerate"].version, "aiohttp": None, "httpx": None}
    closure = {
        "torch": "2.13.0", "nvidia-cublas-cu12": "12.8.4.1", "triton": "3.6.0", "numpy": "2.4.6",
        "transformers": pins["transformers"].version, "accelerate": pins["accelerate"].version,
        "aiohttp": "3.13.0", "httpx": pins["httpx"].version, "hjson": "3.1.0",
    }  # fmt: skip
    carried = install_gpu.select_carried(closure, pins, image)
    # transformers differs, httpx's version there is unknown, hjson is missing; the image's CUDA stack and numpy,
    # its matching accelerate and its unpinned aiohttp stay.
    assert set(carried) == {"transformers", "httpx", "hjson"}


def _wheel(directory: Path, name: str, version: str, payload: bytes = b"") -> Path:
    """A minimal valid wheel of a module `name` exposing VERSION (and `payload` to make it large)."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n".encode(),
        f"{name}/blob.bin": payload,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for path, data in files.items()
    )
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        archive.writestr(f"{dist}/RECORD", record + f"{dist}/RECORD,,\n")
    return wheel


def _write_parts(tmp_path: Path, part_bytes: int) -> tuple[Path, list[list]]:
    cache = tmp_path / "cache"
    cache.mkdir()
    incompressible = hashlib.sha256(b"seed").digest() * 40_000  # 1.28 MB that zip cannot shrink
    wheels = [
        ("bench", _wheel(cache, "benchpkg", "1.0")),
        ("e2e", _wheel(cache, "bigpkg", "2.0", incompressible)),
        ("rest", _wheel(cache, "restpkg", "3.0")),
    ]
    staging = cache / "chunks"
    staging.mkdir()
    parts = install_gpu.pack_parts(wheels, part_bytes, staging)
    manifest = {
        "tiers": {t: sorted({p.wheel for part in parts for p in part if p.tier == t}) for t in install_gpu.TIERS},
        "parts": [[vars(p) for p in part] for part in parts],
    }
    out = tmp_path / ".whl"
    for number, part in enumerate(parts, 1):
        directory = out / f"p{number}"
        directory.mkdir(parents=True)
        for piece in part:
            source = staging / piece.file if piece.chunk is not None else cache / piece.file
            (directory / piece.file).write_bytes(source.read_bytes())
        (directory / "manifest.json").write_text(json.dumps({**manifest, "part": number}))
    return out, parts


def _device_install(part: Path, site: Path, need: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "scripts" / "install_gpu.py"), "device-install", str(part)]
    command += ["--site", str(site), "--no-verify", *(["--need", need] if need else [])]
    return subprocess.run(command, capture_output=True, text=True)


def test_parts_stay_under_the_carry_limit_and_install_offline_one_call_at_a_time(tmp_path: Path) -> None:
    part_bytes = 2**19  # 512 KiB parts: the 1.28 MB wheel must be cut into chunks
    out, parts = _write_parts(tmp_path, part_bytes)
    assert all(sum(p.size for p in part) <= part_bytes for part in parts)
    assert parts[0][0].wheel.startswith("benchpkg")  # tier order: what the step benchmark needs comes first
    chunks = [p for part in parts for p in part if p.wheel.startswith("bigpkg")]
    assert len(chunks) >= 3 and [c.chunk for c in chunks] == list(range(len(chunks)))

    site = tmp_path / "site"
    first = _device_install(out / "p1", site, need="bench")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "bench: ready" in first.stdout and "e2e: " in first.stdout and "still to carry" in first.stdout
    early = _device_install(out / "p2", site, need="e2e")
    if len(parts) > 2:  # the big wheel is not complete before its last chunk arrives
        assert early.returncode == 3 and "is not complete on this machine" in early.stderr
    for number in range(2, len(parts) + 1):
        result = _device_install(out / f"p{number}", site)
        assert result.returncode == 0, result.stdout + result.stderr
    assert "e2e: ready" in result.stdout and "rest: ready" in result.stdout
    probe = "import benchpkg, bigpkg, restpkg, pathlib; print(bigpkg.VERSION, len(pathlib.Path(bigpkg.__file__).with_name('blob.bin').read_bytes()))"  # noqa: E501
    env = {"PYTHONPATH": str(site)}
    shown = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    assert shown.stdout.split() == ["2.0", "1280000"], shown.stderr


def test_a_damaged_part_is_refused_before_anything_is_installed(tmp_path: Path) -> None:
    out, parts = _write_parts(tmp_path, 2**19)
    damaged = out / "p1" / parts[0][0].file
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    result = _device_install(out / "p1", tmp_path / "site")
    assert result.returncode == 2 and "damaged in transfer" in result.stderr
    assert not (tmp_path / "site" / "benchpkg").exists()
