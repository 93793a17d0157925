"""Suite-wide rules: a test that needs a tool the machine lacks skips with the reason on a developer's
machine, but FAILS under CI (CI=true), so a green CI means every test really ran."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

# CI replays the same hypothesis examples every run (a green CI must not depend on the draw); developers
# keep fresh random examples, which is how new counterexamples are found.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")


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


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """The box is shared: one intra-op thread keeps training tests fast and their timing honest."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _fresh_stsae_logger() -> Iterator[None]:
    """Undo a CLI test's `setup_logging` (own handlers, propagate=False) so caplog in later tests sees records
    whatever the pytest version (older pytest only captures through the root logger)."""
    yield
    logger = logging.getLogger("stsae")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


pytest_plugins = ["pytester"]
