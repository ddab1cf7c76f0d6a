"""No import cycle anywhere in worker/: the training code once had one (job.py dispatched to
the backends, which imported job.py back), and a cycle only shows as an ImportError or a
half-initialised module in whichever process happens to import its modules in the wrong order.

The graph is read from the source (ast), with every `import` of a worker module, including the
ones inside functions and under TYPE_CHECKING: a lazy import keeps the cost of an import out of
the parent process, not the dependency out of the design.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "worker"

Graph = dict[str, set[str]]


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _known(name: str, modules: set[str]) -> str | None:
    """`name` or its nearest enclosing module that exists (`worker.a.func` -> `worker.a`)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imported(node: ast.AST, here: str, is_package: bool, modules: set[str]) -> Iterator[str]:
    """The worker modules one import statement loads."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            found = _known(alias.name, modules)
            if found:
                yield found
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: from the package this module is in (or is)
            package = here if is_package else here.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        for alias in node.names:
            found = _known(f"{base}.{alias.name}", modules) or _known(base, modules)
            if found:
                yield found


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> Graph:
    """{module: the package's modules it imports}, for every module under root/package."""
    paths = sorted((root / package).rglob("*.py"))
    modules = {module_name(path, root) for path in paths}
    graph: Graph = {}
    for path in paths:
        here = module_name(path, root)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[here] = {
            target
            for node in ast.walk(tree)
            for target in _imported(node, here, path.name == "__init__.py", modules)
            if target != here
        }
    return graph


def _components(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components (Tarjan), each a list of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _cycle_through(start: str, members: set[str], graph: Mapping[str, set[str]]) -> list[str]:
    """A shortest import path start -> ... -> start inside one component (breadth first)."""
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for target in sorted(graph[node] & members):
            if target == start:
                return [*paths[node], start]
            if target not in paths:
                paths[target] = [*paths[node], target]
                queue.append(target)
    raise AssertionError(f"{start} is in no cycle")  # a component of size > 1 always has one


def cycles(graph: Mapping[str, set[str]]) -> list[str]:
    """One cycle per strongly connected component, written `a -> b -> a`."""
    return [
        " -> ".join(_cycle_through(component[0], set(component), graph))
        for component in _components(graph)
        if len(component) > 1
    ]


def test_worker_has_no_import_cycle() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles in worker/:\n" + "\n".join(found)


def test_the_graph_sees_imports_inside_functions() -> None:
    graph = import_graph()
    # the registry imports each backend lazily, inside its train function
    assert "worker.training.backends.trl_backend" in graph["worker.training.backends"]
    # `from package import module` is an edge to the module, not to the package
    assert (
        "worker.training.backends.axolotl_config"
        in graph["worker.training.backends.axolotl_backend"]
    )
    assert "worker.training.backends" not in graph["worker.training.backends.axolotl_backend"]


def test_a_cycle_is_found_and_named(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text("from ..a import f\n")
    (package / "c.py").write_text("import pkg.a\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.sub.b"] == {"pkg.a"} and graph["pkg.c"] == {"pkg.a"}
    assert cycles(graph) == ["pkg.a -> pkg.sub.b -> pkg.a"]
