"""Signed bundles: an Ed25519 signature over manifest.json, made with a key the user holds.

    python -m device.signing keygen --out ~/.clad-keys          # signing.key (0600), signing.pub
    python -m device.signing sign --bundle bundles/demo --key ~/.clad-keys/signing.key
    python -m device.signing verify --bundle bundles/demo --public-key signing.pub

manifest.json lists the sha256 of every file of the bundle and `load_bundle` checks them, so a
valid signature over the manifest's bytes covers the whole bundle. The signature goes to
`manifest.sig` beside it. On the Pi only the public key is needed: with `[model] public_key`
in the settings file (or `--public-key`), `clad-agent score/listen` refuse a bundle whose
signature is missing or does not verify, before any model is loaded.

Keys are raw 32-byte Ed25519 keys, base64 on one line. Needs `cryptography` (in the device
requirements); imported only when a key is used.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from pathlib import Path
from typing import Any

from device.bundle import MANIFEST_NAME, BundleError

SIGNATURE_NAME = "manifest.sig"
PRIVATE_NAME = "signing.key"
PUBLIC_NAME = "signing.pub"


def _ed25519() -> tuple[Any, Any]:  # the module and its error class, imported on demand
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as error:
        raise BundleError(
            "signed bundles need the `cryptography` package (pip install -r "
            "requirements/device.txt)"
        ) from error
    return ed25519, InvalidSignature


def _read_key(path: Path, what: str) -> bytes:
    try:
        text = Path(path).read_text().strip()
    except OSError as error:
        raise BundleError(f"cannot read the {what} key {path}: {error.strerror}") from error
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError as error:
        raise BundleError(
            f"{path}: expected a base64 {what} Ed25519 key on one line, got {len(text)} "
            "characters that are not base64"
        ) from error
    if len(raw) != 32:
        raise BundleError(f"{path}: expected a 32-byte Ed25519 {what} key, got {len(raw)} bytes")
    return raw


def generate_keypair(out_dir: Path) -> tuple[Path, Path]:
    """A new key pair in out_dir: the private key readable by its owner only."""
    ed25519, _ = _ed25519()
    from cryptography.hazmat.primitives import serialization

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out_dir / PRIVATE_NAME, out_dir / PUBLIC_NAME
    if private_path.exists():
        raise BundleError(f"{private_path} exists; refusing to overwrite a signing key")
    key = ed25519.Ed25519PrivateKey.generate()
    raw_private = key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    raw_public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(base64.b64encode(raw_private).decode() + "\n")
    public_path.write_text(base64.b64encode(raw_public).decode() + "\n")
    return private_path, public_path


def sign_bundle(bundle: Path, private_key: Path) -> Path:
    """Write bundle/manifest.sig: the Ed25519 signature of manifest.json's bytes."""
    ed25519, _ = _ed25519()
    manifest = Path(bundle) / MANIFEST_NAME
    if not manifest.is_file():
        raise BundleError(f"{bundle}: no {MANIFEST_NAME}; expected a bundle directory")
    key = ed25519.Ed25519PrivateKey.from_private_bytes(_read_key(private_key, "private"))
    signature = key.sign(manifest.read_bytes())
    out = Path(bundle) / SIGNATURE_NAME
    out.write_text(base64.b64encode(signature).decode() + "\n")
    return out


def verify_bundle(bundle: Path, public_key: Path) -> None:
    """Raise BundleError unless manifest.sig is a valid signature of manifest.json by the key."""
    ed25519, invalid_signature = _ed25519()
    key = ed25519.Ed25519PublicKey.from_public_bytes(_read_key(public_key, "public"))
    manifest = Path(bundle) / MANIFEST_NAME
    signature_path = Path(bundle) / SIGNATURE_NAME
    if not signature_path.is_file():
        raise BundleError(
            f"{bundle}: unsigned bundle (no {SIGNATURE_NAME}) and a public key is configured; "
            f"sign it with `python -m device.signing sign --bundle {bundle} --key KEY`"
        )
    try:
        signature = base64.b64decode(signature_path.read_text().strip(), validate=True)
        key.verify(signature, manifest.read_bytes())
    except (ValueError, invalid_signature) as error:
        raise BundleError(
            f"{bundle}: {SIGNATURE_NAME} does not verify against {public_key}: the manifest "
            "was changed after signing, or it was signed with another key"
        ) from error
    except OSError as error:
        raise BundleError(f"{bundle}: cannot read {MANIFEST_NAME}: {error.strerror}") from error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m device.signing", description="Sign bundles and check their signatures."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    keygen = sub.add_parser("keygen", help="make a key pair (signing.key 0600, signing.pub)")
    keygen.add_argument("--out", type=Path, required=True, help="folder for the two key files")
    sign = sub.add_parser("sign", help="write BUNDLE/manifest.sig")
    sign.add_argument("--bundle", type=Path, required=True, help="bundle directory")
    sign.add_argument("--key", type=Path, required=True, help="private key file (signing.key)")
    verify = sub.add_parser("verify", help="check BUNDLE/manifest.sig against a public key")
    verify.add_argument("--bundle", type=Path, required=True, help="bundle directory")
    verify.add_argument(
        "--public-key", type=Path, required=True, help="public key file (signing.pub)"
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "keygen":
            private_path, public_path = generate_keypair(args.out)
            print(f"private key {private_path} (keep it off the Pi); public key {public_path}")
        elif args.command == "sign":
            print(f"signed: {sign_bundle(args.bundle, args.key)}")
        else:
            verify_bundle(args.bundle, args.public_key)
            print(f"{args.bundle}: signature verified")
    except BundleError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
