"""The SMTP server's optional STARTTLS and AUTH, and readiness, over real loopback SMTP."""

from __future__ import annotations

import asyncio
import json
import smtplib
import ssl
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.support.helpers import eventually, mail, processed

SMTP_POLICY_BYTES = mail().as_bytes()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_files(ca: trustme.CA, tmp_path: Path) -> tuple[str, str, ssl.SSLContext]:
    cert = ca.issue_cert("127.0.0.1", "frontdesk.test")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return str(cert_path), str(key_path), client


def _session(port: int, client_ctx: ssl.SSLContext | None, login: tuple[str, str] | None,
             starttls: bool = True) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.ehlo()
        if starttls:
            s.starttls(context=client_ctx)
            s.ehlo()
        if login:
            s.login(*login)
        s.sendmail("ada@example.org", ["support@example.com"], SMTP_POLICY_BYTES)


async def test_require_starttls_and_auth(make_settings: Any, daemon_factory: Any,
                                         tls_files: tuple[str, str, ssl.SSLContext]) -> None:
    cert, key, client = tls_files
    settings = make_settings(email={"smtp_server": {
        "tls_cert": cert, "tls_key": key, "require_starttls": True,
        "auth_username": "relay", "auth_password": "s3cret", "auth_required": True}})
    d = await daemon_factory(settings)
    port = d.email.smtp.port
    with pytest.raises(smtplib.SMTPException) as plain:
        await asyncio.to_thread(_session, port, None, None, False)
    assert "530" in str(plain.value)  # STARTTLS first
    with pytest.raises(smtplib.SMTPAuthenticationError):
        await asyncio.to_thread(_session, port, client, ("relay", "wrong"))
    with pytest.raises(smtplib.SMTPSenderRefused) as no_auth:
        await asyncio.to_thread(_session, port, client, None)
    assert no_auth.value.smtp_code == 530
    await asyncio.to_thread(_session, port, client, ("relay", "s3cret"))
    await eventually(lambda: processed(d.store))


async def test_readyz_reports_the_store(make_settings: Any, daemon_factory: Any,
                                        tmp_path: Path) -> None:
    d = await daemon_factory(make_settings())
    url = f"http://127.0.0.1:{d.http.port}/readyz"

    def get() -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    status, body = await asyncio.to_thread(get)
    assert status == 200 and body["checks"] == {"store": "ok", "email": "ok"}
    await d.email.stop()  # the SMTP listener is gone: not ready
    status, body = await asyncio.to_thread(get)
    assert status == 503 and body["checks"]["email"] == "down"


def test_auth_without_tls_is_a_config_error(make_settings: Any) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as err:
        make_settings(email={"smtp_server": {"auth_username": "relay"}})
    assert "only offered over TLS" in str(err.value)
