"""Suite-wide rules: a test that needs a tool the machine lacks skips with the reason on a developer's
machine, but FAILS under CI (CI=true), so a green CI means every test really ran."""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs(available, reason): a tool the test cannot run without")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers(name="needs"):
        available, reason = marker.args
        if available:
            continue
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run this test, but: {reason}", pytrace=False)
        pytest.skip(reason)


pytest_plugins = ["pytester"]
