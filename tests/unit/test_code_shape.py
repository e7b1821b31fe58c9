"""Code that a reader can hold in their head: functions of at most 60 lines, modules of at most 500
(the style guide's ~40 and ~500, with room for a docstring). Generated stubs are not counted."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(
    p for top in ("shared", "services") for p in (ROOT / top).rglob("*.py") if "gen" not in p.parts
)
MAX_FUNCTION, MAX_MODULE = 60, 500


def test_functions_are_short() -> None:
    long = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == [], "split these functions"


def test_modules_are_small() -> None:
    big = [
        f"{p.relative_to(ROOT)} ({n} lines)"
        for p in SOURCES
        if (n := len(p.read_text().splitlines())) > MAX_MODULE
    ]
    assert big == [], "split these modules"
