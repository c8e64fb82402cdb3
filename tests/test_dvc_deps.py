"""dvc.yaml declares, for every stage, exactly the code files that stage runs.

The import graph is read from the sources (ast), so adding an import to a pipeline module
without declaring it in dvc.yaml (a stale cache waiting to happen) fails here, and so does
a declared file the stage never imports (needless reruns). A module of a package
(`pipeline/data/augment.py`) is declared as its file, so an edit reruns only the stages that
import it; a package may instead be declared as its folder (`pipeline/synthesize`), which
DVC hashes as a whole: then importing any of its modules depends on all of them, and the
imports of all of them count. A package's `__init__.py` holds its docstring and no code, so a
module-by-module declaration leaves nothing out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LOCAL_PACKAGES = ("pipeline", "stages")


def dvc_stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def module_path(parts: list[str], whole_packages: set[Path]) -> Path | None:
    """The file or package folder that `pipeline.x[.y]` names, if it is in the project: a
    package in `whole_packages` is named by its folder, any other by the module's file."""
    folder = ROOT / parts[0] / parts[1]
    if (folder / "__init__.py").is_file():
        if folder in whole_packages or len(parts) < 3:
            return folder
        candidate = folder / f"{parts[2]}.py"
        return candidate if candidate.is_file() else None
    candidate = ROOT / parts[0] / f"{parts[1]}.py"
    return candidate if candidate.is_file() else None


def local_imports(path: Path, whole_packages: set[Path]) -> set[Path]:
    """Project files and packages imported by `path` (a file, or every file of a package),
    through absolute `pipeline.x`/`stages.x` imports."""
    found: set[Path] = set()
    sources = sorted(path.glob("*.py")) if path.is_dir() else [path]
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] in LOCAL_PACKAGES and len(parts) >= 2:
                    module = module_path(parts, whole_packages)
                    # `from pipeline.data import augment` names the folder, then the file.
                    if module is not None and module != path and not (
                        module.is_dir() and module not in whole_packages
                    ):
                        found.add(module)
    return found


def code_closure(entry: Path, whole_packages: set[Path]) -> set[str]:
    seen: set[Path] = set()
    todo = [entry]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo.extend(local_imports(current, whole_packages) - seen)
    return {p.relative_to(ROOT).as_posix() for p in seen}


@pytest.mark.parametrize("name", sorted(dvc_stages()))
def test_stage_declares_exactly_the_code_it_runs(name):
    stage = dvc_stages()[name]
    module = stage["cmd"].split("-m ", 1)[1].split()[0]
    entry = ROOT / (module.replace(".", "/") + ".py")
    declared = {d for d in stage["deps"] if d.split("/")[0] in LOCAL_PACKAGES}
    whole_packages = {ROOT / d for d in declared if (ROOT / d).is_dir()}
    assert declared == code_closure(entry, whole_packages), (
        f"stage {name}: declared code deps differ from what {entry.name} imports"
    )


def test_package_init_files_hold_no_code():
    """A file-by-file declaration leaves out `__init__.py`, which Python runs on import."""
    for init in sorted((ROOT / "pipeline").glob("*/__init__.py")):
        body = ast.parse(init.read_text()).body
        docstring = body[:1] if body and isinstance(body[0], ast.Expr) else []
        assert body == docstring, f"{init.relative_to(ROOT)} holds code"


# pipeline/'s packages as the DAG reads them; a module imports the shared modules at the top
# of pipeline/, its own package and the packages before it, never one after it.
LAYERS = ("synthesize", "data", "model", "infer", "evaluate", "report")


def test_packages_import_only_downward():
    rank = {ROOT / "pipeline" / name: place for place, name in enumerate(LAYERS)}
    assert set(rank) == {init.parent for init in (ROOT / "pipeline").glob("*/__init__.py")}
    for source in sorted((ROOT / "pipeline").rglob("*.py")):
        package = source.parent
        for imported in local_imports(source, whole_packages=set()):
            target = imported if imported.is_dir() else imported.parent
            if target == ROOT / "pipeline":
                continue  # a shared module
            assert package != ROOT / "pipeline", f"shared {source.name} imports {imported}"
            assert rank[target] < rank[package] or target == package, (
                f"{source.relative_to(ROOT)} imports {imported.relative_to(ROOT)}, a later layer"
            )


# `evaluate` read top to bottom: the metrics' definitions, scoring, summarising, drawing, and
# `run`, which calls them in that order; a module imports only the ones before it.
EVALUATE_ORDER = (
    "measures",
    "scores",
    "pooled",
    "cases",
    "agreement",
    "summary",
    "headline",
    "figures",
    "run",
)


def test_evaluate_modules_import_only_earlier_ones():
    folder = ROOT / "pipeline" / "evaluate"
    place = {folder / f"{name}.py": index for index, name in enumerate(EVALUATE_ORDER)}
    assert set(place) == set(folder.glob("*.py")) - {folder / "__init__.py"}
    for source, index in place.items():
        for imported in local_imports(source, whole_packages=set()):
            if imported.parent == folder:
                assert place[imported] < index, f"{source.name} imports {imported.name}"


def import_cycle(graph: dict[Path, set[Path]]) -> list[Path] | None:
    """One import cycle of `graph` (module -> modules it imports) as the modules along it,
    first repeated last; None when there is none."""
    finished: set[Path] = set()

    def visit(module: Path, path: list[Path]) -> list[Path] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in finished:
            return None
        for imported in sorted(graph.get(module, set())):
            cycle = visit(imported, [*path, module])
            if cycle is not None:
                return cycle
        finished.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module, [])
        if cycle is not None:
            return cycle
    return None


def test_import_cycle_finder_finds_a_loop():
    a, b, c = Path("a.py"), Path("b.py"), Path("c.py")
    assert import_cycle({a: {b}, b: {c}, c: set()}) is None
    assert import_cycle({a: {b}, b: {c}, c: {a}}) == [a, b, c, a]
    assert import_cycle({a: {a}}) == [a, a]


def test_no_module_imports_one_that_imports_it_back():
    """No import cycle in pipeline/, however long and however guarded: `local_imports` reads
    every import statement of a file, `if TYPE_CHECKING:` blocks and function bodies included,
    so a loop hidden from the interpreter is still a loop to the reader."""
    sources = sorted((ROOT / "pipeline").rglob("*.py"))
    graph = {source: local_imports(source, whole_packages=set()) for source in sources}
    cycle = import_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(
        module.relative_to(ROOT).as_posix() for module in cycle
    )
