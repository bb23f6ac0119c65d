"""Parse PowerShell with a real grammar (tree-sitter's PowerShell grammar, from PyPI).

The project's PowerShell scripts and documented PowerShell commands cannot run here (no
Windows, no pwsh), so a syntax error is caught by parsing: any ERROR or MISSING node in
the tree fails. ``tree-sitter`` and ``tree-sitter-powershell`` are in the ``dev`` extra;
without them the callers skip (under CI=true they fail instead).
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import pytest


@cache
def _parser() -> Any:
    try:
        import tree_sitter
        import tree_sitter_powershell
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("tree-sitter-powershell is not installed (pip install -e '.[dev]')")
    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))


def syntax_errors(source: str) -> list[str]:
    """Where the PowerShell grammar finds errors in ``source`` (empty when it parses)."""
    tree = _parser().parse(source.encode("utf-8"))
    problems: list[str] = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.is_error or node.is_missing:
            line, column = node.start_point
            kind = "missing " + node.type if node.is_missing else "unexpected"
            snippet = source.splitlines()[line][:80] if source.splitlines() else ""
            problems.append(f"line {line + 1}, column {column + 1}: {kind}: {snippet!r}")
        elif node.has_error:
            stack.extend(node.children)
    return sorted(problems)


def powershell7_only(source: str) -> list[str]:
    """Uses of the pipeline chain operators ``&&`` and ``||``: PowerShell 7 has them,
    Windows PowerShell 5.1 (what Windows 10/11 start by default) refuses the whole line."""
    tree = _parser().parse(source.encode("utf-8"))
    found: list[str] = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.type == "pipeline_chain_tail":
            found.append(f"line {node.start_point[0] + 1}: {node.text.decode()[:40]!r}")
        stack.extend(node.children)
    return sorted(found)


def assert_parses(source: str, what: str) -> None:
    """Fail with the positions of every syntax error of ``source`` (named ``what``), and
    at each PowerShell-7-only operator (the scripts and docs target 5.1 too)."""
    errors = syntax_errors(source) + [
        f"{where}: && / || need PowerShell 7; write `a; if ($?) {{ b }}`"
        for where in powershell7_only(source)
    ]
    assert not errors, f"{what} is not valid PowerShell:\n  " + "\n  ".join(errors)
