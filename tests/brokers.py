"""A real mosquitto broker on a free loopback port, and a real paho subscriber, for tests.

    with Mosquitto(tmp_dir) as broker: ... broker.stop(); broker.start() ...
    sub = Subscriber(broker.port, ["clad/#"]); sub.wait_for(lambda msgs: ..., timeout_s=20)

    ca = make_ca(tmp_dir, "test CA"); server = ca.issue_server(tmp_dir, "127.0.0.1")
    with Mosquitto(tmp_dir, tls=server, passwords={"pi": "secret"}) as broker: ...
    Subscriber(broker.port, ["clad/#"], tls_ca_file=ca.cert, username="pi", password="secret")

The broker keeps sessions on disk (persistence), so a subscriber with a persistent session
(clean_session=False, QoS 1) gets every message across a broker restart. With `tls` its one
listener speaks TLS only (the server certificate and key made here with `cryptography`, for
127.0.0.1 and localhost); with `passwords` it refuses anonymous clients and checks a password
file written by mosquitto_passwd. Every wait is bounded in time. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import datetime
import getpass
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


def mosquitto_or_skip() -> str:
    """The mosquitto binary, or a skip (a failure under CI=true: tests/conftest.py)."""
    path = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None
    )
    if path:
        return path
    pytest.skip("mosquitto is not installed (scripts/install-system-deps.sh installs it)")


def mosquitto_passwd_or_skip() -> str:
    path = shutil.which("mosquitto_passwd")
    if path:
        return path
    message = "mosquitto_passwd is not installed (it comes with Debian's mosquitto package)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@dataclass(frozen=True)
class ServerCert:
    cert: Path  # PEM, the server's certificate
    key: Path  # PEM, its private key (unencrypted)


@dataclass(frozen=True)
class CertAuthority:
    """A self-signed certificate authority (EC P-256) that issues server certificates."""

    name: str
    cert: Path  # PEM: what a client trusts (tls_ca_file)
    key: Path

    def issue_server(self, out_dir: Path, host: str = "127.0.0.1") -> ServerCert:
        """A server certificate for `host`, localhost and 127.0.0.1, signed by this CA."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        ca_cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
        ca_key = serialization.load_pem_private_key(self.key.read_bytes(), password=None)
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(list(dict.fromkeys(names))), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        )
        return ServerCert(*_write_pem_pair(out_dir, f"server-{self.name}", cert, key))


def make_ca(out_dir: Path, name: str) -> CertAuthority:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertAuthority(name, *_write_pem_pair(out_dir, f"ca-{name}", cert, key))


def _write_pem_pair(out_dir: Path, name: str, cert: Any, key: Any) -> tuple[Path, Path]:
    """NAME.pem (the certificate) and NAME.key (its private key, PKCS8, mode 600) in out_dir,
    spaces in the name as dashes."""
    from cryptography.hazmat.primitives import serialization

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = name.replace(" ", "-")
    cert_path, key_path = out_dir / f"{stem}.pem", out_dir / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Mosquitto:
    def __init__(
        self,
        work_dir: Path,
        port: int | None = None,
        *,
        tls: ServerCert | None = None,
        passwords: dict[str, str] | None = None,
    ) -> None:
        self.binary = mosquitto_or_skip()
        self.dir = work_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf = self.dir / "mosquitto.conf"
        self.log = self.dir / "mosquitto.log"
        security = "allow_anonymous true\n"
        if passwords:
            password_file = self.dir / "passwords"
            password_file.write_text("")
            password_file.chmod(0o600)
            for user, password in passwords.items():
                subprocess.run(
                    [mosquitto_passwd_or_skip(), "-b", str(password_file), user, password],
                    check=True,
                    capture_output=True,
                    timeout=30,
                )
            security = f"allow_anonymous false\npassword_file {password_file}\n"
        if tls:
            security += f"certfile {tls.cert}\nkeyfile {tls.key}\ntls_version tlsv1.2\n"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"{security}"
            "persistence true\n"
            f"persistence_location {self.dir}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 0\n"  # 0: no limit on a sleeping subscriber's queue
            "max_inflight_messages 0\n"
            f"log_dest file {self.log}\n"
            # as root, mosquitto would switch to its own user, who cannot write in this
            # directory: no session store, so a restart would forget the subscriber
            f"user {getpass.getuser()}\n"
        )
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 10.0) -> None:
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited {self.process.returncode}: "
                    f"{self.process.stderr.read().decode() if self.process.stderr else ''}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on 127.0.0.1:{self.port} in {timeout_s} s")

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM: mosquitto saves its sessions to disk and exits."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout_s)

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()


@dataclass
class Message:
    topic: str
    payload: bytes
    retain: bool


class Subscriber:
    """A paho client with a persistent session, collecting every message it gets."""

    def __init__(
        self,
        port: int,
        topics: list[str],
        client_id: str = "test-subscriber",
        *,
        tls_ca_file: Path | None = None,
        username: str = "",
        password: str = "",
    ) -> None:
        import paho.mqtt.client as paho

        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self.subscribed = threading.Event()
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False
        )
        self.client.reconnect_delay_set(1, 1)
        if username:
            self.client.username_pw_set(username, password)
        if tls_ca_file:
            self.client.tls_set(ca_certs=str(tls_ca_file))

        def on_connect(client, _userdata, _flags, reason, _props) -> None:
            if not reason.is_failure:
                client.subscribe([(topic, 1) for topic in topics])

        def on_subscribe(*_args) -> None:
            self.subscribed.set()

        def on_message(_client, _userdata, message) -> None:
            with self._cond:
                self.messages.append(Message(message.topic, message.payload, message.retain))
                self._cond.notify_all()

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise RuntimeError("the test subscriber did not get its SUBACK in 10 s")

    def on(self, topic: str) -> list[Message]:
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def wait_for(self, done: Callable[[list[Message]], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not done(self.messages):
                remaining_s = deadline - time.monotonic()
                if remaining_s <= 0:
                    return False
                self._cond.wait(min(remaining_s, 0.5))
            return True

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
