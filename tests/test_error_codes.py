"""The error-code registry (``service/error_codes.py``) is complete and docs/api.md shows it.

Completeness is read from the code itself: every string given as an error code anywhere in
``src/mlsharp`` (a ``code = "..."`` class attribute, a ``code="..."`` argument, a
``{"code": "..."}`` job error, ``error_response(path, status, "...")`` and the fallback codes
of ``http_errors.py``) must be in the registry with the status the code sends, and every
registry entry must be used somewhere.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import mlsharp
from mlsharp.errors import MlsharpError
from mlsharp.service.error_codes import ERROR_CODES, markdown_tables

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src" / "mlsharp"
BEGIN, END = "<!-- error-codes:begin (generated", "<!-- error-codes:end -->"


def codes_in_source() -> dict[str, set[str]]:
    """code -> the files that use it as an error code."""
    found: dict[str, set[str]] = {}

    def add(node: ast.AST, where: Path) -> None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.setdefault(node.value, set()).add(str(where.relative_to(SOURCE)))

    for path in SOURCE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    targets = item.targets if isinstance(item, ast.Assign) else []
                    if any(isinstance(t, ast.Name) and t.id == "code" for t in targets):
                        add(item.value, path)  # type: ignore[union-attr]
            elif isinstance(node, ast.keyword) and node.arg == "code":
                add(node.value, path)
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value == "code":
                        add(value, path)
            elif isinstance(node, ast.Call):
                func = node.func
                name = getattr(func, "id", getattr(func, "attr", ""))
                if name == "error_response" and len(node.args) >= 3:
                    add(node.args[2], path)
                owner = getattr(func, "value", None)
                if name == "get" and getattr(owner, "id", "") == "_CODES_BY_STATUS":
                    add(node.args[1], path)  # the fallback code
            elif isinstance(node, ast.Assign) and any(
                getattr(t, "id", "") == "_CODES_BY_STATUS" for t in node.targets
            ):
                for value in node.value.values:  # type: ignore[attr-defined]
                    add(value, path)
    return found


def test_every_code_in_the_source_is_registered_and_every_registered_code_is_used():
    used = codes_in_source()
    registered = {entry.code for entry in ERROR_CODES}
    missing = {code: sorted(files) for code, files in used.items() if code not in registered}
    assert not missing, f"add these to service/error_codes.py: {missing}"
    assert not registered - set(used), f"registered but never used: {registered - set(used)}"
    assert len(registered) == len(ERROR_CODES), "a code is registered twice"


def test_registered_statuses_are_what_the_exceptions_send():
    for module in pkgutil.walk_packages(mlsharp.__path__, "mlsharp."):
        if not module.name.endswith("__main__") and ".web" not in module.name:
            importlib.import_module(module.name)
    status = {e.code: e.status for e in ERROR_CODES}
    pending = list(MlsharpError.__subclasses__())
    seen = {MlsharpError}
    while pending:
        cls = pending.pop()
        if cls in seen:
            continue
        seen.add(cls)
        pending += cls.__subclasses__()
        if "code" in vars(cls) and "http_status" in {k for c in cls.__mro__ for k in vars(c)}:
            assert status[cls.code] == cls.http_status, cls


def test_docs_api_lists_exactly_the_registry():
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    start = text.index(BEGIN)
    start = text.index("\n", start) + 1
    end = text.index(END)
    assert text[start:end].strip() == markdown_tables().strip(), (
        "docs/api.md's error tables differ from service/error_codes.py: paste the output of "
        '`python -c "from mlsharp.service.error_codes import markdown_tables as t; '
        'print(t())"` between the error-codes markers'
    )
