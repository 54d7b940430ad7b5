"""TLS is verified by default: a wss:// server with an untrusted certificate is refused."""

from __future__ import annotations

import datetime
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.sync.server import ServerConnection, serve

from discord_voice import ConnectionClosed, Gateway
from discord_voice._shell.websocket import WebSocketChannel
from tests.timeouts import LONG


def self_signed(folder: Path) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return context


@pytest.fixture
def untrusted_wss(tmp_path: Path) -> Iterator[str]:
    def handler(connection: ServerConnection) -> None:
        connection.close()

    with serve(handler, "127.0.0.1", 0, ssl=self_signed(tmp_path)) as server:
        thread = threading.Thread(target=server.serve_forever, name="fake-tls-server")
        thread.start()
        try:
            yield f"wss://localhost:{server.socket.getsockname()[1]}"
        finally:
            server.shutdown()
            thread.join(LONG)


def test_main_gateway_refuses_an_untrusted_certificate(untrusted_wss: str) -> None:
    gateway = Gateway("Bot.SECRET-TOKEN", url=untrusted_wss)
    with pytest.raises(ConnectionClosed) as info:
        gateway.connect(timeout=LONG)
    assert "CERTIFICATE_VERIFY_FAILED" in repr(info.value.__cause__) + str(info.value)
    assert "SECRET-TOKEN" not in str(info.value)
    gateway.close()


def test_voice_websocket_refuses_an_untrusted_certificate(untrusted_wss: str) -> None:
    with pytest.raises(ConnectionClosed) as info:
        WebSocketChannel.connect(untrusted_wss + "/?v=8", timeout=LONG, what="voice websocket")
    assert "CERTIFICATE_VERIFY_FAILED" in repr(info.value.__cause__) + str(info.value)
