"""Which library files a workflow script runs, read from its imports (no import is executed).

Snakemake's code trigger sees only a rule's script; the rules declare these files as inputs so that
editing a module a job runs reruns that job, and editing any other module reruns nothing.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = "mnemo"


def _module_file(root: Path, dotted: str) -> Path | None:
    """The file of `mnemo.a.b` under root (src/mnemo): a module, or a package's __init__."""
    parts = dotted.split(".")[1:]
    base = root.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_of(path: Path, root: Path) -> list[str] | None:
    """The dotted package a file under root belongs to (what its relative imports start from)."""
    try:
        parts = list(path.relative_to(root).with_suffix("").parts)
    except ValueError:  # a script outside the package has no relative imports
        return None
    return [PACKAGE, *parts[:-1]]


def _imported_modules(path: Path, root: Path) -> set[str]:
    """Dotted mnemo modules a file imports anywhere (module level or inside functions)."""
    found: set[str] = set()
    package = _package_of(path, root)
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # `from . import x`, `from ..data import y` inside the package
                if package is None or node.level > len(package):
                    continue
                base = package[:len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != PACKAGE:
                continue
            found.add(module)
            # `from mnemo.data import chexpert` imports the submodule chexpert (if it is one)
            found.update(f"{module}.{a.name}" for a in node.names if a.name != "*")
    return found


@cache
def library_files(script: str | Path, root: str | Path) -> tuple[str, ...]:
    """Every mnemo source file `script` runs: its imports, theirs, and the packages around them."""
    root = Path(root)
    seen: set[Path] = set()
    pending = [Path(script)]
    while pending:
        current = pending.pop()
        for dotted in _imported_modules(current, root):
            parts = dotted.split(".")
            for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
                file = _module_file(root, ".".join(parts[:depth]))
                if file is not None and file not in seen:
                    seen.add(file)
                    pending.append(file)
    return tuple(sorted(str(p) for p in seen))
