"""The daemon's layout has no import circle: neither between the subpackages of taskmasterd
(control, jobfiles, lifecycle, processes, health, observe, kernel, colonies) nor between its
modules. Every import counts — at the top, inside a function, or only for type checking — since
each one is a dependency a reader has to hold in mind. Walked with `ast`, without importing
anything."""
from __future__ import annotations

import ast
from pathlib import Path

from taskmasterd.jobfiles.cycles import find_cycle  # the one the daemon uses for depends_on

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("taskmasterd",)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")}


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ours that `name` imports, anywhere in it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from . import x` and `from .pkg import mod` name modules; `from .mod import f` names a module's member
            targets = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in known else stem for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def room(module: str) -> str:
    """The subpackage a module lives in (a top-level module is a room of its own)."""
    parts = module.split(".")
    return ".".join(parts[:2])


def test_no_module_imports_itself_back():
    cycle = find_cycle(graph())
    assert cycle is None, " -> ".join(cycle or ())


def test_no_subpackage_imports_itself_back():
    rooms: dict[str, set[str]] = {}
    for module, targets in graph().items():
        here = room(module)
        rooms.setdefault(here, set()).update(room(t) for t in targets if room(t) != here)
    cycle = find_cycle(rooms)
    assert cycle is None, " -> ".join(cycle or ())


def test_the_checker_sees_a_cycle(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from .sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from ..a import g\n")
    known = {"pkg.a": package / "a.py", "pkg.sub": package / "sub" / "__init__.py", "pkg.sub.b": package / "sub" / "b.py"}
    edges = {name: imports_of(name, path, known) for name, path in known.items()}
    assert edges["pkg.a"] == {"pkg.sub.b"} and edges["pkg.sub.b"] == {"pkg.a"}
    assert find_cycle(edges) == ("pkg.a", "pkg.sub.b", "pkg.a")
