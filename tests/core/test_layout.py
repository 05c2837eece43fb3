"""The package reads as the pipeline: stages use the shared core, the core never uses a stage, no stage cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import sst2dist

PACKAGE = Path(sst2dist.__file__).parent
STAGES = {"train", "distill", "export", "bench", "serve", "predict", "prune"}
FRONT_DOOR = {"cli"}  # the command line sits above every stage


def imported_parts(path: Path) -> set[str]:
    """The sst2dist subpackages or core modules that a file imports (`sst2dist.train.loop` -> `train`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        found |= {name.split(".")[1] for name in names if name.startswith("sst2dist.")}
    return found


def part_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE).with_suffix("")
    return relative.parts[0]


def stage_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        source = part_of(path)
        graph.setdefault(source, set()).update(imported_parts(path) - {source})
    return graph


def test_every_stage_is_a_subpackage_with_a_docstring() -> None:
    for stage in STAGES:
        init = PACKAGE / stage / "__init__.py"
        assert init.is_file(), f"{stage}/ is not a package"
        assert ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))), f"{stage}/__init__.py says nothing"


def test_the_core_uses_no_stage() -> None:
    graph = stage_graph()
    core = set(graph) - STAGES - FRONT_DOOR
    offenders = {module: graph[module] & (STAGES | FRONT_DOOR) for module in core if graph[module] & STAGES}
    assert not offenders, f"core modules importing a stage: {offenders}"


def test_stages_import_each_other_without_cycles() -> None:
    graph = stage_graph()
    stage_edges = {stage: graph.get(stage, set()) & STAGES for stage in STAGES}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})) for nxt in stage_edges[start])

    cycles = [stage for stage in STAGES if reaches(stage, stage, set())]
    assert not cycles, f"stages in an import cycle: {cycles} ({stage_edges})"


def test_no_module_imports_a_module_that_imports_it_back() -> None:
    modules = {".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts): path for path in PACKAGE.rglob("*.py")}
    direct = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        direct[name] = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module in modules}
    pairs = sorted((a, b) for a, targets in direct.items() for b in targets if a in direct.get(b, set()) and a < b)
    assert not pairs, f"import cycles between modules: {pairs}"
