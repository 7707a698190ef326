"""No import circle anywhere in the project: every `import` of a first-party module, at module level or inside a
function (a lazy import still runs), draws an edge, and so does a module's own package (importing `a.b.c` runs
`a/__init__.py` and `a/b/__init__.py` first). Imports under `if TYPE_CHECKING:` never run and draw none."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("trainer", "ray_jobs", "retrieval_service", "retrieval_core")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        if (REPO / package).is_dir()
        for path in (REPO / package).rglob("*.py")
    }


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """Module names a file imports (resolving relative imports), skipping TYPE_CHECKING blocks."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        targets = set(imported(ast.parse(path.read_text()), name, path.name == "__init__.py"))
        for target in targets:
            parts = target.split(".")
            for depth in range(1, len(parts) + 1):  # the target and the packages it lives in
                prefix = ".".join(parts[:depth])
                if prefix in modules and prefix != name and not name.startswith(f"{prefix}."):
                    graph[name].add(prefix)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_the_check_sees_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_trainer_never_imports_ray_jobs_and_retrieval_service_never_imports_trainer() -> None:
    """The service ships in a slim image without trainer/; only its benchmark, which measures it from outside and
    never ships, shares trainer's /proc reader."""
    graph = import_graph()
    assert [(m, t) for m, ts in graph.items() if m.startswith("trainer") for t in ts if t.startswith("ray_jobs")] == []
    shipped = {m: ts for m, ts in graph.items() if m.startswith("retrieval_service")}
    service = {m: ts for m, ts in shipped.items() if m != "retrieval_service.benchmark"}
    assert [(m, t) for m, ts in service.items() for t in ts if t.startswith("trainer")] == []
