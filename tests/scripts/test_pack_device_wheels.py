"""scripts/pack_device_wheels.py on this CPU machine: what travels to the lent offline GPU machines, and the
carry-and-install round trip of its parts through install_gpu.py device-install.

The parts are packed and installed for real (pip --target, offline) from small wheels built in the test.
"""

import base64
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import install_gpu
import pack_device_wheels

REPO = Path(__file__).resolve().parents[2]


def test_only_what_the_image_lacks_or_pins_differently_travels() -> None:
    pins = install_gpu.read_pins(REPO / "requirements.txt")
    image = {"transformers": "5.17.0", "accelerate": pins["accelerate"].version, "aiohttp": None, "httpx": None}
    closure = {
        "torch": "2.13.0", "nvidia-cublas-cu12": "12.8.4.1", "triton": "3.6.0", "numpy": "2.4.6",
        "transformers": pins["transformers"].version, "accelerate": pins["accelerate"].version,
        "aiohttp": "3.13.0", "httpx": pins["httpx"].version, "hjson": "3.1.0",
    }  # fmt: skip
    carried = pack_device_wheels.select_carried(closure, pins, image)
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
    parts = pack_device_wheels.pack_parts(wheels, part_bytes, staging)
    out = tmp_path / ".whl"
    pack_device_wheels.write_parts(parts, cache, staging, out)
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


def test_the_packer_runs_as_a_script_beside_install_gpu() -> None:
    """It imports install_gpu as its sibling file, as `python3 scripts/pack_device_wheels.py` does there."""
    shown = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "pack_device_wheels.py"), "--help"], capture_output=True, text=True
    )
    assert shown.returncode == 0 and "--part-mib" in shown.stdout, shown.stderr
