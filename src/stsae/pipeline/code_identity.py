"""The code a stage runs, as one digest: the stage's module and every module of its package that it
imports, directly or through others (read from the source, not from what happens to be imported).

Why: a fingerprint of config, inputs and the package version alone let an edited stage, or an edited
helper it calls, silently reuse outputs that the old code made (a research tool is edited between runs
far more often than its version is bumped). Following imports keeps the invalidation narrow: editing
the aging code reruns `age` and what follows, not a 90-minute extraction.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import re
from pathlib import Path


def _source_file(module: str, root: Path) -> Path | None:
    """The .py file of `module` under its top-level package's folder `root`, or None when the name is
    not a module there (an attribute imported from a package). Looked up on disk: nothing is imported."""
    parts = module.split(".")[1:]
    candidates = [root.joinpath(*parts, "__init__.py")]
    if parts:
        candidates.append(root.joinpath(*parts[:-1], parts[-1] + ".py"))
    return next((path for path in candidates if path.is_file()), None)


def _package_chain(module: str) -> list[str]:
    """`a.b.c` -> [`a`, `a.b`, `a.b.c`]: importing a module runs each parent package's __init__ first."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


_IMPORT = re.compile(r"^[ \t]*(?:from[ \t]+(\.*[\w.]*)[ \t]+import[ \t]+(\([^)]*\)|[^\n#]*)|import[ \t]+([^\n#]*))",
                     re.MULTILINE)


@functools.cache
def _imported(path: Path, module: str) -> frozenset[str]:
    """Every module name an import statement in the file may load, at any depth of the code (relative
    imports resolved; `from p import name` counts both p and p.name, of which only modules are kept
    later). A line scan, not a parse (a parse of every module per run cost seconds): a docstring line
    that reads like an import only adds a file to the digest, never drops one."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for base, listed, plain in _IMPORT.findall(path.read_text(encoding="utf-8")):
        if plain:
            names.update(part.split(" as ")[0].strip() for part in plain.split(","))
            continue
        if base.startswith("."):
            level = len(base) - len(base.lstrip("."))
            anchor = package.split(".")[: len(package.split(".")) - level + 1]
            base = ".".join([*anchor, base.lstrip(".")] if base.lstrip(".") else anchor)
        names.add(base)
        for part in re.sub(r"#[^\n]*", "", listed).strip("()").replace("\\", " ").split(","):
            alias = part.split(" as ")[0].strip()
            if alias and alias != "*":
                names.add(f"{base}.{alias}")
    return frozenset(name for name in names if name)


@functools.cache
def code_digest(module: str) -> str:
    """sha256 over the sources of `module` and of every module of its top-level package it imports,
    transitively, in sorted order (a stable name per file: its module name). Cached per process, like
    the imported modules themselves: an edit takes effect in the next process."""
    top = module.split(".")[0]
    spec = importlib.util.find_spec(top)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"code_digest: package {top!r} not found")
    root = Path(spec.origin).parent
    seen: dict[str, Path] = {}
    pending = _package_chain(module)
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        path = _source_file(name, root)
        if path is None:
            continue
        seen[name] = path
        for imported in _imported(path, name):
            if imported.split(".")[0] == top:
                pending.extend(chain for chain in _package_chain(imported) if chain not in seen)
    digest = hashlib.sha256()
    for name in sorted(seen):
        digest.update(name.encode() + b"\0" + seen[name].read_bytes() + b"\0")
    return digest.hexdigest()
