"""Imports in agent/ point one way, down the layers, with no circles (read from the source with
ast: every import counts, also those inside functions or under TYPE_CHECKING).

    settings/compute < data < llm < items/prompts/store < profiles < models < rerank
             < pipeline/scoring < service < api/cli/integrations

The LLM client (agent.llm) needs only the settings; item texts (agent.items) and prompts use
it, and so do profiles. Models sit above profiles because LLM4CDSR reads the users' LLM profiles
as input, as SemaCDR reads the items' LLM descriptions. ``eval`` and ``finetune`` are above the
whole library: only the command line (agent.cli) imports them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parents[2] / "agent"

# Lowest first. A name matches itself and its submodules; the longest match wins.
LAYERS: list[tuple[str, ...]] = [
    (
        "agent",  # the package itself (its __init__ only: see _layer_of)
        "agent.config",
        "agent.models.method_settings",  # pure pydantic settings that config embeds
        "agent.logging_setup",
        "agent.sqlite_store",
        "agent.compute",  # the Ray engine's batch jobs: rows through an actor pool, generic
    ),
    ("agent.data",),
    ("agent.llm",),
    ("agent.items", "agent.prompts", "agent.store"),
    ("agent.profiles",),
    ("agent.models", "agent.compute.train"),  # Ray Train runs the models' training loop
    ("agent.rerank",),
    ("agent.pipeline", "agent.scoring"),
    ("agent.service",),
    ("agent.api", "agent.cli", "agent.integrations"),
]
TOP_LEVEL_ONLY_FROM_CLI = ("eval", "finetune")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(AGENT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(AGENT.rglob("*.py"))}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules ``name`` imports: ``from a.b import c`` counts as ``a.b.c`` when that is a
    module (a submodule import), else as ``a.b``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level-1 steps
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parent, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in modules else base)
    return out


def _layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (match length, layer)
    for layer, names in enumerate(LAYERS):
        for prefix in names:
            exact_only = prefix == "agent"
            matches = module == prefix or (not exact_only and module.startswith(prefix + "."))
            if matches and (best is None or len(prefix) > best[0]):
                best = (len(prefix), layer)
    return None if best is None else best[1]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_every_agent_module_has_a_layer() -> None:
    unplaced = sorted(m for m in _modules() if _layer_of(m) is None)
    assert not unplaced, f"add these to LAYERS in {Path(__file__).name}: {unplaced}"


def test_imports_point_down_the_layers() -> None:
    upward: list[str] = []
    for module, targets in sorted(_graph().items()):
        own = _layer_of(module)
        assert own is not None
        for target in sorted(targets):
            if target.split(".")[0] != "agent":
                continue
            theirs = _layer_of(target)
            if theirs is not None and theirs > own:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports pointing up a layer:\n" + "\n".join(upward)


def test_only_the_cli_imports_eval_or_finetune() -> None:
    found = [
        f"{module} -> {target}"
        for module, targets in sorted(_graph().items())
        if not (module == "agent.cli" or module.startswith("agent.cli."))
        for target in sorted(targets)
        if target.split(".")[0] in TOP_LEVEL_ONLY_FROM_CLI
    ]
    assert not found, "the library imports eval/finetune:\n" + "\n".join(found)


def test_no_import_circles() -> None:
    graph = _graph()
    edges = {m: {t for t in targets if t in graph and t != m} for m, targets in graph.items()}
    # Tarjan's strongly connected components: any with two or more modules is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    assert not circles, f"import circles: {circles}"


@pytest.mark.parametrize(
    ("module", "layer"),
    [
        ("agent", 0),
        ("agent.config", 0),
        ("agent.models.method_settings", 0),
        ("agent.models.sasrec", 5),
        ("agent.models.prepare", 5),
        ("agent.service.core", 8),
        ("agent.cli.run_cmd", 9),
    ],
)
def test_layer_table(module: str, layer: int) -> None:
    assert _layer_of(module) == layer
