#!/usr/bin/env python3
"""Install this repository's pinned stack on a GPU machine, check it, and record the versions that worked.

A GPU machine with registry access (a workstation, a cloud VM, the job image's build):

    python3 scripts/install_gpu.py plan                 # print the commands `install` runs; runs nothing
    python3 scripts/install_gpu.py install              # .venv with CUDA torch, then our pins constrained to it
    python3 scripts/install_gpu.py install --ds-ops prebuild   # DeepSpeed's FusedAdam/CPUAdam built at install
    .venv/bin/python scripts/install_gpu.py verify      # versions, CUDA, NCCL, bf16, one torch, pins, DS ops

CUDA torch comes first, pinned (torch==2.13.0, the pin of requirements.txt) from the PyTorch CUDA index; every
later install is constrained by constraints.txt to that torch, so nothing can pull a second torch. DeepSpeed's
CUDA ops are JIT-compiled on first use by default (what `pip install deepspeed` gives users; verify compiles
FusedAdam once to prove the toolchain works), or pre-built with DS_BUILD_FUSED_ADAM=1 DS_BUILD_CPU_ADAM=1.

A lent GPU machine with no registry (the device tool's nvidia-h100-x1 / nvidia-h200): its python3 already holds a
CUDA torch, so only what it lacks travels, as wheels carried in `.whl/` (at most 64 MiB per call):

    python3 scripts/pack_device_wheels.py               # here: .whl/p1, .whl/p2, ... (each under the limit)
    python3 scripts/install_gpu.py device-install .whl/p1   # there: install one carried part, then verify

Standard library only: it runs before anything is installed, under any python3 >= 3.11.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
REQUIREMENTS = REPO / "requirements.txt"
DEV_REQUIREMENTS = REPO / "requirements-dev.txt"
CONSTRAINTS = REPO / "constraints.txt"
IMAGE_PACKAGES = Path(__file__).resolve().with_name("device_image_packages.txt")
TORCH_INDEX = "https://download.pytorch.org/whl/{cuda}"
DEFAULT_CUDA = "cu128"  # PyPI's torch 2.13.0 Linux wheel is this build too (it requires nvidia-*-cu12 12.8)
STAMP = ".installed-gpu"

# The lent machines (device README): CPython 3.12 on x86_64 Linux. pip matches manylinux tags exactly.
DEVICE_PYTHON = "3.12"
DEVICE_SITE = "/tmp/reasondistill-site"
# Never carried: the image's CUDA stack; numpy stays the image's too (its compiled packages are built against it).
NEVER_CARRY = re.compile(r"^(torch|triton|numpy|nvidia-.*|cuda-.*)$")
# What each device call can run once the parts up to its tier are installed.
TIERS: dict[str, list[str]] = {
    "bench": ["deepspeed", "pydantic", "pyyaml", "transformers", "tokenizers", "sentencepiece", "accelerate",
              "mlflow", "tqdm"],  # the per-step benchmark: trainer/* and DeepSpeed
    "e2e": ["ray"],  # ray_jobs.submit on a local head
    "rest": [],  # everything else pinned (retrieval service, datasets)
}  # fmt: skip


def normalize(name: str) -> str:
    """PEP 503 name: lower case, runs of -_. as one dash."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Pin:
    name: str  # normalised
    requirement: str  # as written, extras included: ray[default,train]==2.60.0
    version: str


def read_pins(path: Path) -> dict[str, Pin]:
    """`name[extras]==version` lines; anything else (a range, a URL) is an error naming the line."""
    pins: dict[str, Pin] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]+\])?==([^\s;]+)", line)
        if match is None:
            raise SystemExit(f"{path}:{number}: {raw!r} is not pinned as name==version")
        pins[normalize(match.group(1))] = Pin(normalize(match.group(1)), line, match.group(3))
    return pins


def read_image_packages(path: Path = IMAGE_PACKAGES) -> dict[str, str | None]:
    """Names (and versions, where known) of the packages the lent machines' python3 already has."""
    packages: dict[str, str | None] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            packages[normalize(name)] = version or None
    return packages


# ---- a GPU machine with registry access ---------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    description: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def shell(self) -> str:
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (prefix + " " if prefix else "") + shlex.join(self.argv)


def _venv_torch_cuda(python: Path) -> str | None:
    """`torch.version.cuda` of an existing environment: 'none' for a CPU build, None if it has no torch."""
    if not python.is_file():
        return None
    probe = "import torch; print(torch.version.cuda or 'none')"
    result = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    return result.stdout.strip() or None if result.returncode == 0 else None


def online_plan(args: argparse.Namespace) -> list[Step]:
    """The install, as the commands it runs; `plan` prints them and `install` runs them in order."""
    pins = read_pins(REQUIREMENTS)
    venv = Path(args.venv).resolve()
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    constrained = [*pip, "-c", str(CONSTRAINTS)]
    torch = pins["torch"]
    torch_source = [] if args.torch_index == "pypi" else ["--index-url", args.torch_index.format(cuda=args.cuda)]
    # A CPU torch of the same version (e.g. from `make venv`) satisfies torch==X: replace it explicitly.
    replace = ["--force-reinstall", "--no-deps"] if _venv_torch_cuda(python) == "none" else []
    steps = []
    if not python.is_file():
        steps.append(Step("create the environment", [args.python, "-m", "venv", str(venv)]))
    steps += [
        Step("current pip", [*pip, "--upgrade", "pip"]),
        Step(f"CUDA torch {torch.version} first ({args.cuda})", [*pip, *replace, *torch_source, torch.requirement]),
        Step("build tools for DeepSpeed (it builds from source)", [*constrained, "ninja", "setuptools", "wheel"]),
    ]
    deepspeed = pins["deepspeed"].requirement
    # --no-build-isolation: DeepSpeed's build imports torch; it must see this CUDA torch, never fetch one of its own.
    if args.ds_ops == "prebuild":
        env = {"DS_BUILD_OPS": "0", "DS_BUILD_FUSED_ADAM": "1", "DS_BUILD_CPU_ADAM": "1"}
        steps.append(
            Step(
                "DeepSpeed with FusedAdam and CPUAdam built now", [*constrained, "--no-build-isolation", deepspeed], env
            )
        )
    else:
        steps.append(
            Step(
                "DeepSpeed, CUDA ops compiled on first use",
                [*constrained, "--no-build-isolation", deepspeed],
                {"DS_BUILD_OPS": "0"},
            )
        )
    requirements = ["-r", str(REQUIREMENTS), *(["-r", str(DEV_REQUIREMENTS)] if args.dev else [])]
    steps += [
        Step("every other pin, constrained to that torch", [*constrained, *requirements], {"DS_BUILD_OPS": "0"}),
        Step("this repository", [*pip, "--no-deps", "--no-build-isolation", "-e", str(REPO)]),
        Step(
            "verify and record the versions",
            [
                str(python),
                str(Path(__file__).resolve()),
                "verify",
                "--load-ops",
                "--json",
                str(venv / "gpu-install.json"),
            ],
        ),
    ]
    return steps


def cmd_plan(args: argparse.Namespace) -> int:
    for number, step in enumerate(online_plan(args), 1):
        print(f"# {number}. {step.description}\n{step.shell()}")
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    for number, step in enumerate(online_plan(args), 1):
        print(f"[install_gpu] {number}. {step.description}\n  $ {step.shell()}", flush=True)
        started = time.monotonic()
        code = subprocess.run(step.argv, env={**os.environ, **step.env}, cwd=REPO).returncode
        if code != 0:
            print(f"[install_gpu] step {number} failed (exit {code}); nothing after it ran", file=sys.stderr)
            return code
        print(f"[install_gpu]    done in {time.monotonic() - started:.0f} s", flush=True)
    (Path(args.venv) / STAMP).touch()
    return 0


# ---- verification (runs inside the environment it checks) ------------------------------------------------
def _installed_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _torch_distributions() -> list[str]:
    """Every installed distribution that provides torch: two would mean a second torch was pulled in."""
    from importlib import metadata

    found = []
    for dist in metadata.distributions():
        if normalize(dist.metadata["Name"] or "") == "torch":
            found.append(f"{dist.version} at {dist.locate_file('')}")
    return found


def _public(version: str) -> str:
    return version.split("+", 1)[0]


def check_pins(
    pins: dict[str, Pin], installed: dict[str, str | None], image: bool, tiers: set[str] | None = None
) -> list[dict[str, Any]]:
    """Pin vs installed version. On the lent image its own torch and numpy are expected to differ, and a pin of
    a tier not asked for (`tiers`) may still be absent: its wheels travel in a later part."""
    rows = []
    for name, pin in sorted(pins.items()):
        found = installed.get(name)
        if found is not None and _public(found) == pin.version:
            status = "ok"
        elif found is None and tiers is not None and tier_of(name) not in tiers:
            status = f"not carried yet ({tier_of(name)})"
        elif found is None:
            status = "missing"
        elif image and NEVER_CARRY.match(name):
            status = "image's own"
        else:
            status = "differs"
        rows.append({"package": name, "pinned": pin.version, "installed": found, "status": status})
    return rows


def collect_report(load_ops: bool, image: bool, tiers: set[str] | None = None) -> dict[str, Any]:
    """What a GPU install must get right, as data: the CLI prints it and writes it as JSON."""
    import platform

    report: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(), "problems": []}
    problems: list[str] = report["problems"]
    try:
        import torch
    except ImportError as exc:
        problems.append(f"torch does not import: {exc}")
        return report
    torches = _torch_distributions()
    report["torch"] = {
        "version": torch.__version__,
        "cuda_build": torch.version.cuda,
        "distributions": torches,
        "cuda_available": torch.cuda.is_available(),
    }
    if len(torches) != 1:
        problems.append(f"{len(torches)} torch distributions installed: {torches}")
    if torch.version.cuda is None:
        problems.append(f"torch {torch.__version__} is a CPU build")
    if torch.cuda.is_available():
        report["gpus"] = [
            {
                "name": torch.cuda.get_device_name(i),
                "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
                "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
            }
            for i in range(torch.cuda.device_count())
        ]
        report["torch"].update(
            bf16_supported=torch.cuda.is_bf16_supported(),
            nccl=".".join(map(str, torch.cuda.nccl.version())),
            cudnn=torch.backends.cudnn.version(),
        )
        if not torch.cuda.is_bf16_supported():
            problems.append("this GPU has no bf16 (T5 trains in bf16 or fp32 here, never fp16)")
    else:
        problems.append("torch sees no CUDA device")
    pins = read_pins(REQUIREMENTS)
    installed = {name: _installed_version(name) for name in pins}
    report["pins"] = check_pins(pins, installed, image, tiers)
    problems += [f"{r['package']}: pinned {r['pinned']}, found {r['installed']}" for r in report["pins"]
                 if r["status"] in ("missing", "differs")]  # fmt: skip
    report["deepspeed"] = _deepspeed_report(load_ops, problems)
    # Conflicts anywhere in the environment (the lent image has its own); reported, not fatal.
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    report["pip_check"] = (check.stdout + check.stderr).strip().splitlines()
    nvcc = shutil.which("nvcc")
    report["nvcc"] = (
        subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
        if nvcc
        else None
    )
    return report


def _deepspeed_report(load_ops: bool, problems: list[str]) -> dict[str, Any]:
    try:
        import deepspeed
        from deepspeed.accelerator import get_accelerator
        from deepspeed.git_version_info import installed_ops
        from deepspeed.ops.op_builder import CPUAdamBuilder, FusedAdamBuilder
    except Exception as exc:  # noqa: BLE001 - report any import failure of DeepSpeed, whatever its type
        problems.append(f"deepspeed does not import: {exc}")
        return {}
    info: dict[str, Any] = {
        "version": deepspeed.__version__,
        "accelerator": get_accelerator().device_name(),
        "prebuilt_ops": sorted(op for op, built in installed_ops.items() if built),
    }
    if info["accelerator"] != "cuda":
        problems.append(f"DeepSpeed's accelerator is {info['accelerator']!r} (DS_ACCELERATOR set to cpu?)")
    for builder in (FusedAdamBuilder(), CPUAdamBuilder()):
        entry: dict[str, Any] = {"compatible": builder.is_compatible(verbose=False)}
        if load_ops and entry["compatible"]:
            started = time.monotonic()
            try:
                builder.load(verbose=False)  # JIT-compiles on first use, then loads from the extensions cache
                entry["load_s"] = round(time.monotonic() - started, 1)
            except Exception as exc:  # noqa: BLE001 - a failed build is a finding, not a crash
                entry["load_error"] = str(exc)[-500:]
                problems.append(f"DeepSpeed {builder.name} does not build: {entry['load_error']}")
        info[builder.name] = entry
    return info


def cmd_verify(args: argparse.Namespace) -> int:
    report = collect_report(args.load_ops, args.image, set(args.tiers) if args.tiers else None)
    torch = report.get("torch", {})
    print(f"python {report['python']}  torch {torch.get('version')} (CUDA build {torch.get('cuda_build')}, "
          f"NCCL {torch.get('nccl')}, cuDNN {torch.get('cudnn')}, bf16 {torch.get('bf16_supported')})")  # fmt: skip
    for gpu in report.get("gpus", []):
        print(f"  GPU {gpu['name']} (sm {gpu['capability']}, {gpu['memory_gib']} GiB)")
    ds = report.get("deepspeed", {})
    print(f"deepspeed {ds.get('version')} accelerator {ds.get('accelerator')} prebuilt {ds.get('prebuilt_ops')} "
          f"fused_adam {ds.get('fused_adam')} cpu_adam {ds.get('cpu_adam')}  nvcc: {report.get('nvcc')}")  # fmt: skip
    for row in report.get("pins", []):
        print(f"  {row['package']:<16} pinned {row['pinned']:<10} installed {row['installed']!s:<14} {row['status']}")
    for line in report.get("pip_check", []):
        print(f"  pip check: {line}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    for problem in report["problems"]:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    return 1 if report["problems"] else 0


# ---- the lent offline machines: parts packed here (pack_device_wheels.py), carried, installed there -----------------
def pip_command(*args: str, python: str = sys.executable) -> list[str]:
    return [python, "-m", "pip", *args]


@dataclass
class Piece:
    """A wheel, or one chunk of a wheel too large for one part."""

    wheel: str
    tier: str
    file: str
    size: int
    sha256: str
    chunk: int | None = None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tier_of(name: str) -> str:
    return next((tier for tier, names in TIERS.items() if name in names), "rest")


def _assemble(staging: Path, manifest: dict[str, Any]) -> list[Path]:
    """Whole wheels in staging: plain ones as they came, chunked ones once every chunk is there."""
    pieces = [Piece(**p) for part in manifest["parts"] for p in part]
    ready = []
    for wheel in sorted({p.wheel for p in pieces}):
        own = sorted((p for p in pieces if p.wheel == wheel), key=lambda p: p.chunk or 0)
        if own[0].chunk is None:
            if (staging / wheel).is_file():
                ready.append(staging / wheel)
            continue
        if all((staging / p.file).is_file() for p in own):
            with (staging / wheel).open("wb") as handle:
                for piece in own:
                    handle.write((staging / piece.file).read_bytes())
            for piece in own:
                (staging / piece.file).unlink()
        if (staging / wheel).is_file():
            ready.append(staging / wheel)
    return ready


def cmd_device_install(args: argparse.Namespace) -> int:
    """Check, stage and install carried parts into a --target directory that PYTHONPATH then puts first."""
    site = Path(args.site)
    state_dir = site / ".reasondistill"
    staging = state_dir / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    state_file = state_dir / "installed.json"
    installed: list[str] = json.loads(state_file.read_text()) if state_file.is_file() else []
    manifest: dict[str, Any] = {}
    for part_dir in map(Path, args.parts):
        manifest = json.loads((part_dir / "manifest.json").read_text())
        for piece in map(lambda p: Piece(**p), manifest["parts"][manifest["part"] - 1]):
            source = part_dir / piece.file
            if not source.is_file() or file_sha256(source) != piece.sha256:
                print(f"{source}: missing or damaged in transfer (sha256 differs)", file=sys.stderr)
                return 2
            if piece.wheel not in installed:
                shutil.copy2(source, staging / piece.file)
    ready = [w for w in _assemble(staging, manifest) if w.name not in installed]
    if ready:
        command = pip_command("install", "--quiet", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
                       "--upgrade", "--target", str(site), *map(str, ready), python=args.python)  # fmt: skip
        subprocess.run(command, check=True)
        installed += [w.name for w in ready]
        state_file.write_text(json.dumps(sorted(installed), indent=2))
        for wheel in ready:
            wheel.unlink()
    ready_tiers = []
    for tier, wheels in manifest.get("tiers", {}).items():
        missing = [w for w in wheels if w not in installed]
        ready_tiers += [] if missing else [tier]
        print(f"[device-install] {tier}: {'ready' if not missing else f'{len(missing)} wheel(s) still to carry'}")
    print(f"[device-install] {len(installed)} wheels in {site}; use: export PYTHONPATH={site}", flush=True)
    if args.need and args.need not in ready_tiers:
        print(
            f"[device-install] tier {args.need!r} is not complete on this machine: carry the parts before this one "
            "again (a machine that went cold between calls starts bare)",
            file=sys.stderr,
        )
        return 3
    if not args.verify:
        return 0
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}".rstrip(os.pathsep)}
    verify = [args.python, str(Path(__file__).resolve()), "verify", "--image", "--tiers", *(ready_tiers or ["none"])]
    return subprocess.run([*verify, *(["--json", args.json] if args.json else [])], env=env).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("plan", "install"):
        sub = commands.add_parser(name, help=f"{name} the environment of a GPU machine with registry access")
        sub.add_argument("--venv", default=str(REPO / ".venv"))
        sub.add_argument("--python", default=sys.executable, help="interpreter that creates the venv")
        sub.add_argument("--cuda", default=DEFAULT_CUDA, help="PyTorch CUDA index tag (cu126, cu128, cu130)")
        sub.add_argument("--torch-index", default=TORCH_INDEX, help="index URL ({cuda} is filled) or 'pypi'")
        sub.add_argument("--ds-ops", choices=["jit", "prebuild"], default="jit")
        sub.add_argument("--dev", action="store_true", help="also requirements-dev.txt (tests, lint)")
    verify = commands.add_parser("verify", help="check the environment of this interpreter")
    verify.add_argument("--load-ops", action="store_true", help="JIT-compile and load FusedAdam and CPUAdam")
    verify.add_argument("--image", action="store_true", help="the lent machines: their torch and numpy are theirs")
    verify.add_argument("--json", help="write the report here")
    verify.add_argument("--tiers", nargs="+", choices=[*TIERS, "none"], help="only these tiers' pins must be present")
    install = commands.add_parser("device-install", help="there: install carried parts, then verify")
    install.add_argument("parts", nargs="+", help="carried part folders, e.g. .whl/p1")
    install.add_argument("--site", default=DEVICE_SITE)
    install.add_argument("--python", default=sys.executable)
    install.add_argument("--json", help="write the verification report here")
    install.add_argument("--need", choices=list(TIERS), help="fail (exit 3) unless this tier is then complete")
    install.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    handlers = {
        "plan": cmd_plan,
        "install": cmd_install,
        "verify": cmd_verify,
        "device-install": cmd_device_install,
    }
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
