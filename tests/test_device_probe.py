"""The model probe runs the model once in a child process; where this interpreter cannot
start a copy of itself (seen under qemu user-mode emulation without binfmt_misc, where the
child's exec fails with "Exec format error"), the model is loaded in process instead."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from device.agent import probe_model
from tests.device_fixtures import bundle_for


def test_a_probe_that_cannot_start_falls_back_to_loading_in_process(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = bundle_for(request)
    not_a_program = tmp_path / "python"
    not_a_program.write_bytes(b"\x7fELF\x02\x01\x01 not for this machine")  # no exec bit
    monkeypatch.setattr(sys, "executable", str(not_a_program))
    # before the fallback this raised PermissionError out of subprocess (the agent died)
    probe_model(bundle, "int8")  # returns: the caller loads the model in process
