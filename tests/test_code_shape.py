"""Shape rules the code keeps (issue: long functions that hide their data flow)."""

from __future__ import annotations

import ast

from tests.device_fixtures import REPO

MAX_FUNCTION_LINES = 80
PACKAGES = ("device", "convert", "train")


def long_functions() -> list[tuple[str, int, bool]]:
    """(place, lines, whether its docstring says why it is long) of every function over
    MAX_FUNCTION_LINES in device/, convert/ and train/."""
    found = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        doc = (ast.get_docstring(node) or "").lower()
                        place = f"{path.relative_to(REPO)}:{node.lineno} {node.name}"
                        found.append((place, lines, "long because" in doc))
    return found


def test_no_function_over_80_lines_without_a_reason() -> None:
    unexplained = [(place, lines) for place, lines, why in long_functions() if not why]
    assert not unexplained, (
        f"functions over {MAX_FUNCTION_LINES} lines: split them into named steps, or say "
        f"'Long because: ...' in the docstring: {unexplained}"
    )
