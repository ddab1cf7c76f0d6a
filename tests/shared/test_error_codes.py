"""One error table (shared/names.py): every ErrorCode has an exit code, every error class uses
a member, and no module writes a code as a free string that could drift from the table."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from shared import errors, registry
from shared.names import EXIT_CODES, ErrorCode, ExitCode, exit_code_for, exit_status

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("app", "worker", "shared")


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_error_code_has_an_exit_code(code: ErrorCode) -> None:
    assert isinstance(EXIT_CODES[code], ExitCode)
    assert exit_code_for(code) is exit_code_for(code.value) is EXIT_CODES[code]


def test_the_seed_mappings_are_kept() -> None:
    assert exit_code_for(ErrorCode.INSUFFICIENT_DATA) == 2
    assert exit_code_for(ErrorCode.OOM) == exit_code_for(ErrorCode.GPU) == 3
    assert exit_code_for(ErrorCode.MODEL_NOT_FOUND) == 4
    assert exit_code_for(ErrorCode.CANCELLED) == 130
    assert exit_code_for(ErrorCode.HANDED_OVER) == 143
    assert exit_code_for("SOMETHING_NEWER") is ExitCode.GENERAL_ERROR


def test_exit_status_of_any_value() -> None:
    assert exit_status(None) is ExitCode.SUCCESS and exit_status(4) is ExitCode.MODEL_NOT_FOUND
    assert exit_status(77) is ExitCode.GENERAL_ERROR


def test_stored_strings_are_unchanged() -> None:
    assert all(code.value == code.name for code in ErrorCode)
    assert f"{ErrorCode.OOM}" == str(ErrorCode.OOM) == "OOM"


def test_every_error_class_code_is_a_member() -> None:
    from worker import adapters_cli  # its ExportFailedError is an AdapterError too

    classes = [errors.PipelineError, *_subclasses(errors.PipelineError)]
    classes += [registry.AdapterError, *_subclasses(registry.AdapterError)]
    assert adapters_cli.ExportFailedError in classes and len(classes) > 8
    for cls in classes:
        assert isinstance(cls.code, ErrorCode), cls
    assert errors.HandedOverError("x").exit_code is ExitCode.HANDED_OVER


def string_code_assignments(tree: ast.AST) -> list[int]:
    """Lines that assign a string literal to `code` (`code = "X"`, `self.code: str = "X"`)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        named_code = any(getattr(t, "id", getattr(t, "attr", None)) == "code" for t in targets)
        if named_code and isinstance(value, ast.Constant) and isinstance(value.value, str):
            lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("package", PACKAGES)
def test_no_code_is_assigned_a_string_literal(package: str) -> None:
    found = {
        str(path.relative_to(REPO)): lines
        for path in sorted((REPO / package).rglob("*.py"))
        if (lines := string_code_assignments(ast.parse(path.read_text(), str(path))))
    }
    assert not found, f"use an ErrorCode member: {found}"


def test_the_check_sees_a_string_code() -> None:
    source = 'class E(Exception):\n    code = "OOM"\nclass F:\n    code: str = "X"\n'
    assert string_code_assignments(ast.parse(source)) == [2, 4]
    assert string_code_assignments(ast.parse("code = ErrorCode.OOM\n")) == []
