"""A relay that echoes frontdesk's login in its refusal cannot leak it (issue 14, item 11).

Some relays answer a failed AUTH with the data they were sent: ``535 5.7.8 Authentication
failed: AGZyb250ZGVzawBzM2NyZXQ=`` is base64 of ``\\0frontdesk\\0s3cret``, the AUTH PLAIN blob.
A real aiosmtpd relay on loopback (STARTTLS with a trustme certificate, as frontdesk only logs
in over TLS) answers that way to a running daemon's staff reply. Neither ``outbox.last_error``,
the message's ``failure_reason``, ``frontdesk outbox`` (text and ``--json``) nor any log line of
frontdesk holds the password, the blob or anything else that decodes to the credentials; they
still say that the relay refused the login.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from sqlalchemy import select

from frontdesk.storage.models import Message, Outbox
from tests.fakes.smtp_sink import SmtpSink
from tests.support.helpers import cli_config, eventually, mail, processed, run_cli, send

USERNAME = "frontdesk"
PASSWORD = "s3cret"
PLAIN_BLOB = base64.b64encode(f"\0{USERNAME}\0{PASSWORD}".encode()).decode()
assert PLAIN_BLOB == "AGZyb250ZGVzawBzM2NyZXQ="


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


ECHOES: dict[str, tuple[str, Callable[[bytes, bytes], str]]] = {
    # name: (the one mechanism the relay offers, its 535 reply from the login and password)
    "plain blob": ("PLAIN", lambda user, pw: "535 5.7.8 Authentication failed: "
                   + base64.b64encode(b"\0" + user + b"\0" + pw).decode()),
    "plain blob with authzid, unpadded, and the password in clear": (
        "PLAIN", lambda user, pw: "535 5.7.8 Authentication failed for '"
        + base64.b64encode(user + b"\0" + user + b"\0" + pw).decode().rstrip("=")
        + f"' ({user.decode()}:{pw.decode()})"),
    "login password in base64": ("LOGIN", lambda user, pw: "535 5.7.8 Error: authentication "
                                 f"failed: {base64.b64encode(pw).decode()} is not accepted"),
}

SECRETS = [PASSWORD, PLAIN_BLOB, PLAIN_BLOB.rstrip("="), _b64(PASSWORD).rstrip("="),
           _b64(f"{USERNAME}\0{USERNAME}\0{PASSWORD}").rstrip("="),
           f"{USERNAME}:{PASSWORD}"]


class EchoingRelay(SmtpSink):
    """An aiosmtpd relay offering one AUTH mechanism, refusing every login with ``echo``."""

    def __init__(self, mechanism: str, echo: Callable[[bytes, bytes], str],
                 **kwargs: Any) -> None:
        super().__init__(credentials={}, auth_required=True, **kwargs)
        self.mechanism = mechanism
        self.echo = echo

    def _protocol(self) -> SMTP:
        return SMTP(self, hostname=self.hostname, tls_context=self.starttls,
                    auth_require_tls=True, auth_required=True,
                    auth_exclude_mechanism=[m for m in ("PLAIN", "LOGIN")
                                            if m != self.mechanism],
                    authenticator=self._authenticate, loop=asyncio.get_running_loop())

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope,
                      mechanism: str, data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        self.failed_logins.append(data.login.decode())
        return AuthResult(success=False, handled=False,
                          message=self.echo(data.login, data.password))


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(params=list(ECHOES))
async def relay(request: pytest.FixtureRequest, ca: trustme.CA) -> AsyncIterator[EchoingRelay]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    mechanism, echo = ECHOES[request.param]
    async with EchoingRelay(mechanism, echo, starttls=context) as server:
        yield server


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} in {where}: {text!r}"


async def test_an_echoed_login_stays_out_of_the_outbox_the_cli_and_the_log(
        relay: EchoingRelay, ca: trustme.CA, tmp_path: Path, make_settings: Any,
        daemon_factory: Any, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    ca_file = tmp_path / "relay-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    caplog.set_level(logging.DEBUG)
    d = await daemon_factory(make_settings(
        email={"outbound": {"port": relay.port, "starttls": "required", "ca_file": str(ca_file),
                            "username": USERNAME, "password": PASSWORD}},
        daemon={"outbox_max_attempts": 1}))
    await send(d.email.smtp.port, mail(msgid="<login@example.org>"))
    await eventually(lambda: processed(d.store))
    cfg = cli_config(d, tmp_path, relay_port=relay.port)
    code, _, err = await run_cli(capsys, "reply", "FD-1", "We are on it.", "--as", "Grace",
                                 "-c", cfg)
    assert code == 0, err

    async def refused() -> Outbox | None:
        async with d.store.reader() as s:
            row = (await s.execute(select(Outbox).where(Outbox.state == "failed"))
                   ).scalars().first()
        return row

    row = await eventually(refused)
    assert row is not None
    assert relay.failed_logins == [USERNAME] and relay.messages == []
    error = row.last_error or ""
    assert "rejected frontdesk's login" in error and "535" in error, error
    assert_no_secret(error, "outbox.last_error")
    async with d.store.reader() as s:
        reason = (await s.get_one(Message, row.message_id)).failure_reason or ""
    assert "535" in reason
    assert_no_secret(reason, "messages.failure_reason")

    code, out, err = await run_cli(capsys, "outbox", "-c", cfg)
    assert code == 0 and "rejected frontdesk's login" in out, (out, err)
    assert_no_secret(out + err, "frontdesk outbox")
    code, out, err = await run_cli(capsys, "outbox", "--json", "-c", cfg)
    assert code == 0, err
    assert "535" in json.loads(out)[0]["last_error"]
    assert_no_secret(out + err, "frontdesk outbox --json")

    ours = [r for r in caplog.records if r.name.startswith("frontdesk")]
    assert any("rejected frontdesk's login" in r.getMessage() for r in ours)
    logged = "\n".join(logging.Formatter("%(message)s").format(r) for r in ours)
    assert_no_secret(logged, "the log")  # tracebacks (exc_info) included
