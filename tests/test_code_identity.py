"""A stage's code digest covers exactly its module and the package modules it imports, transitively."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from stsae.pipeline import code_identity, runner
from stsae.pipeline.code_identity import code_digest

_PACKAGE_IDS = itertools.count()

SOURCES = {
    "__init__.py": "",
    "stage.py": "from {pkg}.helper import work\n\n\ndef run():\n    from . import lazy  # inside a function\n"
                "    return work(lazy)\n",
    "helper.py": "import {pkg}.deep as deep\nfrom {pkg}.sub import (\n    child,  # a comment\n    other,\n)\n",
    "deep.py": "VALUE = 1\n",
    "lazy.py": "VALUE = 2\n",
    "sub/__init__.py": "from ..deep import VALUE\n",
    "sub/child.py": "X = 1\n",
    "sub/other.py": "Y = 1\n",
    "unrelated.py": "Z = 1\n",
}


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A throwaway package on sys.path (a fresh name each time: code_digest caches per name)."""
    name = f"fakepkg_{next(_PACKAGE_IDS)}_{tmp_path.name.replace('-', '_')}"
    root = tmp_path / name
    for relative, text in SOURCES.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text.format(pkg=name))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name, root


def _digest_after_edit(name: str, root: Path, relative: str) -> tuple[str, str]:
    code_identity.code_digest.cache_clear()
    code_identity._imported.cache_clear()
    before = code_digest(f"{name}.stage")
    with (root / relative).open("a") as handle:
        handle.write("# edited\n")
    code_identity.code_digest.cache_clear()
    code_identity._imported.cache_clear()
    return before, code_digest(f"{name}.stage")


@pytest.mark.parametrize("relative", ["stage.py", "helper.py", "deep.py", "lazy.py", "sub/__init__.py",
                                      "sub/child.py", "sub/other.py", "__init__.py"])
def test_editing_any_module_the_stage_reaches_changes_its_digest(package, relative):
    before, after = _digest_after_edit(*package, relative)
    assert before != after


def test_editing_a_module_the_stage_never_imports_keeps_its_digest(package):
    before, after = _digest_after_edit(*package, "unrelated.py")
    assert before == after


def test_stage_digests_differ_and_are_stable_across_calls():
    digests = {stage.name: code_digest(runner._MODULE_NAME[stage.name]) for stage in runner.STAGES}
    assert len(set(digests.values())) == len(digests)
    code_identity.code_digest.cache_clear()
    assert digests == {stage.name: code_digest(runner._MODULE_NAME[stage.name]) for stage in runner.STAGES}
