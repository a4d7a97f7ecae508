"""Shared fixtures, and the rule that under CI=true a promised test may not skip.

`make test` (which CI runs on a fresh clone, with CI=true) installs every package, system
tool and device venv the tests use, so there a skip means something the README promises did
not run: the skip is turned into a failure. Only skips that say the machine itself lacks a
kernel feature or a privilege (MACHINE_LIMITS) stay skips.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.device_fixtures import bundle_for

MACHINE_LIMITS = (
    "no IPv6 loopback here",  # a kernel without IPv6 (EAFNOSUPPORT/EADDRNOTAVAIL)
    "this kernel has no PR_SET_MDWE",  # Linux < 6.3
    "a full-disk test needs a small tmpfs",  # not root
    "cannot mount a tmpfs here",  # a container without CAP_SYS_ADMIN
    "systemd-analyze not installed",  # a CI image without systemd
)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    return str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)


def _fail_promised_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not (_in_ci() and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    if any(limit in reason for limit in MACHINE_LIMITS):
        return
    report.outcome = "failed"
    report.longrepr = (
        f"skipped under CI=true, where every test `make test` promises must run: {reason}"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    _fail_promised_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> object:
    """A module-level importorskip (paho-mqtt, PyAudio, cryptography) skips at collection."""
    outcome = yield
    _fail_promised_skip(outcome.get_result())


@pytest.fixture(scope="session")
def fixture_bundle(request: pytest.FixtureRequest) -> Path:
    """The real fp32 + int8 fixture bundle (tests.device_fixtures.bundle_for)."""
    return bundle_for(request)
