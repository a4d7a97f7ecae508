"""scripts/deploy.sh options: the ssh port (PI_PORT) reaches every ssh it runs.

The deploy itself, for real over ssh into a Debian bookworm root, is `make test-deploy`
(scripts/test-deploy.sh: root, debootstrap and the network, minutes; not part of `make test`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.device_fixtures import cached_bundle
from tests.device_fixtures import run_deploy_script as _deploy


@pytest.fixture(scope="module")
def fixture_bundle(request: pytest.FixtureRequest) -> Path:
    return cached_bundle(Path(request.config.cache.mkdir("device-fixture-bundles")))


def test_pi_port_is_passed_to_every_ssh(fixture_bundle: Path) -> None:
    out = _deploy(
        "pi@127.0.0.1", str(fixture_bundle), DRY_RUN="1", PI_PORT="2222", SSH_OPTS="-i /k"
    )
    assert out.returncode == 0, out.stderr
    ssh_lines = [line for line in out.stdout.splitlines() if "ssh " in line]
    assert len(ssh_lines) == 4  # clean the staging folder, two tar pipes, the installer
    for line in ssh_lines:
        assert "-i /k -p 2222 pi@127.0.0.1" in line, line


def test_a_pi_port_that_is_not_a_number_is_refused(fixture_bundle: Path) -> None:
    out = _deploy("pi@host", str(fixture_bundle), DRY_RUN="1", PI_PORT="22 -oProxyCommand=x")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "error: expected PI_PORT to be a port number, got '22 -oProxyCommand=x'"
    )
