"""dvc.yaml declares, for every stage, exactly the code files that stage runs.

The import graph is read from the sources (ast), so adding an import to a pipeline module
without declaring it in dvc.yaml (a stale cache waiting to happen) fails here, and so does
a declared file the stage never imports (needless reruns). A package (`pipeline/synthesize/`)
is declared as its folder, which DVC hashes as a whole: importing any of its modules depends
on all of them, and the imports of all of them count.
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


def module_path(parts: list[str]) -> Path | None:
    """The file or package folder that `pipeline.x[.y]` names, if it is in the project."""
    folder = ROOT / parts[0] / parts[1]
    if (folder / "__init__.py").is_file():
        return folder
    candidate = ROOT / parts[0] / f"{parts[1]}.py"
    return candidate if candidate.is_file() else None


def local_imports(path: Path) -> set[Path]:
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
                    module = module_path(parts)
                    if module is not None and module != path:
                        found.add(module)
    return found


def code_closure(entry: Path) -> set[str]:
    seen: set[Path] = set()
    todo = [entry]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo.extend(local_imports(current) - seen)
    return {p.relative_to(ROOT).as_posix() for p in seen}


@pytest.mark.parametrize("name", sorted(dvc_stages()))
def test_stage_declares_exactly_the_code_it_runs(name):
    stage = dvc_stages()[name]
    module = stage["cmd"].split("-m ", 1)[1].split()[0]
    entry = ROOT / (module.replace(".", "/") + ".py")
    declared = {d for d in stage["deps"] if d.split("/")[0] in LOCAL_PACKAGES}
    assert declared == code_closure(entry), (
        f"stage {name}: declared code deps differ from what {entry.name} imports"
    )
