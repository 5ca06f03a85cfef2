"""The house rules a linter does not check: short functions in the product's code."""

from __future__ import annotations

import ast

from core import config

LONGEST = 60  # lines, decorators excluded


def test_no_function_in_core_pages_or_ui_is_longer_than_60_lines():
    too_long = []
    for folder in ("core", "pages", "ui"):
        for path in sorted((config.ROOT / folder).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > LONGEST:
                        too_long.append(f"{path.relative_to(config.ROOT)}:{node.lineno} {node.name}: {lines} lines")
    assert not too_long, "\n".join(too_long)
