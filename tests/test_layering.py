"""The layering rules of docs/architecture.md ("Layers"), checked on the source's imports.

Every ``import`` and ``from ... import`` in ``src/mlsharp`` is read with :mod:`ast` (also
the ones inside functions, which load lazily but still depend); a rule names what a
group of modules may not import.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

from tests.conftest import REPO

SRC = REPO / "src" / "mlsharp"

#: Modules that build or wrap an Engine: above it, so they may import it.
ABOVE_THE_ENGINE = {"mlsharp.runtime.autotune", "mlsharp.runtime.doctor", "mlsharp.runtime.batcher"}
#: The forward runtimes' modules that compare an Engine with an export: above the engine.
BACKENDS_ABOVE_THE_ENGINE = {"mlsharp.backends.verify"}
#: The optional runtimes' packages (extras): imported by backends/ only.
OPTIONAL_RUNTIMES = {"openvino", "onnxruntime", "onnx", "nncf"}
#: The scale-out adapters (Redis, Dramatiq, S3): only the composition root picks them.
SCALE_OUT = {
    "mlsharp.service.jobs.redis",
    "mlsharp.service.webhooks.redis",
    "mlsharp.service.cache.redis",
    "mlsharp.service.limits.redis",
    "mlsharp.service.files.s3",
    "mlsharp.service.queue.dramatiq",
    "mlsharp.service.queue.reconcile",
    "mlsharp.service.redis_conn",
}
#: The embedded adapters (SQLite, local files, in-process).
EMBEDDED = {
    "mlsharp.service.database",
    "mlsharp.service.jobs.sqlite",
    "mlsharp.service.webhooks.sqlite",
    "mlsharp.service.cache.sqlite",
    "mlsharp.service.limits.memory",
    "mlsharp.service.files.local",
    "mlsharp.service.queue.local",
}
ADAPTERS = SCALE_OUT | EMBEDDED
#: Routes and the policies written over the ports: they see ports only. (The app asks the
#: composition root for its parts; it is the shell around both.)
POLICIES = {
    "mlsharp.service.state",
    "mlsharp.service.submit",
    "mlsharp.service.jobs.runner",
    "mlsharp.service.webhooks.dispatcher",
    "mlsharp.service.cache.policy",
    "mlsharp.service.limits.bucket",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports (``from a import b`` counts ``a`` and ``a.b``)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


MODULES = {module_name(path): path for path in sorted(SRC.rglob("*.py"))}
IMPORTS = {name: imports(path) for name, path in MODULES.items()}


def offenders(modules: set[str], forbidden) -> dict[str, list[str]]:
    """``{module: [what it imports that it may not]}`` for ``modules``."""
    bad = {}
    for name in sorted(modules):
        hits = sorted(m for m in IMPORTS[name] if forbidden(m))
        if hits:
            bad[name] = hits
    return bad


def under(prefix: str) -> set[str]:
    return {m for m in MODULES if m == prefix or m.startswith(prefix + ".")}


def test_the_rules_see_the_modules_they_name() -> None:
    """A renamed module must not silently fall out of a rule."""
    named = ABOVE_THE_ENGINE | BACKENDS_ABOVE_THE_ENGINE | ADAPTERS | POLICIES
    named |= {"mlsharp.service.backends"}
    assert named <= set(MODULES), sorted(named - set(MODULES))


def test_splat_never_imports_torch() -> None:
    assert offenders(under("mlsharp.splat"), lambda m: m.split(".")[0] == "torch") == {}


def test_engine_internals_never_import_the_engine() -> None:
    internals = under("mlsharp.runtime") - ABOVE_THE_ENGINE
    assert offenders(internals, lambda m: m == "mlsharp.engine") == {}


def test_forward_runtimes_never_import_the_engine() -> None:
    """The Engine builds a runtime of backends/; a runtime does not reach back up."""
    runtimes = under("mlsharp.backends") - BACKENDS_ABOVE_THE_ENGINE
    assert offenders(runtimes, lambda m: m == "mlsharp.engine") == {}


def test_backends_never_import_the_front_ends() -> None:
    front_ends = ("mlsharp.service", "mlsharp.commands", "mlsharp.cli")
    assert offenders(under("mlsharp.backends"), lambda m: m.startswith(front_ends)) == {}


def test_only_backends_import_the_optional_runtimes() -> None:
    """A missing extra (openvino, onnxruntime) can only fail inside backends/."""
    outside = set(MODULES) - under("mlsharp.backends")
    assert offenders(outside, lambda m: m.split(".")[0] in OPTIONAL_RUNTIMES) == {}


def test_only_the_composition_root_imports_a_scale_out_adapter() -> None:
    outside = set(MODULES) - SCALE_OUT - {"mlsharp.service.backends"}
    assert offenders(outside, lambda m: m in SCALE_OUT) == {}


@pytest.mark.parametrize("group", ["api", "policies"])
def test_routes_and_policies_see_ports_only(group: str) -> None:
    modules = under("mlsharp.service.api") if group == "api" else POLICIES
    assert offenders(modules, lambda m: m in ADAPTERS or m == "mlsharp.service.backends") == {}


def test_the_library_never_imports_the_service() -> None:
    library = set(MODULES) - under("mlsharp.service") - under("mlsharp.commands")
    library -= {"mlsharp.cli", "mlsharp.__main__"}
    assert offenders(library, lambda m: m.startswith("mlsharp.service")) == {}


def test_no_import_cycle_in_the_service() -> None:
    """Module-level imports between service modules form no cycle (the embedded and the
    scale-out state used to import each other)."""
    graph = {}
    for name in under("mlsharp.service"):
        tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
        top: set[str] = set()
        for node in tree.body:  # module level only, and not `if TYPE_CHECKING:` blocks
            if isinstance(node, ast.ImportFrom) and node.module:
                top.add(node.module)
                top.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                top.update(alias.name for alias in node.names)
        graph[name] = {
            m for m in top if m in MODULES and m != name and m.startswith("mlsharp.service")
        }

    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    return [*path, start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
        return None

    # A package's __init__ importing its own submodules is how packages work, not a cycle.
    cycles = [c for n in graph if (c := cycle_from(n)) and not _package_init_only(c)]
    assert cycles == []


def _package_init_only(cycle: list[str]) -> bool:
    return any(
        MODULES[a].name == "__init__.py" and b.startswith(a + ".")
        for a, b in itertools.pairwise(cycle)
    )
