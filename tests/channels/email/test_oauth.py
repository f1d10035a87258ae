"""OAuth 2.0 (XOAUTH2) for the IMAP reader and the relay, against a loopback provider.

tests/fakes/oauth.py is the provider (token, device authorization and introspection endpoints,
RFC 6749/8628/7662 JSON). A real Dovecot checks the reader's tokens with its ``oauth2`` passdb
(``introspection_mode = post`` against the fake); a real aiosmtpd relay takes ``AUTH XOAUTH2``
with the fake's tokens; ``frontdesk oauth login`` runs the device flow against the fake while
the test approves the code, as the person would; the browser flow is driven like a browser.
"""

from __future__ import annotations

import asyncio
import base64
import imaplib
import json
import logging
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from sqlalchemy import select

from frontdesk.channels.base import TemporaryFailure
from frontdesk.channels.email import EmailConfig, OutboundConfig
from frontdesk.channels.email.oauth import (
    AccessTokens,
    SignInRefused,
    SignIns,
    SignInUnavailable,
    TokenCipher,
    browser_login,
    device_login,
    new_key,
    provider_for,
    xoauth2,
)
from frontdesk.channels.email.sender import EmailSender
from frontdesk.config.loader import ConfigError, load_settings
from frontdesk.daemon.process.registry import Settings
from frontdesk.domain.conversations import add_staff_reply, get_conversation
from frontdesk.domain.messages import OutboundMessage
from frontdesk.storage.db import Store
from frontdesk.storage.models import Event, OAuthToken
from tests.fakes.oauth import FakeOAuth, XOAuth2Relay
from tests.support import dovecot as dovecot_module
from tests.support.dovecot import Dovecot
from tests.support.helpers import (
    conversations,
    eventually,
    mail,
    processed,
    run_cli,
    send,
)
from tests.support.imap import raw_mail

KEY_ENV = "FRONTDESK_OAUTH_KEY"
RELAY_ACCOUNT = "support@example.com"


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    value = new_key()
    monkeypatch.setenv(KEY_ENV, value)
    return value


@pytest.fixture
async def provider() -> AsyncIterator[FakeOAuth]:
    fake = FakeOAuth()
    await fake.start()
    yield fake
    await fake.stop()


class OAuthDovecot(Dovecot):
    """The tests' Dovecot with an ``oauth2`` passdb for XOAUTH2 (tokens checked by RFC 7662
    introspection at the fake provider) beside the passwd-file one for passwords."""

    def __init__(self, root: Path, introspection_url: str) -> None:
        self.introspection_url = introspection_url
        super().__init__(root)

    def _write_config(self) -> None:
        super()._write_config()
        ext = self.root / "dovecot-oauth2.conf.ext"
        ext.write_text(f"introspection_mode = post\n"
                       f"introspection_url = {self.introspection_url}\n"
                       "username_attribute = username\n"
                       "active_attribute = active\n"
                       "active_value = true\n"
                       "force_introspection = yes\n")
        ext.chmod(0o644)
        text = self.config.read_text()
        text = text.replace("auth_mechanisms = plain login",
                            "auth_mechanisms = plain login xoauth2 oauthbearer")
        text = text.replace("passdb {", "passdb {\n  driver = oauth2\n"
                                        "  mechanisms = xoauth2 oauthbearer\n"
                                        f"  args = {ext}\n}}\n"
                                        "passdb {\n  mechanisms = plain login", 1)
        self.config.write_text(text)


def _dovecot_version() -> tuple[int, ...]:
    dovecot = dovecot_module._which("dovecot")
    assert dovecot
    out = subprocess.run([dovecot, "--version"], capture_output=True, text=True,
                         check=False).stdout
    found = re.match(r"(\d+)\.(\d+)\.(\d+)", out.strip())
    return tuple(int(n) for n in found.groups()) if found else (0,)


def _probe(server: OAuthDovecot, user: str, token: str) -> bool:
    """One XOAUTH2 login with Python's imaplib: does the oauth2 passdb work here?"""
    context = ssl.create_default_context(cafile=str(server.ca_file))
    with imaplib.IMAP4_SSL("127.0.0.1", server.imaps_port, ssl_context=context) as imap:
        try:
            imap.authenticate("XOAUTH2", lambda _: base64.b64decode(xoauth2(user, token)))
        except imaplib.IMAP4.error:
            return False
        return True


@pytest.fixture
async def oauth_dovecot(provider: FakeOAuth) -> AsyncIterator[OAuthDovecot]:
    """A Dovecot of its own (its passdb names this test's provider), skipped with the reason
    where Dovecot or its oauth2 passdb is not there."""
    if not dovecot_module.available():
        pytest.skip(dovecot_module.SKIP_REASON)
    version = _dovecot_version()
    if not (2, 2, 28) <= version < (2, 4):
        pytest.skip(f"Dovecot {'.'.join(map(str, version))}: the oauth2 passdb settings used "
                    "here are Dovecot 2.2.28-2.3's (2.4 renamed them)")
    root = Path(tempfile.mkdtemp(prefix="frontdesk-dovecot-oauth-"))
    root.chmod(0o755)
    server = OAuthDovecot(root, f"{provider.base_url}/introspect")
    try:
        await asyncio.to_thread(server.start)
        probe = server.add_user()
        token = provider.issue_access_token(probe.user)
        if not await asyncio.to_thread(_probe, server, probe.user, token):
            pytest.skip("Dovecot's oauth2 passdb did not accept a token its introspection "
                        "endpoint calls active:\n" + server.log_text()[-1500:])
        yield server
    finally:
        await asyncio.to_thread(server.stop)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def relay_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def relay(provider: FakeOAuth, relay_ca: trustme.CA) -> AsyncIterator[XOAuth2Relay]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    relay_ca.issue_cert("127.0.0.1").configure_cert(context)
    sink = XOAuth2Relay(provider, starttls=context)
    await sink.start()
    yield sink
    await sink.stop()


def _ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "relay-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


async def _signed_in(settings: Settings, provider: FakeOAuth, account: str) -> str:
    """Store a sign-in of ``account`` as `frontdesk oauth login` does; its refresh token."""
    refresh = provider.issue_refresh_token(account)
    store = Store.from_settings(settings.database)
    try:
        await store.ensure_schema()
        cipher = TokenCipher.from_environment(KEY_ENV)
        await SignIns(store).save(account, provider="generic", refresh_token=cipher.encrypt(
            refresh), scope="mail offline_access", actor="test")
    finally:
        await store.dispose()
    return refresh


def _tokens_of(daemon: Any) -> AccessTokens:
    for channel in daemon.channels:
        tokens = getattr(channel, "_tokens", None)
        if tokens is not None:
            return tokens
    raise AssertionError("no channel signs in with OAuth 2.0")


async def _readyz(daemon: Any) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{daemon.http.port}/readyz") as response:
        return response.status, await response.json()


# -- the IMAP reader ---------------------------------------------------------------------------


async def test_imap_reader_reads_through_xoauth2_with_tokens_the_daemon_renews(
        provider: FakeOAuth, oauth_dovecot: OAuthDovecot, key: str, make_settings: Any,
        daemon_factory: Any) -> None:
    box = oauth_dovecot.add_user()
    box.deliver(raw_mail(1, subject="Signed in with a token"))
    provider.access_lifetime = 3  # renewed after 2.4 s, well before it ends
    settings = make_settings(email={
        "imap": {"host": "127.0.0.1", "port": oauth_dovecot.imaps_port, "tls": True,
                 "ca_file": str(oauth_dovecot.ca_file), "username": box.user,
                 "auth": "oauth2", "timeout": "10s", "reconnect_initial": "1s",
                 "reconnect_max": "2s"},
        "oauth": provider.config()})
    await _signed_in(settings, provider, box.user)
    d = await daemon_factory(settings)

    async def stored(n: int) -> bool:
        return len(await conversations(d.store)) == n and await processed(d.store)

    await eventually(lambda: stored(1))
    [conv] = await conversations(d.store)
    assert conv.subject == "Signed in with a token"
    assert "method=XOAUTH2" in oauth_dovecot.log_text()
    assert provider.grants[0] == "refresh_token"  # the daemon had only the refresh token
    ok, checks = await d.readiness()
    assert ok and checks["imap"] == "ok" and checks[f"oauth:{box.user}"] == "ok"

    # The first token runs out; the daemon has renewed it in time. A new session (the server
    # dropped the old one) signs in with the renewed token: the first is no longer active.
    tokens = _tokens_of(d)
    await eventually(lambda: _at_least(tokens, 3), timeout=15)
    assert box.kick()
    box.deliver(raw_mail(2, subject="After the renewal"))
    await eventually(lambda: stored(2), timeout=15)
    assert provider.grants.count("refresh_token") >= 3
    assert await asyncio.to_thread(_login_count, oauth_dovecot, box.user) >= 2


async def _at_least(tokens: AccessTokens, renewals: int) -> bool:
    return tokens.renewals >= renewals


def _login_count(server: Dovecot, user: str) -> int:
    return sum(1 for line in server.log_text().splitlines()
               if "Login:" in line and f"user=<{user}>" in line and "XOAUTH2" in line)


async def test_a_token_the_imap_server_refuses_is_dropped_and_a_new_one_taken(
        provider: FakeOAuth, oauth_dovecot: OAuthDovecot, key: str, make_settings: Any,
        daemon_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    box = oauth_dovecot.add_user()
    settings = make_settings(email={
        "imap": {"host": "127.0.0.1", "port": oauth_dovecot.imaps_port, "tls": True,
                 "ca_file": str(oauth_dovecot.ca_file), "username": box.user,
                 "auth": "oauth2", "timeout": "10s", "reconnect_initial": "1s",
                 "reconnect_max": "2s"},
        "oauth": provider.config()})
    await _signed_in(settings, provider, box.user)
    caplog.set_level(logging.WARNING, logger="frontdesk.channels.email.imap")
    d = await daemon_factory(settings)
    await eventually(lambda: _ready(d))
    tokens = _tokens_of(d)
    assert tokens.renewals == 1
    provider.access_tokens.clear()  # the provider ended it early; the daemon cannot know
    assert box.kick()
    # The server's refusal (a challenge with the reason, then NO) comes at once, not after the
    # command timeout; the reader drops the token and signs in with a new one.
    await eventually(lambda: _logged(caplog, "refused the OAuth 2.0 sign-in", box.user),
                     timeout=8)
    await eventually(lambda: _ready(d), timeout=10)
    assert tokens.renewals == 2
    box.deliver(raw_mail(1))
    await eventually(lambda: processed(d.store), timeout=10)


async def test_imap_reader_with_a_revoked_consent_says_how_to_sign_in_again(
        provider: FakeOAuth, oauth_dovecot: OAuthDovecot, key: str, make_settings: Any,
        daemon_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    box = oauth_dovecot.add_user()
    settings = make_settings(email={
        "imap": {"host": "127.0.0.1", "port": oauth_dovecot.imaps_port, "tls": True,
                 "ca_file": str(oauth_dovecot.ca_file), "username": box.user,
                 "auth": "oauth2", "timeout": "10s", "reconnect_initial": "1s",
                 "reconnect_max": "2s"},
        "oauth": provider.config()})
    await _signed_in(settings, provider, box.user)
    caplog.set_level(logging.WARNING, logger="frontdesk.channels.email")
    provider.revoke(box.user)
    d = await daemon_factory(settings)
    await eventually(lambda: _not_ready_naming(d, f"oauth:{box.user}", "invalid_grant"))
    _, checks = await d.readiness()
    assert checks["imap"] == "down"
    assert f"frontdesk oauth login generic --account {box.user}" in checks[f"oauth:{box.user}"]
    await eventually(lambda: _logged(caplog, "IMAP", "refused to renew"))


async def _not_ready_naming(d: Any, check: str, words: str) -> bool:
    ok, checks = await d.readiness()
    return not ok and words in checks.get(check, "")


async def _logged(caplog: pytest.LogCaptureFixture, *words: str) -> bool:
    return any(all(w in r.getMessage() for w in words) for r in caplog.records)


# -- the relay ---------------------------------------------------------------------------------


def _relay_settings(make_settings: Any, relay: XOAuth2Relay, provider: FakeOAuth,
                    tmp_path: Path, ca: trustme.CA, database_url: str | None = None,
                    **oauth: Any) -> Any:
    return make_settings(database_url=database_url, email={
        "outbound": {"host": "127.0.0.1", "port": relay.port, "starttls": "required",
                     "ca_file": _ca_file(ca, tmp_path), "username": RELAY_ACCOUNT,
                     "auth": "oauth2", "from": "Support <support@example.com>"},
        "oauth": provider.config(**oauth)})


async def _reply(d: Any, text: str) -> None:
    await send(d.email.smtp.port, mail(msgid="<q1@example.org>"))
    await eventually(lambda: processed(d.store))
    [conv] = await conversations(d.store)
    async with d.store.session() as s:
        c = await get_conversation(s, conv.id)
        await add_staff_reply(s, c, text, author="Grace", replies=d.replies,
                              now=d.clock())
    d.outbox.kick()


async def test_staff_reply_goes_out_through_a_relay_that_takes_xoauth2(
        provider: FakeOAuth, relay: XOAuth2Relay, relay_ca: trustme.CA, key: str,
        tmp_path: Path, database_url: str, make_settings: Any, daemon_factory: Any) -> None:
    settings = _relay_settings(make_settings, relay, provider, tmp_path, relay_ca, database_url)
    await _signed_in(settings, provider, RELAY_ACCOUNT)
    d = await daemon_factory(settings)
    await _reply(d, "Your parcel left today.")
    await eventually(lambda: _sent(relay, 1))
    assert relay.logins == [RELAY_ACCOUNT] and relay.secure == [True]
    assert relay.parsed().get_content().strip() == "Your parcel left today."
    status, body = await _readyz(d)
    assert status == 200 and body["checks"][f"oauth:{RELAY_ACCOUNT}"] == "ok"


async def _sent(relay: XOAuth2Relay, n: int) -> bool:
    return len(relay.messages) == n


async def test_revoked_consent_makes_readyz_name_it_logs_once_and_recovers_on_a_new_login(
        provider: FakeOAuth, relay: XOAuth2Relay, relay_ca: trustme.CA, key: str,
        tmp_path: Path, make_settings: Any, daemon_factory: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    provider.access_lifetime = 2
    settings = _relay_settings(make_settings, relay, provider, tmp_path, relay_ca)
    await _signed_in(settings, provider, RELAY_ACCOUNT)
    caplog.set_level(logging.INFO, logger="frontdesk.channels.email.oauth")
    d = await daemon_factory(settings)
    tokens = _tokens_of(d)
    tokens.recheck = 0.3  # a new sign-in is noticed within this (30 s in service)
    await eventually(lambda: _at_least(tokens, 1))
    assert (await _readyz(d))[0] == 200

    provider.revoke(RELAY_ACCOUNT)  # the person revoked frontdesk's access
    check = f"oauth:{RELAY_ACCOUNT}"
    await eventually(lambda: _not_ready_naming(d, check, "invalid_grant"), timeout=10)
    status, body = await _readyz(d)
    assert status == 503 and body["ready"] is False
    assert body["checks"]["email"] == "ok"
    assert "refused to renew the sign-in of support@example.com" in body["checks"][check]
    assert ("sign in again with `frontdesk oauth login generic --account support@example.com`"
            in body["checks"][check])
    await asyncio.sleep(1.0)  # several more looks at it: still one line in the log
    refusals = [r for r in caplog.records if "refused to renew" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelno == logging.ERROR
    async with d.store.reader() as s:
        row = await s.get(OAuthToken, RELAY_ACCOUNT)
        assert row is not None and row.last_error and "invalid_grant" in row.last_error

    # A reply now is kept for later, saying why.
    await _reply(d, "Still on it.")
    await eventually(lambda: _waiting_because(d, "refused to renew"))
    assert relay.messages == []

    # Someone signs in again: the running daemon notices by itself and the reply goes out.
    await _signed_in(settings, provider, RELAY_ACCOUNT)
    await eventually(lambda: _ready(d), timeout=10)
    await eventually(lambda: _sent(relay, 1), timeout=10)
    assert relay.logins == [RELAY_ACCOUNT]
    async with d.store.reader() as s:
        row = await s.get(OAuthToken, RELAY_ACCOUNT)
        assert row is not None and row.last_error is None
    assert any("works again" in r.getMessage() for r in caplog.records)


async def _ready(d: Any) -> bool:
    return (await d.readiness())[0]


async def _waiting_because(d: Any, words: str) -> bool:
    from frontdesk.storage.models import Outbox

    async with d.store.reader() as s:
        rows = (await s.execute(select(Outbox))).scalars().all()
    return any(words in (r.last_error or "") for r in rows)


async def test_relay_refusing_the_token_is_a_temporary_failure_and_asks_for_a_new_one(
        provider: FakeOAuth, relay: XOAuth2Relay, relay_ca: trustme.CA, key: str,
        tmp_path: Path, make_settings: Any) -> None:
    settings = _relay_settings(make_settings, relay, provider, tmp_path, relay_ca)
    await _signed_in(settings, provider, RELAY_ACCOUNT)
    store = Store.from_settings(settings.database)
    tokens = AccessTokens(settings.email.oauth)
    tokens.connect(store)
    sender = EmailSender(settings.email.outbound, hostname="frontdesk.test", tokens=tokens)
    out = OutboundMessage(channel="email", to_address="ada@example.org", to_name="Ada",
                          subject="Re: order", text="Hello")
    try:
        first = await tokens.access_token(RELAY_ACCOUNT)
        provider.access_tokens.pop(first)  # the provider forgot it (revoked server-side)
        with pytest.raises(TemporaryFailure) as failed:
            await sender.send(out)
        assert "535" in failed.value.reason and "frontdesk oauth status" in failed.value.reason
        assert first not in failed.value.reason and first not in str(failed.value.__cause__)
        assert relay.failed_logins == [RELAY_ACCOUNT]
        await sender.send(out)  # a new token was asked for, and taken
        assert relay.logins == [RELAY_ACCOUNT] and len(relay.messages) == 1
        assert await tokens.access_token(RELAY_ACCOUNT) != first
    finally:
        await store.dispose()


# -- the token logic ---------------------------------------------------------------------------


async def test_renewal_retries_with_backoff_and_keeps_a_rotated_refresh_token(
        provider: FakeOAuth, key: str, database_url: str, make_settings: Any) -> None:
    provider.rotate = True
    settings = make_settings(database_url=database_url, email={
        "outbound": {"username": RELAY_ACCOUNT, "auth": "oauth2"}, "oauth": provider.config()})
    first_refresh = await _signed_in(settings, provider, RELAY_ACCOUNT)
    store = Store.from_settings(settings.database)
    tokens = AccessTokens(settings.email.oauth, retry_initial=0.05, attempts=3)
    tokens.connect(store)
    try:
        provider.unavailable = True
        with pytest.raises(SignInUnavailable, match="HTTP 503"):
            await tokens.access_token(RELAY_ACCOUNT)
        assert provider.grants == ["refresh_token"] * 3  # three tries, backing off
        assert "cannot renew" in (tokens.problem(RELAY_ACCOUNT) or "")
        provider.unavailable = False
        token = await tokens.access_token(RELAY_ACCOUNT)
        assert provider.active(token) == RELAY_ACCOUNT and tokens.problem(RELAY_ACCOUNT) is None
        # The provider rotated the refresh token: the new one is stored, encrypted.
        row = await SignIns(store).get(RELAY_ACCOUNT)
        assert row is not None
        stored = TokenCipher.from_environment(KEY_ENV).decrypt(row.refresh_token)
        assert stored != first_refresh and stored in provider.refresh_tokens
        tokens.invalidate(RELAY_ACCOUNT, token)
        token = await tokens.access_token(RELAY_ACCOUNT)
        assert provider.active(token)  # renewed with the rotated refresh token
        # Renewal due while the provider is down: the token in hand still does meanwhile.
        tokens._accounts[RELAY_ACCOUNT].renew_at = 0.0
        provider.unavailable = True
        assert await tokens.access_token(RELAY_ACCOUNT) == token
        assert tokens.problem(RELAY_ACCOUNT) is None
    finally:
        await store.dispose()


async def test_an_account_never_signed_in_is_named_with_the_command(
        provider: FakeOAuth, key: str, make_settings: Any) -> None:
    settings = make_settings(email={"outbound": {"username": RELAY_ACCOUNT, "auth": "oauth2"},
                                    "oauth": provider.config()})
    store = Store.from_settings(settings.database)
    await store.ensure_schema()
    tokens = AccessTokens(settings.email.oauth)
    tokens.connect(store)
    try:
        with pytest.raises(SignInRefused, match=re.escape(
                "is not signed in; run `frontdesk oauth login generic --account "
                "support@example.com`")):
            await tokens.access_token(RELAY_ACCOUNT)
        assert provider.grants == []
    finally:
        await store.dispose()


def test_xoauth2_string_is_the_sasl_format() -> None:
    decoded = base64.b64decode(xoauth2("someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckB"))
    assert decoded == b"user=someuser@example.com\x01auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckB\x01\x01"


def test_presets_are_the_providers_endpoints_and_scopes() -> None:
    google = provider_for(EmailConfig.model_validate({"oauth": {"provider": "google"}}).oauth)
    assert google.token_endpoint == "https://oauth2.googleapis.com/token"
    assert google.authorization_endpoint == "https://accounts.google.com/o/oauth2/v2/auth"
    assert google.scopes == ("https://mail.google.com/",)
    assert google.device_authorization_endpoint == ""  # Google's device flow refuses Gmail
    ms = provider_for(EmailConfig.model_validate(
        {"oauth": {"provider": "microsoft", "tenant": "contoso.onmicrosoft.com"}}).oauth)
    base = "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0"
    assert ms.token_endpoint == f"{base}/token"
    assert ms.device_authorization_endpoint == f"{base}/devicecode"
    assert ms.scopes == ("https://outlook.office.com/IMAP.AccessAsUser.All",
                         "https://outlook.office.com/SMTP.Send", "offline_access")


# -- signing in (frontdesk oauth login|status|logout) -------------------------------------------


def _cli_config(tmp_path: Path, provider: FakeOAuth, *, imap_user: str = "") -> Path:
    path = tmp_path / "frontdesk.toml"
    path.write_text(f"""
[database]
url = "sqlite+aiosqlite:///{tmp_path}/frontdesk.db"
[daemon]
data_dir = "{tmp_path}/data"
[email]
inbox_addresses = ["support@example.com"]
[email.imap]
host = "imap.example.com"
username = "{imap_user or 'support@example.com'}"
auth = "oauth2"
[email.oauth]
provider = "generic"
client_id = "{provider.client_id}"
authorization_endpoint = "{provider.base_url}/authorize"
token_endpoint = "{provider.base_url}/token"
device_authorization_endpoint = "{provider.base_url}/device/code"
scopes = ["mail", "offline_access"]
""")
    return path


async def test_oauth_login_runs_the_device_flow_and_stores_the_refresh_token_encrypted(
        provider: FakeOAuth, key: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    config = str(_cli_config(tmp_path, provider))
    login = asyncio.create_task(run_cli(capsys, "oauth", "login", "generic", "--account",
                                        "Support@Example.com", "-c", config, "--as", "Grace"))
    [user_code] = await eventually(lambda: _pending(provider))
    provider.approve(user_code, "support@example.com")  # the person signs in on their phone
    code, out, err = await login
    assert code == 0, err
    assert f"{provider.base_url}/device" in out and f"enter the code {user_code}" in out
    assert "signed in: support@example.com (generic)" in out
    [refresh] = provider.refresh_tokens  # the one the flow issued

    store = Store(f"sqlite+aiosqlite:///{tmp_path}/frontdesk.db")
    try:
        async with store.reader() as s:
            row = await s.get(OAuthToken, "support@example.com")
            events = (await s.execute(select(Event).where(Event.kind == "oauth_signed_in"))
                      ).scalars().all()
        assert row is not None and row.provider == "generic"
        assert row.scope == "mail offline_access" and row.last_error is None
        assert row.refresh_token != refresh
        assert TokenCipher(key).decrypt(row.refresh_token) == refresh
        assert [(e.actor, e.data) for e in events] == [
            ("Grace", {"account": "support@example.com", "provider": "generic"})]
    finally:
        await store.dispose()
    # Nowhere in the SQLite files (the database and its write-ahead log) in clear.
    for path in tmp_path.glob("frontdesk.db*"):
        assert refresh.encode() not in path.read_bytes(), path

    code, out, _ = await run_cli(capsys, "oauth", "status", "--json", "-c", config)
    assert code == 0
    [shown] = json.loads(out)
    assert shown["account"] == "support@example.com" and shown["signed_in"] is True
    assert shown["used_by"] == ["imap"] and shown["last_error"] is None
    assert refresh not in out and row.refresh_token not in out
    code, out, _ = await run_cli(capsys, "oauth", "status", "-c", config)
    assert "support@example.com  generic  signed in" in out and "used by imap" in out

    code, out, err = await run_cli(capsys, "oauth", "logout", "--account",
                                   "support@example.com", "-c", config)
    assert code == 0 and "signed out: support@example.com" in out
    assert "the config still signs in as support@example.com" in err
    code, out, _ = await run_cli(capsys, "oauth", "status", "--json", "-c", config)
    assert json.loads(out)[0]["signed_in"] is False
    code, _, err = await run_cli(capsys, "oauth", "logout", "--account",
                                 "support@example.com", "-c", config)
    assert code == 1 and "is not signed in" in err


async def _pending(provider: FakeOAuth) -> list[str]:
    return provider.pending_user_codes()


async def test_oauth_login_declined_stores_nothing(
        provider: FakeOAuth, key: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    config = str(_cli_config(tmp_path, provider))
    login = asyncio.create_task(run_cli(capsys, "oauth", "login", "generic", "--account",
                                        "support@example.com", "-c", config))
    [user_code] = await eventually(lambda: _pending(provider))
    provider.deny(user_code)
    code, _, err = await login
    assert code == 1 and "frontdesk: the sign-in was declined" in err
    code, out, _ = await run_cli(capsys, "oauth", "status", "--json", "-c", config)
    assert [v["signed_in"] for v in json.loads(out)] == [False]


async def test_oauth_login_without_the_key_names_it(
        provider: FakeOAuth, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    config = str(_cli_config(tmp_path, provider))
    code, _, err = await run_cli(capsys, "oauth", "login", "generic", "--account",
                                 "support@example.com", "-c", config)
    assert code == 1
    assert "email.imap.auth = \"oauth2\" needs: the environment variable" in err
    assert "FRONTDESK_OAUTH_KEY (email.oauth.key_env)" in err and "frontdesk oauth key" in err
    assert provider.devices == {}


async def test_browser_flow_with_pkce_and_a_loopback_redirect(
        provider: FakeOAuth, key: str) -> None:
    provider.authorize_as = "support@example.com"
    config = EmailConfig.model_validate({"oauth": provider.config()}).oauth
    visits: list[str] = []

    def show(url: str, port: int) -> None:
        visits.append(url)
        asyncio.get_running_loop().create_task(_browse(url))

    token = await browser_login(config, provider_for(config), account="support@example.com",
                                show=show, wait=10)
    [url] = visits
    assert "code_challenge_method=S256" in url and "login_hint=support%40example.com" in url
    assert provider.grants == ["authorization_code"]
    assert provider.refresh_tokens[token["refresh_token"]][0] == "support@example.com"


async def _browse(url: str) -> None:
    """What a browser does: visit the provider, follow its redirect back to frontdesk."""
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200
        assert "you can close this window" in await response.text()


async def test_device_flow_polls_until_approved_and_slows_down_when_told(
        provider: FakeOAuth, key: str) -> None:
    config = EmailConfig.model_validate({"oauth": provider.config()}).oauth
    prompts = []
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            provider.approve(prompts[0].user_code, "support@example.com")

    token = await device_login(config, provider_for(config), show=prompts.append, sleep=sleep)
    assert sleeps == [1, 1, 1]
    assert provider.grants == [
        "urn:ietf:params:oauth:grant-type:device_code"] * 3
    assert token["refresh_token"] in provider.refresh_tokens


# -- configuration -----------------------------------------------------------------------------


def _load(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "frontdesk.toml"
    path.write_text(text)
    return load_settings(path, Settings)


def test_oauth2_without_the_key_or_the_registration_is_a_config_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(ConfigError) as missing:
        _load(tmp_path, '[email.outbound]\nauth = "oauth2"\n')
    [(where, message)] = missing.value.problems
    assert where == "email"
    assert message.startswith('email.outbound.auth = "oauth2" needs: email.oauth.provider')
    for words in ("email.oauth.client_id", "email.outbound.username",
                  "FRONTDESK_OAUTH_KEY (email.oauth.key_env)", "is not set"):
        assert words in message
    monkeypatch.setenv(KEY_ENV, "not-a-key")
    with pytest.raises(ConfigError, match="FRONTDESK_OAUTH_KEY is not a Fernet key"):
        _load(tmp_path, '[email.imap]\nauth = "oauth2"\n'
                        '[email.oauth]\nprovider = "microsoft"\nclient_id = "x"\n')
    monkeypatch.setenv(KEY_ENV, new_key())
    settings = _load(tmp_path, '[email.imap]\nauth = "oauth2"\n'
                               '[email.oauth]\nprovider = "microsoft"\nclient_id = "x"\n')
    assert settings.email.imap.auth == "oauth2"
    with pytest.raises(ConfigError, match="must be an https:// address"):
        _load(tmp_path, '[email.oauth]\ntoken_endpoint = "http://idp.example.com/token"\n')


def test_check_names_a_missing_key(tmp_path: Path) -> None:
    path = tmp_path / "frontdesk.toml"
    path.write_text('[database]\nurl = "sqlite+aiosqlite:///./frontdesk.db"\n'
                    '[email.imap]\nhost = "outlook.office365.com"\n'
                    'username = "support@example.com"\nauth = "oauth2"\n'
                    '[email.oauth]\nprovider = "microsoft"\nclient_id = "1234"\n')
    import os

    env = {k: v for k, v in os.environ.items() if k != KEY_ENV}
    done = subprocess.run([str(Path(sys.executable).parent / "frontdesk"), "check", "-c",
                           str(path), "--json"], capture_output=True, text=True, env=env,
                          timeout=60, check=False)
    assert done.returncode == 1
    [problem] = json.loads(done.stdout)["problems"]
    assert problem["key"] == "email" and "FRONTDESK_OAUTH_KEY" in problem["message"]


def test_imap_with_oauth2_needs_no_password_and_the_relay_config_masks_the_secret(
        key: str, make_settings: Any) -> None:
    from frontdesk.daemon.process.app import build_channels

    settings = make_settings(email={
        "imap": {"host": "127.0.0.1", "username": "support@example.com", "auth": "oauth2"},
        "outbound": {"username": "support@example.com", "auth": "oauth2"},
        "oauth": {"provider": "google", "client_id": "abc.apps.googleusercontent.com",
                  "client_secret": "GOCSPX-secret"}})
    channels, disabled = build_channels(settings)
    assert {c.name for c in channels} >= {"email", "imap"}
    assert not any("imap" in line for line in disabled)
    reader = next(c for c in channels if c.name == "imap")
    email = next(c for c in channels if c.name == "email")
    assert reader._tokens is email._tokens  # one set of tokens for both
    from frontdesk.daemon.cli.main import masked

    assert masked(settings)["email"]["oauth"]["client_secret"] == "**********"
    assert OutboundConfig().auth == "password"

