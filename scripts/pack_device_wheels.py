#!/usr/bin/env python3
"""Pack the wheels the lent offline GPU machines lack into parts the device tool can carry (64 MiB per call).

    python3 scripts/pack_device_wheels.py               # here: .whl/p1, .whl/p2, ... (each under the limit)
    python3 scripts/install_gpu.py device-install .whl/p1   # there: install one carried part, then verify

The machines' python3 already holds a CUDA torch (scripts/device_image_packages.txt lists what it has), so only
what it lacks travels: the closure of our pins for the device's Python and platform, minus the image's own
packages, tier by tier (what the step benchmark needs first). DeepSpeed is built here as a pure-Python wheel; a
wheel larger than a part is cut into sha256-checked chunks that device-install puts back together.

Standard library only, like install_gpu.py, whose pins, tiers and part manifest it shares.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict
from pathlib import Path

from install_gpu import (
    DEVICE_PYTHON,
    DEVICE_SITE,
    NEVER_CARRY,
    REPO,
    REQUIREMENTS,
    TIERS,
    Piece,
    Pin,
    file_sha256,
    normalize,
    pip_command,
    read_image_packages,
    read_pins,
    tier_of,
)

# The lent machines (device README) are x86_64 Linux; pip matches manylinux tags exactly.
DEVICE_PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(5, 40)] + ["manylinux2014_x86_64", "manylinux1_x86_64"]
PART_MIB = 60  # the device tool carries 64 MiB per call, the repository (~0.5 MiB) included


def _platform_args() -> list[str]:
    args = ["--only-binary=:all:", "--python-version", DEVICE_PYTHON, "--implementation", "cp"]
    for tag in DEVICE_PLATFORMS:
        args += ["--platform", tag]
    return args


def _wheel_requirements(wheel: Path) -> list[str]:
    """Unconditional Requires-Dist of a wheel (no extras, no environment markers)."""
    with zipfile.ZipFile(wheel) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(meta).decode().splitlines()
    return [line.split(":", 1)[1].strip() for line in lines if line.startswith("Requires-Dist:") and ";" not in line]


def build_deepspeed_wheel(pin: Pin, cache: Path) -> Path:
    """DeepSpeed ships only a source release; a DS_BUILD_OPS=0 wheel is pure Python (ops JIT-compile there)."""
    found = list(cache.glob(f"deepspeed-{pin.version}-*.whl"))
    if not found:
        subprocess.run(
            pip_command("wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(cache), pin.requirement),
            env={**os.environ, "DS_BUILD_OPS": "0"},
            check=True,
        )
        found = list(cache.glob(f"deepspeed-{pin.version}-*.whl"))
    return found[0]


def resolve_closure(requirements: list[str], constraints: list[str]) -> dict[str, str]:
    """name → version of everything pip would install for the device's Python and platform."""
    with tempfile.TemporaryDirectory() as tmp:
        constraint_file = Path(tmp) / "constraints.txt"
        constraint_file.write_text("\n".join(constraints) + "\n")
        report = Path(tmp) / "report.json"
        command = pip_command(
            "install", "--quiet", "--dry-run", "--ignore-installed", *_platform_args(),
            "--target", str(Path(tmp) / "target"), "--report", str(report), "-c", str(constraint_file), *requirements,
        )  # fmt: skip
        subprocess.run(command, check=True)
        installs = json.loads(report.read_text())["install"]
    return {normalize(item["metadata"]["name"]): item["metadata"]["version"] for item in installs}


def select_carried(closure: dict[str, str], pins: dict[str, Pin], image: dict[str, str | None]) -> dict[str, str]:
    """What must travel: packages the image lacks, and our pins where the image's version is unknown or differs."""
    carried = {}
    for name, version in closure.items():
        if NEVER_CARRY.match(name):
            continue
        if name in pins:
            if image.get(name) != pins[name].version:
                carried[name] = version
        elif name not in image:
            carried[name] = version
    return carried


def pack_parts(wheels: list[tuple[str, Path]], part_bytes: int, staging: Path) -> list[list[Piece]]:
    """Fill parts in tier order, largest first; a wheel larger than a part is cut into chunks across parts."""
    parts: list[list[Piece]] = []
    room: list[int] = []
    for tier in TIERS:
        first = len(parts)  # a tier may share its first part with the end of the previous tier
        first = max(0, first - 1) if parts else 0
        for tier_name, wheel in sorted(wheels, key=lambda w: -w[1].stat().st_size):
            if tier_name != tier:
                continue
            size = wheel.stat().st_size
            if size <= part_bytes:
                index = next((i for i in range(first, len(parts)) if room[i] >= size), None)
                if index is None:
                    parts.append([])
                    room.append(part_bytes)
                    index = len(parts) - 1
                parts[index].append(Piece(wheel.name, tier, wheel.name, size, file_sha256(wheel)))
                room[index] -= size
                continue
            data, offset, chunk = wheel.read_bytes(), 0, 0
            while offset < size:
                if not parts or room[-1] < 1 << 20:
                    parts.append([])
                    room.append(part_bytes)
                piece = data[offset : offset + room[-1]]
                name = f"{wheel.name}.{chunk:03d}"
                (staging / name).write_bytes(piece)
                parts[-1].append(Piece(wheel.name, tier, name, len(piece), hashlib.sha256(piece).hexdigest(), chunk))
                room[-1] -= len(piece)
                offset += len(piece)
                chunk += 1
    return parts


def _without_extras(requirement: str) -> str:
    """Constraint files take no extras: ray[default,train]==2.60.0 constrains as ray==2.60.0."""
    return re.sub(r"\[[^\]]*\]", "", requirement)


def _find_wheel(cache: Path, name: str, version: str) -> Path:
    for wheel in cache.glob("*.whl"):
        parts = wheel.name.split("-")
        if normalize(parts[0]) == name and parts[1] == version:
            return wheel
    raise SystemExit(f"no wheel of {name}=={version} in {cache} for Python {DEVICE_PYTHON} on x86_64 Linux")


def write_parts(parts: list[list[Piece]], cache: Path, staging: Path, out: Path) -> None:
    """`out`/p1, p2, ...: each part's wheels and chunks, and the manifest every part carries (with its number)."""
    manifest = {
        "python": DEVICE_PYTHON,
        "site": DEVICE_SITE,
        "tiers": {tier: sorted({p.wheel for part in parts for p in part if p.tier == tier}) for tier in TIERS},
        "parts": [[asdict(p) for p in part] for part in parts],
    }
    for number, part in enumerate(parts, 1):
        directory = out / f"p{number}"
        directory.mkdir(parents=True)
        for piece in part:
            source = staging / piece.file if piece.chunk is not None else cache / piece.file
            shutil.copy2(source, directory / piece.file)
        (directory / "manifest.json").write_text(json.dumps({**manifest, "part": number}, indent=2))


def pack(out: Path, part_mib: int) -> None:
    """Resolve, download and pack what travels into `out`/p1, p2, ...; earlier parts there are replaced."""
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    pins = read_pins(REQUIREMENTS)
    image = read_image_packages()
    deepspeed = build_deepspeed_wheel(pins["deepspeed"], cache)
    ds_deps = [r for r in _wheel_requirements(deepspeed) if normalize(re.split(r"[<>=!~ \[]", r)[0]) != "torch"]
    constraints = [_without_extras(p.requirement) for p in pins.values()]
    # Tier by tier, the cumulative requirements' closure; a package belongs to the first tier that needs it.
    carried: dict[str, tuple[str, str]] = {"deepspeed": (pins["deepspeed"].version, "bench")}
    wanted: list[str] = []
    for tier in TIERS:
        wanted += [p.requirement for n, p in pins.items() if tier_of(n) == tier and n not in ("torch", "deepspeed")]
        if tier == "bench":
            wanted += ds_deps
        for name, version in select_carried(resolve_closure(wanted, constraints), pins, image).items():
            carried.setdefault(name, (version, tier))
    specs = [f"{name}=={version}" for name, (version, _) in sorted(carried.items()) if name != "deepspeed"]
    subprocess.run(
        pip_command("download", "--quiet", "--no-deps", *_platform_args(), "-d", str(cache), *specs), check=True
    )
    wheels = [(tier, _find_wheel(cache, name, version)) for name, (version, tier) in carried.items()]
    for old in out.glob("p*"):
        shutil.rmtree(old)
    staging = cache / "chunks"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    parts = pack_parts(wheels, part_mib * 2**20, staging)
    write_parts(parts, cache, staging, out)
    for number, part in enumerate(parts, 1):
        tiers = sorted({p.tier for p in part})
        print(f".whl/p{number}: {sum(p.size for p in part) / 2**20:5.1f} MiB, {len(part)} files, tiers {tiers}")
    for tier in TIERS:
        last = max((n for n, part in enumerate(parts, 1) if any(p.tier == tier for p in part)), default=None)
        print(f"  {tier}: ready once parts 1..{last} are installed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / ".whl"))
    parser.add_argument("--part-mib", type=int, default=PART_MIB)
    args = parser.parse_args(argv)
    pack(Path(args.out).resolve(), args.part_mib)
    return 0


if __name__ == "__main__":
    sys.exit(main())
