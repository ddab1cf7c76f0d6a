"""shared/ is the lowest layer: none of its modules may reach up into app/ or worker/.

Not even inside a function or through importlib: a lazy import still makes shared/ depend on
the packages above it (and an API-only install on the worker's). The commands of app/ and
worker/ reach `tmde-finetune` through entry points instead (shared/commands.py).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UPPER = ("app", "worker")
# a whole string naming one of their modules (or a "module:attribute" entry): importlib targets
# kept in a table and looked up later reach up as surely as an import statement
MODULE_PATH = re.compile(r"(app|worker)(\.[A-Za-z_]\w*)+(:[A-Za-z_]\w*)?")
COMMANDS = ("api", "worker", "beat", "flower", "adapters", "demo", "export", "train")


def _reaches_up(module: str | None) -> bool:
    return bool(module) and module.split(".")[0] in UPPER


def _is_import_module(call: ast.Call) -> bool:
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return name in ("import_module", "__import__")


def upward_imports(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, module) of every import of app/worker in the tree, at any depth."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names if _reaches_up(a.name))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _reaches_up(node.module):
            yield node.lineno, node.module or ""
        elif isinstance(node, ast.Call) and _is_import_module(node) and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and _reaches_up(str(first.value)):
                yield node.lineno, str(first.value)
        elif isinstance(node, ast.Constant) and MODULE_PATH.fullmatch(str(node.value)):
            yield node.lineno, str(node.value)


def _shared_modules() -> list[Path]:
    return sorted((REPO / "shared").rglob("*.py"))


@pytest.mark.parametrize("path", _shared_modules(), ids=lambda p: p.name)
def test_shared_never_imports_app_or_worker(path: Path) -> None:
    found = list(upward_imports(ast.parse(path.read_text(), str(path))))
    assert not found, f"{path.relative_to(REPO)} reaches up: {found}"


@pytest.mark.parametrize(
    "source",
    [
        "def f():\n    from worker.delivery import export_gguf\n",
        "import app\n",
        "import worker.celery_app as c\n",
        "import importlib\nimportlib.import_module('worker.export')\n",
        "from importlib import import_module\nimport_module('app.cli')\n",
        "PASSTHROUGH = {'export': 'worker.export', 'api': 'app.cli:register'}\n",
    ],
)
def test_the_check_sees_every_form(source: str) -> None:
    assert list(upward_imports(ast.parse(source)))


def test_the_check_allows_lookalikes() -> None:
    source = (
        "import application\nfrom shared import worker_tools\nimport_module('shared.cli')\n"
        "doc = 'logs look like {\"logger\": \"worker.pipeline\"}'\nprefix = 'app.'\n"
    )
    assert not list(upward_imports(ast.parse(source)))


def test_the_root_command_lists_every_package_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shared.cli", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    listed = {line.split()[0] for line in result.stdout.splitlines() if line.startswith("    ")}
    assert set(COMMANDS) <= listed, result.stdout
