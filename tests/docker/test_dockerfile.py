"""What can be checked of the Dockerfile without a Docker daemon (none runs here): every pip install is pinned
and constrained, the image requirement files agree with requirements.txt, the retrieval image has every module
the service and retrieval_core import (reranking included) and not the trainer, and pip's resolver, given the
image's install commands, installs exactly the pins."""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;#]+)")


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = PIN.match(line)
        assert match, f"{path.name}: {line!r} is not pinned with =="
        out[match[1].lower().replace("_", "-")] = match[3]
    return out


def run_commands() -> list[str]:
    """RUN instructions with continuation lines joined."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    return [line.strip()[4:] for line in text.splitlines() if line.strip().startswith("RUN ")]


PIN_FROM_REQUIREMENTS = re.compile(r"\"\$\(grep '\^([a-z0-9_.-]+)==' requirements\.txt\)\"")
VALUE_OPTIONS = {"-c", "-r", "--index-url", "--extra-index-url"}


def pip_installs() -> list[str]:
    """Every `pip install` of the Dockerfile (pip's own upgrade aside)."""
    segments = [part.strip() for command in run_commands() for part in re.split(r"&&|;", command)]
    return [s for s in segments if re.match(r"((DS_|TORCH_)\S+\s+)*pip install", s) and "--upgrade pip" not in s]


def build_context_file(path: str) -> Path:
    """The repository file a path inside the image came from (docker/*.txt are copied to /tmp)."""
    name = Path(path).name
    if path.startswith("/tmp/"):
        return REPO_ROOT / ("constraints.txt" if name == "constraints.txt" else f"docker/{name}")
    return REPO_ROOT / path


def test_every_pip_install_is_constrained_and_pinned() -> None:
    installs = pip_installs()
    assert len(installs) == 5  # torch, deepspeed, requirements.txt, retrieval, mlflow
    from_requirements = []
    for segment in installs:
        from_requirements += PIN_FROM_REQUIREMENTS.findall(segment)
        words = shlex.split(PIN_FROM_REQUIREMENTS.sub("", segment))
        words = words[words.index("install") + 1 :]
        assert words[words.index("-c") + 1].endswith("constraints.txt"), segment
        positional = [w for i, w in enumerate(words) if not w.startswith("-") and words[i - 1] not in VALUE_OPTIONS]
        assert positional == [], f"unpinned package argument(s) {positional} in: {segment}"
        for flag, value in zip(words, words[1:], strict=False):
            if flag == "-r":
                pins(build_context_file(value))  # every line pinned with ==
    assert from_requirements == ["torch", "deepspeed"]


def test_torch_is_the_pinned_cpu_or_cuda_build_of_one_version() -> None:
    requirements, constraints = pins(REPO_ROOT / "requirements.txt"), pins(REPO_ROOT / "constraints.txt")
    assert requirements["torch"] == constraints["torch"] == "2.13.0"
    text = DOCKERFILE.read_text()
    assert "grep '^torch==' requirements.txt" in text and "grep '^deepspeed==' requirements.txt" in text
    assert "DS_BUILD_FUSED_ADAM=1" in text and "--no-build-isolation" in text


def test_image_requirement_files_agree_with_requirements_txt() -> None:
    requirements = pins(REPO_ROOT / "requirements.txt")
    retrieval = pins(REPO_ROOT / "docker" / "requirements-retrieval.txt")
    assert retrieval and all(requirements[name] == version for name, version in retrieval.items())
    mlflow = pins(REPO_ROOT / "docker" / "requirements-mlflow.txt")
    assert mlflow["mlflow"] == requirements["mlflow"]
    assert set(mlflow) == {"mlflow", "psycopg2-binary", "boto3"}


# Import name -> the distribution providing it (its own requirement, or a dependency of one).
PROVIDERS = {
    "elastic_transport": "elasticsearch",
    "starlette": "fastapi",
    "safetensors": "transformers",
    "mlflow": "mlflow-skinny",
    "yaml": "pyyaml",
}
RETRIEVAL_TOOLS_ONLY = {"benchmark.py", "local_server.py"}  # the benchmark and the server it starts; not the image
RETRIEVAL_IMAGE_PACKAGES = ("retrieval_service", "retrieval_core")  # what the image copies into /app


def retrieval_stage() -> str:
    text = DOCKERFILE.read_text()
    return text[text.index(" AS retrieval\n") : text.index(" AS mlflow\n")]


def test_retrieval_image_copies_the_service_and_the_core_and_not_the_trainer() -> None:
    copied = re.findall(r"^COPY --chown=\S+ (\S+) /app/\1$", retrieval_stage(), flags=re.MULTILINE)
    assert tuple(sorted(copied)) == tuple(sorted(RETRIEVAL_IMAGE_PACKAGES))
    assert "download.pytorch.org/whl/cpu" in retrieval_stage()  # torch's CPU build, not PyPI's CUDA one


def test_retrieval_image_has_every_module_the_service_imports() -> None:
    """Every import, lazy ones too (`serve --reranker` loads torch models only on first use), of the copied packages
    is installed or copied: a reranking service runs from the retrieval image."""
    installed = set(pins(REPO_ROOT / "docker" / "requirements-retrieval.txt"))
    missing = set()
    for path in (p for package in RETRIEVAL_IMAGE_PACKAGES for p in (REPO_ROOT / package).rglob("*.py")):
        if path.name in RETRIEVAL_TOOLS_ONLY:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in ("__future__", *RETRIEVAL_IMAGE_PACKAGES):
                    continue
                if PROVIDERS.get(top, top.replace("_", "-")) not in installed:
                    missing.add(f"{path.relative_to(REPO_ROOT)}: {top}")
    assert not missing, sorted(missing)


def _resolve(requirement_file: str, tmp_path: Path) -> dict[str, str]:
    """What pip would install, with the image's constraints, from an empty environment (PyPI, no download)."""
    report = tmp_path / "report.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            str(report),
            "-c",
            "constraints.txt",
            "-r",
            requirement_file,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "DS_BUILD_OPS": "0"},
    )
    if result.returncode != 0:
        if "Could not fetch" in result.stderr or "NewConnectionError" in result.stderr:
            pytest.skip(f"package index unreachable: {result.stderr.strip()[-200:]}")
        pytest.fail(result.stderr[-2000:])
    installs = json.loads(report.read_text())["install"]
    return {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"] for item in installs}


@pytest.mark.slow  # ~50 s for the three, and needs the package index
@pytest.mark.parametrize(
    "requirement_file",
    ["requirements.txt", "docker/requirements-retrieval.txt", "docker/requirements-mlflow.txt"],
)
def test_resolver_installs_exactly_the_pins(requirement_file: str, tmp_path: Path) -> None:
    resolved = _resolve(requirement_file, tmp_path)
    for name, version in pins(REPO_ROOT / requirement_file).items():
        assert resolved[name].split("+")[0] == version, f"{name}: pinned {version}, resolved {resolved[name]}"
    torch = resolved.get("torch")
    assert torch is None or torch.split("+")[0] == "2.13.0"  # no dependency pulls another torch
