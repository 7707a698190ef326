"""retrieval_core is what the trainer and the retrieval service share, so it may import neither: read statically,
with `ast`, so an import inside a function or under TYPE_CHECKING counts as much as one at the top."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import retrieval_core

PACKAGE = Path(retrieval_core.__file__).parent
FORBIDDEN = ("trainer", "retrieval_service")
# Shipped alone as an MLflow artifact (the reranker pyfunc), so it may import nothing of this repository at all.
STANDALONE = PACKAGE / "late_interaction.py"
STANDALONE_THIRD_PARTY = {"torch", "transformers", "safetensors"}


def imported_modules(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement in the package file `path` (or in `source`, read as
    if it were that file); relative imports are resolved against the file's package."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    text = source if source is not None else path.read_text(encoding="utf-8")
    found = []
    for node in ast.walk(ast.parse(text, filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            base = package.rsplit(".", node.level - 1)[0]
            found.append((node.lineno, f"{base}.{node.module}" if node.module else base))
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, node.module or ""))
    return sorted(found)


def test_every_module_of_the_package_is_read() -> None:
    modules = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")}
    assert {"__init__.py", "documents.py", "tokenization.py", "late_interaction.py", "backends/base.py"} <= modules


def test_retrieval_core_imports_neither_trainer_nor_retrieval_service() -> None:
    offending = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {module}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line, module in imported_modules(path)
        if module.split(".")[0] in FORBIDDEN
    ]
    assert not offending, offending


def test_the_scorer_module_stands_alone() -> None:
    tops = {module.split(".")[0] for _, module in imported_modules(STANDALONE)}
    outside = {t for t in tops if t not in sys.stdlib_module_names and t != "__future__"}
    assert outside <= STANDALONE_THIRD_PARTY, sorted(outside - STANDALONE_THIRD_PARTY)


def test_the_reader_sees_imports_anywhere() -> None:
    """Guarded, function-local and relative imports are found, not only top-level ones."""
    source = "if False:\n    from trainer.x import y\ndef f():\n    import retrieval_service.app\nfrom . import base\n"
    found = imported_modules(PACKAGE / "backends" / "tantivy_backend.py", source)
    assert found == [(2, "trainer.x"), (4, "retrieval_service.app"), (5, "retrieval_core.backends")]
