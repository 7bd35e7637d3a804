"""A real bearer-token path: Azurite in OAuth mode (``--oauth basic``, HTTPS) behind our identity queue client.

Azurite's basic OAuth checks what Azure Storage checks in a token except the signature: issuer, audience and
lifetime. So the request path the managed identity takes on Azure (azure-core's bearer-token policy asking the
credential for a ``https://storage.azure.com/.default`` token, ``Authorization: Bearer`` over TLS) runs for real
here, with a local credential minting the token in place of the identity endpoint, which no test can reach.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

from flowcraft_core.azure.clients import make_queue_client_with_identity
from flowcraft_core.azure.identity import STORAGE_SCOPE
from flowcraft_core.azure.queue import AzureJobQueue, parse_job
from flowcraft_core.protocols import Job
from flowcraft_dev.emulators import free_port

pytestmark = pytest.mark.emulators
ROOT = Path(__file__).resolve().parents[2]
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


class MintedTokenCredential:
    """An AsyncTokenCredential that mints an (unsigned) Entra-shaped token, recording the scopes asked for."""

    def __init__(self, audience: str = "https://storage.azure.com") -> None:
        self.audience = audience
        self.scopes: list[tuple[str, ...]] = []

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        now = int(time.time())
        claims = {"aud": self.audience, "iss": f"https://sts.windows.net/{TENANT}/", "iat": now, "nbf": now - 60,
                  "exp": now + 3600, "oid": "00000000-0000-0000-0000-00000000f00d", "tid": TENANT}
        return AccessToken(f"{_b64({'alg': 'RS256', 'typ': 'JWT'})}.{_b64(claims)}.c2ln", now + 3600)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> MintedTokenCredential:
        return self

    async def __aexit__(self, *args: Any) -> None:
        return None


def _certificate(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "azurite.crt", directory / "azurite.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def azurite_oauth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """Azurite's queue service over HTTPS with --oauth basic; yields (queue service URL, CA file)."""
    workdir = tmp_path_factory.mktemp("azurite-oauth")
    cert, key = _certificate(workdir)
    port = free_port()
    process = subprocess.Popen(
        [str(ROOT / "node_modules" / ".bin" / "azurite-queue"), "--silent", "--skipApiVersionCheck",
         "--disableTelemetry", "--location", str(workdir / "data"), "--queueHost", "127.0.0.1",
         "--queuePort", str(port), "--oauth", "basic", "--cert", str(cert), "--key", str(key)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    context = ssl.create_default_context(cafile=str(cert))
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as raw, \
                    context.wrap_socket(raw, server_hostname="127.0.0.1"):
                break
        except OSError:
            if process.poll() is not None:
                pytest.fail(f"azurite-queue --oauth basic exited: {process.stderr.read().decode()[-2000:]}"
                            if process.stderr else "azurite-queue exited")
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail("azurite-queue --oauth basic did not accept TLS connections within 60 s")
            time.sleep(0.2)
    try:
        yield f"https://127.0.0.1:{port}/devstoreaccount1", cert
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def test_identity_queue_client_sends_and_receives_jobs_with_a_bearer_token(
        azurite_oauth: tuple[str, Path]) -> None:
    url, ca = azurite_oauth
    credential = MintedTokenCredential()
    async with make_queue_client_with_identity(url, "identity-jobs", credential,
                                               connection_verify=str(ca)) as client:
        await client.create_queue()
        job = Job("run-identity-1", "bp", "start", attempt=2)
        await AzureJobQueue(client).enqueue(job)
        messages = [m async for m in client.receive_messages(max_messages=1)]
    assert [parse_job(m.content, base64_encoded=True) for m in messages] == [job]
    assert credential.scopes and all(scopes == (STORAGE_SCOPE,) for scopes in credential.scopes)


async def test_azurite_refuses_a_token_for_another_audience(azurite_oauth: tuple[str, Path]) -> None:
    # The check above is only worth something if Azurite really judges the token.
    url, ca = azurite_oauth
    credential = MintedTokenCredential(audience="https://vault.azure.net")
    async with make_queue_client_with_identity(url, "identity-refused", credential,
                                               connection_verify=str(ca), retry_total=0) as client:
        with pytest.raises((ClientAuthenticationError, HttpResponseError)) as caught:
            await client.create_queue()
    assert "audience" in str(caught.value).lower() or getattr(caught.value, "status_code", 0) in (401, 403)
