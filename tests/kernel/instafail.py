"""A pytest plugin for the run inside the VM: each failure is printed the moment it happens, not at the end
of the session, so that the guest's pytest.log explains a failure even when the VM runs out of time and
is killed before pytest's summary."""

from __future__ import annotations

import pytest


@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed and _terminal is not None:
        _terminal.write_line(f"\n--- FAILED {report.nodeid} ({report.when}) ---\n{report.longreprtext}\n")


_terminal = None


@pytest.hookimpl(trylast=True)  # after the terminal reporter is registered
def pytest_configure(config: pytest.Config) -> None:
    global _terminal
    _terminal = config.pluginmanager.get_plugin("terminalreporter")
