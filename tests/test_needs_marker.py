"""The `needs` marker: a missing tool skips on a developer's machine and fails under CI."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFTEST = (Path(__file__).parent / "conftest.py").read_text()
MISSING_TOOL_TEST = """
import pytest

@pytest.mark.needs(False, "frobnicator not installed")
def test_uses_the_tool():
    pass
"""


def _run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str | None) -> pytest.RunResult:
    pytester.makeconftest(CONFTEST.replace('pytest_plugins = ["pytester"]', ""))
    pytester.makepyfile(MISSING_TOOL_TEST)
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    return pytester.runpytest("-rs")


def test_missing_tool_skips_with_its_reason_outside_ci(pytester, monkeypatch):
    result = _run(pytester, monkeypatch, None)
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*frobnicator not installed*"])


def test_missing_tool_fails_under_ci(pytester, monkeypatch):
    result = _run(pytester, monkeypatch, "true")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*CI must run this test, but: frobnicator not installed*"])
