"""The image test's report: which binaries or images it used, the image sizes and each
container's start-to-ready and stop times, printed at the end of the run."""

from __future__ import annotations

import pytest

_REPORT: list[str] = []


@pytest.fixture(scope="session")
def image_report() -> list[str]:
    """Lines for the end of the run (test_images.py appends to it)."""
    return _REPORT


def pytest_terminal_summary(terminalreporter):
    for line in _REPORT:
        terminalreporter.write_line(f"image test: {line}")
