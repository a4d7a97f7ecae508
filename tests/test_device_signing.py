"""Signed bundles: Ed25519 over manifest.json, checked by `clad-agent score/listen/calibrate`
when a public key is configured. Real keys, a real bundle copy, the real CLI in a subprocess."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest

from device.bundle import BundleError
from device.signing import SIGNATURE_NAME, generate_keypair, sign_bundle, verify_bundle
from tests.device_fixtures import bundle_for, run_device, scenario, write_wav

pytest.importorskip("cryptography")


@pytest.fixture
def signed(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, Path, Path]:
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_for(request), bundle)
    private_key, public_key = generate_keypair(tmp_path / "keys")
    sign_bundle(bundle, private_key)
    return bundle, private_key, public_key


def test_keygen_writes_an_owner_only_private_key_and_refuses_to_overwrite_it(
    tmp_path: Path,
) -> None:
    private_key, public_key = generate_keypair(tmp_path)
    assert stat.S_IMODE(private_key.stat().st_mode) == 0o600
    assert len(public_key.read_text().strip()) == 44  # 32 bytes in base64
    with pytest.raises(BundleError, match="refusing to overwrite"):
        generate_keypair(tmp_path)


def test_a_signed_bundle_verifies_and_any_change_to_the_manifest_does_not(
    signed: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    bundle, _private, public_key = signed
    verify_bundle(bundle, public_key)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["threshold"]["value"] = 0.01  # an attacker lowers the threshold
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    with pytest.raises(BundleError, match="does not verify"):
        verify_bundle(bundle, public_key)
    _other_private, other_public = generate_keypair(tmp_path / "other")
    sign_bundle(bundle, _other_private)
    with pytest.raises(BundleError, match="does not verify"):
        verify_bundle(bundle, public_key)  # signed, but by someone else
    verify_bundle(bundle, other_public)


def test_a_broken_key_file_says_what_was_expected(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key\n")
    with pytest.raises(BundleError, match="expected a base64 public Ed25519 key"):
        verify_bundle(tmp_path, bad)
    bad.write_text("AAAA\n")
    with pytest.raises(BundleError, match="expected a 32-byte Ed25519 public key, got 3 bytes"):
        verify_bundle(tmp_path, bad)


def test_score_refuses_an_unsigned_or_changed_bundle_when_given_a_public_key(
    signed: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    bundle, _private, public_key = signed
    audio = write_wav(tmp_path / "a.wav", scenario(16000), 16000)
    args = ["score", str(audio), "--bundle", str(bundle), "--public-key", str(public_key)]
    done = run_device(args)
    assert done.returncode == 0, done.stderr
    assert b"P(spoof)=" in done.stdout

    (bundle / SIGNATURE_NAME).unlink()
    done = run_device(args)
    assert done.returncode == 2
    assert b"unsigned bundle" in done.stderr and b"device.signing sign" in done.stderr
    # without a key configured, signatures are not required
    assert run_device(["score", str(audio), "--bundle", str(bundle)]).returncode == 0


def test_calibrate_refuses_an_unsigned_bundle_when_the_settings_name_a_public_key(
    signed: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """`calibrate` has no --public-key flag: `[model] public_key` in its settings file asks
    for the check, as it does for `listen`."""
    bundle, _private, public_key = signed
    audio = write_wav(tmp_path / "room.wav", scenario(16000), 16000)
    config = tmp_path / "agent.toml"
    config.write_text(f'[model]\npublic_key = "{public_key}"\n')
    args = ["calibrate", "--config", str(config), "--source", str(audio), "--bundle", str(bundle)]
    done = run_device(args)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert "[device_calibration]" in config.read_text()

    (bundle / SIGNATURE_NAME).unlink()
    done = run_device(args)
    assert done.returncode == 2, done.stderr.decode()[-2000:]
    assert b"unsigned bundle" in done.stderr and b"device.signing sign" in done.stderr


def test_the_cli_signs_and_verifies(signed: tuple[Path, Path, Path], tmp_path: Path) -> None:
    import subprocess
    import sys

    bundle, private_key, public_key = signed
    for command in (
        ["sign", "--bundle", str(bundle), "--key", str(private_key)],
        ["verify", "--bundle", str(bundle), "--public-key", str(public_key)],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "device.signing", *command],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=Path(__file__).resolve().parents[1],
        )
        assert done.returncode == 0, done.stderr
    assert "signature verified" in done.stdout
