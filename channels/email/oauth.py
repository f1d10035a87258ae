"""OAuth 2.0 sign-in (SASL XOAUTH2) for the IMAP reader and the outbound relay.

Microsoft 365 no longer lets IMAP and SMTP sign in with a password, and Google steers to OAuth.
With ``auth = "oauth2"`` in ``[email.imap]`` or ``[email.outbound]`` frontdesk signs in with an
access token from the app registration in ``[email.oauth]`` instead:

* ``frontdesk oauth login`` runs the authorization once: the device flow (RFC 8628,
  :func:`device_login`) where the provider has one for these scopes (Microsoft), else the
  authorization code flow with PKCE and a redirect to ``http://127.0.0.1:PORT/``
  (:func:`browser_login`; Google, whose device flow refuses the Gmail scope). The refresh token
  is stored encrypted (Fernet, the key from the environment, :class:`TokenCipher`) in the
  store's ``oauth_tokens`` (:class:`SignIns`); it never appears in clear in the store, a log or
  a command's output.
* The daemon's :class:`AccessTokens` turns it into access tokens, kept in memory only and
  renewed ahead of expiry by a background task. A renewal that cannot reach the provider is
  retried with a growing backoff; a refusal (``invalid_grant``: consent revoked, password
  changed, sign-in expired) is logged once in one line saying how to sign in again, recorded
  on the row (``last_error``) and named by ``/readyz`` until someone does; a new
  ``frontdesk oauth login`` is picked up by the running daemon by itself.
* :func:`xoauth2` is the SASL string both protocols send (``AUTHENTICATE XOAUTH2`` for IMAP,
  ``AUTH XOAUTH2`` for SMTP).

The token endpoint is spoken to with authlib's httpx2 client; nothing here is imported by the
daemon's process layer, and nothing of it reaches the core but the channels' readiness.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from frontdesk.channels.email import OAuthConfig
from frontdesk.storage.clock import Clock, utcnow
from frontdesk.storage.db import Store
from frontdesk.storage.models import Event, OAuthToken

log = logging.getLogger(__name__)

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
"""RFC 8628's grant type for polling the token endpoint."""


# --- the providers ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Provider:
    """Where and how to ask for tokens: a preset (google, microsoft) or ``generic``, with the
    endpoints and scopes ``[email.oauth]`` sets taking precedence."""

    name: str
    authorization_endpoint: str
    token_endpoint: str
    device_authorization_endpoint: str
    scopes: tuple[str, ...]
    authorize_params: Mapping[str, str] = field(default_factory=dict)
    """Extra parameters of the authorization request (Google: a refresh token needs
    ``access_type=offline``, and ``prompt=consent`` gives a new one on every sign-in)."""
    refresh_scope: bool = False
    """Send the scopes with a refresh (Microsoft's v2 endpoint asks for them)."""


GOOGLE_DEVICE_ENDPOINT = "https://oauth2.googleapis.com/device/code"
"""Google's device authorization endpoint. Not in the preset: Google's device flow takes only a
short list of scopes, and ``https://mail.google.com/`` is not among them (it answers
``invalid_scope``), so Google signs in through the browser flow."""

_PRESETS = {
    "google": Provider(
        name="google",
        authorization_endpoint="https://accounts.google.com/o/oauth2/v2/auth",
        token_endpoint="https://oauth2.googleapis.com/token",
        device_authorization_endpoint="",
        scopes=("https://mail.google.com/",),
        authorize_params={"access_type": "offline", "prompt": "consent"},
    ),
    "microsoft": Provider(
        name="microsoft",
        authorization_endpoint="https://login.microsoftonline.com/{tenant}/oauth2/v2.0/authorize",
        token_endpoint="https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token",
        device_authorization_endpoint=(
            "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/devicecode"),
        scopes=("https://outlook.office.com/IMAP.AccessAsUser.All",
                "https://outlook.office.com/SMTP.Send", "offline_access"),
        refresh_scope=True,
    ),
}
PROVIDERS = ("google", "microsoft", "generic")


def provider_for(config: OAuthConfig, name: str | None = None) -> Provider:
    """The endpoints and scopes of ``name`` (default: ``config.provider``), the config's own
    endpoints and scopes overriding the preset's."""
    name = name or config.provider or "generic"
    preset = _PRESETS.get(name, Provider(name, "", "", "", ()))

    def pick(own: str, preset_value: str) -> str:
        return own or preset_value.replace("{tenant}", config.tenant)

    return Provider(
        name=name,
        authorization_endpoint=pick(config.authorization_endpoint,
                                    preset.authorization_endpoint),
        token_endpoint=pick(config.token_endpoint, preset.token_endpoint),
        device_authorization_endpoint=pick(config.device_authorization_endpoint,
                                           preset.device_authorization_endpoint),
        scopes=tuple(config.scopes) or preset.scopes,
        authorize_params=preset.authorize_params,
        refresh_scope=preset.refresh_scope,
    )


def login_command(provider: str, account: str) -> str:
    """The command that signs ``account`` in again."""
    return f"frontdesk oauth login {provider} --account {account}"


def account_key(account: str) -> str:
    """How an account is looked up in the store: a mailbox address, case-insensitively."""
    return account.strip().lower()


def xoauth2(user: str, access_token: str) -> str:
    """The SASL XOAUTH2 initial response: base64 of
    ``user={user}^Aauth=Bearer {token}^A^A`` (^A is the byte 0x01)."""
    raw = f"user={user}\x01auth=Bearer {access_token}\x01\x01"
    return base64.b64encode(raw.encode("utf-8")).decode("ascii")


# --- errors -------------------------------------------------------------------------------------

class OAuthError(Exception):
    """Signing in did not work. The text is for people and never holds a token."""


class SignInRefused(OAuthError):
    """A person has to act: the provider refused the refresh token (consent revoked, password
    changed, expired), the account was never signed in, or the stored token cannot be
    decrypted with the key given."""


class SignInUnavailable(OAuthError):
    """The provider could not be asked (network, timeout, its own error): try again later."""


class LoginFailed(OAuthError):
    """``frontdesk oauth login`` did not end in a stored sign-in."""


class _Refused(Exception):
    """The token endpoint's error answer (RFC 6749 5.2)."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description


_TRANSIENT_ERRORS = frozenset({"temporarily_unavailable", "server_error"})


# --- the key for stored tokens ------------------------------------------------------------------

def new_key() -> str:
    """A fresh key for ``FRONTDESK_OAUTH_KEY`` (a Fernet key: 32 random bytes, url-safe
    base64)."""
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode("ascii")


def key_problem(key_env: str, environ: Mapping[str, str] | None = None) -> str | None:
    """Why the key in ``key_env`` cannot encrypt stored tokens, or None when it can."""
    try:
        TokenCipher.from_environment(key_env, environ)
    except SignInRefused as exc:
        return str(exc)
    return None


class TokenCipher:
    """Encrypts refresh tokens for the store (Fernet: AES-128-CBC with HMAC-SHA256).

    The environment variable may hold several keys separated by commas: the first encrypts,
    every one decrypts (a key being replaced: put the new one first, then sign in again)."""

    def __init__(self, keys: str) -> None:
        from cryptography.fernet import Fernet, MultiFernet

        self._fernet = MultiFernet([Fernet(k.strip().encode("ascii"))
                                    for k in keys.split(",") if k.strip()])

    @classmethod
    def from_environment(cls, key_env: str,
                         environ: Mapping[str, str] | None = None) -> TokenCipher:
        value = (os.environ if environ is None else environ).get(key_env, "").strip()
        how = "make one with `frontdesk oauth key`"
        if not value:
            raise SignInRefused(f"the environment variable {key_env} (email.oauth.key_env), the "
                                f"key that encrypts the stored sign-ins, is not set; {how}")
        try:
            return cls(value)
        except (ValueError, UnicodeError):
            raise SignInRefused(f"{key_env} is not a Fernet key (32 bytes in url-safe base64; "
                                f"several separated by commas); {how}") from None

    def encrypt(self, text: str) -> str:
        return self._fernet.encrypt(text.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> str:
        from cryptography.fernet import InvalidToken

        try:
            return self._fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except (InvalidToken, ValueError, UnicodeError):
            raise ValueError("cannot be decrypted with this key") from None


# --- the stored sign-ins ------------------------------------------------------------------------

class SignIns:
    """The ``oauth_tokens`` rows: one per signed-in account, its refresh token encrypted."""

    def __init__(self, store: Store, *, clock: Clock = utcnow) -> None:
        self._store = store
        self._clock = clock

    async def get(self, account: str) -> OAuthToken | None:
        async with self._store.reader() as s:
            return await s.get(OAuthToken, account_key(account))

    async def save(self, account: str, *, provider: str, refresh_token: str, scope: str,
                   actor: str) -> None:
        """Store a new sign-in (``refresh_token`` already encrypted), replacing an older one
        of the account; audited."""
        now, key = self._clock(), account_key(account)
        async with self._store.session() as s:
            row = await s.get(OAuthToken, key)
            if row is None:
                s.add(OAuthToken(account=key, provider=provider, refresh_token=refresh_token,
                                 scope=scope, created_at=now, updated_at=now, refreshed_at=now,
                                 last_error=None))
            else:
                row.provider, row.refresh_token, row.scope = provider, refresh_token, scope
                row.updated_at = row.refreshed_at = now
                row.last_error = None
            s.add(Event(kind="oauth_signed_in", actor=actor[:256], created_at=now,
                        data={"account": key, "provider": provider}))

    async def refreshed(self, account: str, *, rotated: str | None = None) -> None:
        """A renewal worked; ``rotated``: the provider gave a new refresh token (encrypted)."""
        now = self._clock()
        async with self._store.session() as s:
            row = await s.get(OAuthToken, account_key(account))
            if row is None:
                return
            row.refreshed_at, row.last_error = now, None
            if rotated is not None:
                row.refresh_token, row.updated_at = rotated, now

    async def failed(self, account: str, error: str) -> None:
        async with self._store.session() as s:
            row = await s.get(OAuthToken, account_key(account))
            if row is not None:
                row.last_error = error[:2000]

    async def remove(self, account: str, *, actor: str) -> bool:
        """Forget an account's sign-in (audited); False if there was none."""
        now = self._clock()
        async with self._store.session() as s:
            row = await s.get(OAuthToken, account_key(account))
            if row is None:
                return False
            await s.delete(row)
            s.add(Event(kind="oauth_signed_out", actor=actor[:256], created_at=now,
                        data={"account": row.account, "provider": row.provider}))
        return True

    async def listing(self) -> list[dict[str, Any]]:
        """Every sign-in, without its token."""
        from frontdesk.domain.conversations import iso

        async with self._store.reader() as s:
            rows = (await s.execute(select(OAuthToken).order_by(OAuthToken.account))).scalars()
            return [{"account": r.account, "provider": r.provider, "scope": r.scope,
                     "created_at": iso(r.created_at), "updated_at": iso(r.updated_at),
                     "refreshed_at": iso(r.refreshed_at), "last_error": r.last_error}
                    for r in rows]


# --- talking to the token endpoint --------------------------------------------------------------

def _client(config: OAuthConfig, *, scope: str | None = None, redirect_uri: str | None = None,
            timeout: float = 30.0) -> Any:
    """authlib's OAuth 2.0 client on httpx2: a confidential client sends its secret in the
    body (``client_secret_post``, which Google, Microsoft and most servers take), a public one
    only its id."""
    from authlib.integrations.httpx_client import AsyncOAuth2Client

    secret = config.client_secret.get_secret_value() or None
    return AsyncOAuth2Client(
        client_id=config.client_id, client_secret=secret,
        token_endpoint_auth_method="client_secret_post" if secret else "none",
        scope=scope, redirect_uri=redirect_uri, code_challenge_method="S256",
        timeout=timeout)


async def _token_call(what: str, call: Awaitable[Any]) -> dict[str, Any]:
    """Await one token endpoint request: its JSON answer, :class:`_Refused` for an error answer,
    :class:`SignInUnavailable` when the endpoint could not be asked."""
    import httpx2
    from authlib.integrations.base_client import OAuthError as AuthlibError

    try:
        return dict(await call)
    except AuthlibError as exc:
        error = str(exc.error or "error")
        description = " ".join(str(exc.description or "").split())[:300]
        if error in _TRANSIENT_ERRORS:
            raise SignInUnavailable(f"{what} answered {error}") from None
        raise _Refused(error, description) from None
    except httpx2.HTTPStatusError as exc:
        raise SignInUnavailable(f"{what} answered HTTP {exc.response.status_code}") from None
    except httpx2.TimeoutException:
        raise SignInUnavailable(f"{what} did not answer in time") from None
    except httpx2.TransportError as exc:
        raise SignInUnavailable(f"{what} could not be reached ({exc or type(exc).__name__})"
                                ) from None
    except ValueError as exc:
        raise SignInUnavailable(f"{what} gave an answer that is not a token ({exc})") from None


async def refresh(config: OAuthConfig, provider: Provider, refresh_token: str, *,
                  timeout: float = 30.0) -> dict[str, Any]:
    """One refresh (RFC 6749 6): the token endpoint's answer (``access_token``,
    ``expires_in``, maybe a new ``refresh_token``)."""
    scope = " ".join(provider.scopes) if provider.refresh_scope else None
    async with _client(config, scope=scope, timeout=timeout) as client:
        token = await _token_call(f"the token endpoint of {provider.name}", client.refresh_token(
            provider.token_endpoint, refresh_token=refresh_token))
    if not token.get("access_token"):
        raise SignInUnavailable(f"the token endpoint of {provider.name} gave no access token")
    return token


# --- the daemon's access tokens -----------------------------------------------------------------

@dataclass
class _Account:
    """What the daemon knows of one account's access token (memory only)."""

    token: str | None = None
    renew_at: float = 0.0
    """time.monotonic() from which the token is renewed (ahead of its expiry)."""
    expires_at: float = 0.0
    lifetime: float = 0.0
    problem: str | None = None
    refused: str | None = None
    """The stored (encrypted) refresh token the provider refused: not offered again."""
    failures: int = 0
    """Renewals in a row that could not reach the provider."""
    unavailable: str = ""
    """Why the last of them failed."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def usable(self) -> bool:
        """The token in hand still works for a while (used when a renewal fails)."""
        margin = min(5.0, self.lifetime * 0.1)
        return self.token is not None and time.monotonic() < self.expires_at - margin


class AccessTokens:
    """Access tokens for the accounts the IMAP reader and the relay sign in as.

    One per process, shared by both (the same mailbox usually reads and sends). ``connect``
    gives it the store, ``watch`` the accounts to keep fresh; between ``start`` and ``stop``
    (counted: each user starts and stops it once) a background task renews every watched
    account's token five minutes before it ends (one that lives less than 25 minutes when 80 %
    of its life has gone).
    """

    def __init__(self, config: OAuthConfig, *, environ: Mapping[str, str] | None = None,
                 retry_initial: float = 1.0, retry_max: float = 300.0, recheck: float = 30.0,
                 attempts: int = 3, timeout: float = 30.0) -> None:
        self.config = config
        self.provider = provider_for(config)
        self._environ = environ
        self._cipher: TokenCipher | None = None
        self._sign_ins: SignIns | None = None
        self._accounts: dict[str, _Account] = {}
        self._names: dict[str, str] = {}
        self.retry_initial, self.retry_max = retry_initial, retry_max
        self.recheck = recheck
        """How often an account in trouble is looked at again (a new sign-in in the store)."""
        self.attempts = attempts
        self.timeout = timeout
        self._users = 0
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self.renewals = 0
        """Access tokens obtained (tests and logs)."""

    # -- composition ------------------------------------------------------------------------

    def connect(self, store: Store, *, clock: Clock = utcnow) -> None:
        if self._sign_ins is None:
            self._sign_ins = SignIns(store, clock=clock)

    def watch(self, account: str) -> None:
        key = account_key(account)
        self._accounts.setdefault(key, _Account())
        self._names.setdefault(key, account.strip())

    def login_command(self, account: str) -> str:
        return login_command(self.provider.name, account_key(account))

    def problem(self, account: str) -> str | None:
        """Why ``account`` has no working sign-in now (for ``/readyz``), or None."""
        state = self._accounts.get(account_key(account))
        return state.problem if state is not None else None

    def checks(self, account: str) -> dict[str, str]:
        """``/readyz`` parts: ``{"oauth:<account>": "ok" | why not}``."""
        return {f"oauth:{account_key(account)}": self.problem(account) or "ok"}

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._users += 1
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.create_task(self._run(), name="oauth-tokens")

    async def stop(self) -> None:
        self._users = max(0, self._users - 1)
        if self._users or self._task is None:
            return
        self._stop.set()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        while not self._stop.is_set():
            wait = self.recheck
            for key in list(self._accounts):
                state = self._accounts[key]
                ahead = state.renew_at - time.monotonic()
                if state.token is not None and ahead > 0:
                    wait = min(wait, ahead)
                    continue
                try:
                    await self.access_token(key)
                except SignInRefused:
                    continue  # logged once; looked at again after `recheck`
                except SignInUnavailable:
                    pass  # the backoff below
                except Exception:  # the refresher must go on (logged with its traceback)
                    log.exception("OAuth: renewing the sign-in of %s failed", key)
                    continue
                if state.failures:  # not renewed (the token in hand may still do for now)
                    delay = self._backoff(state.failures)
                    log.warning("OAuth: cannot renew the sign-in of %s (%s); trying again in "
                                "%.1f s", self._names.get(key, key), state.unavailable, delay)
                    wait = min(wait, delay)
                else:
                    wait = min(wait, max(state.renew_at - time.monotonic(), 0.05))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(wait, 0.05))

    def _backoff(self, failures: int) -> float:
        base = min(self.retry_max, self.retry_initial * 2 ** min(max(failures - 1, 0), 30))
        return base * random.uniform(0.5, 1.0)

    # -- tokens -----------------------------------------------------------------------------

    async def access_token(self, account: str) -> str:
        """A current access token for ``account``: the one in memory while it is fresh, else
        a renewed one. Raises :class:`SignInRefused` (a person must sign in again) or
        :class:`SignInUnavailable` (try later; a token still valid is used meanwhile)."""
        self.watch(account)
        key = account_key(account)
        state = self._accounts[key]
        async with state.lock:
            if state.token is not None and time.monotonic() < state.renew_at:
                return state.token
            try:
                return await self._renew(key, state)
            except SignInUnavailable as exc:
                state.failures += 1
                state.unavailable = str(exc)
                if state.usable():
                    assert state.token is not None
                    return state.token
                raise

    def invalidate(self, account: str, token: str) -> None:
        """The server refused ``token``: the next :meth:`access_token` asks for a new one."""
        state = self._accounts.get(account_key(account))
        if state is not None and state.token == token:
            state.token, state.renew_at, state.expires_at = None, 0.0, 0.0

    async def _renew(self, key: str, state: _Account) -> str:
        if self._sign_ins is None:
            raise RuntimeError("AccessTokens.connect(store) first")
        name = self._names.get(key, key)
        try:
            row = await self._sign_ins.get(key)
        except SQLAlchemyError as exc:
            raise SignInUnavailable(f"the store could not be read ({type(exc).__name__})"
                                    ) from None
        if row is None:
            raise self._trouble(state, key, f"{name} is not signed in; run "
                                            f"`{self.login_command(key)}`")
        if state.refused is not None and row.refresh_token == state.refused:
            raise SignInRefused(state.problem or "refused")
        try:
            refresh_token = self._key().decrypt(row.refresh_token)
        except SignInRefused as exc:
            raise self._trouble(state, key, str(exc)) from None
        except ValueError:
            why = (f"the stored sign-in of {name} cannot be decrypted with "
                   f"{self.config.key_env} (was the key changed?); run "
                   f"`{self.login_command(key)}` again")
            await self._record(key, why)
            raise self._trouble(state, key, why, refused=row.refresh_token) from None
        token = await self._ask(key, state, row.provider, row.refresh_token, refresh_token)
        lifetime = _lifetime(token)
        now = time.monotonic()
        state.token = str(token["access_token"])
        state.expires_at, state.lifetime = now + lifetime, lifetime
        state.renew_at = now + lifetime - min(300.0, lifetime * 0.2)
        state.failures, state.refused = 0, None
        if state.problem is not None:
            log.info("OAuth: the sign-in of %s works again", name)
            state.problem = None
        self.renewals += 1
        rotated = token.get("refresh_token")
        stored = (self._key().encrypt(str(rotated))
                  if rotated and rotated != refresh_token else None)
        with contextlib.suppress(SQLAlchemyError):  # the token in hand works all the same
            await self._sign_ins.refreshed(key, rotated=stored)
        return state.token

    async def _ask(self, key: str, state: _Account, provider: str, stored: str,
                   refresh_token: str) -> dict[str, Any]:
        """Refresh, retrying what could not reach the provider with a short backoff."""
        name = self._names.get(key, key)
        delay = self.retry_initial
        for attempt in range(1, self.attempts + 1):
            try:
                return await refresh(self.config, self.provider, refresh_token,
                                     timeout=self.timeout)
            except _Refused as exc:
                why = (f"{self.provider.name} refused to renew the sign-in of {name} ({exc}): "
                       f"{_meaning(exc.error)}; sign in again with "
                       f"`{login_command(provider or self.provider.name, key)}`")
                await self._record(key, why)
                raise self._trouble(state, key, why, refused=stored) from None
            except SignInUnavailable as exc:
                if attempt == self.attempts:
                    if not state.usable():
                        state.problem = f"cannot renew the sign-in of {name}: {exc}"
                    raise
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, self.retry_max)
        raise AssertionError("unreachable")

    def _trouble(self, state: _Account, key: str, why: str, *,
                 refused: str | None = None) -> SignInRefused:
        """Note that a person must act; log it once (not at every look)."""
        if state.problem != why:
            log.error("OAuth: %s", why)
        state.problem = why
        state.token, state.renew_at, state.expires_at = None, 0.0, 0.0
        if refused is not None:
            state.refused = refused
        return SignInRefused(why)

    async def _record(self, key: str, why: str) -> None:
        assert self._sign_ins is not None
        with contextlib.suppress(SQLAlchemyError):
            await self._sign_ins.failed(key, why)

    def _key(self) -> TokenCipher:
        if self._cipher is None:
            self._cipher = TokenCipher.from_environment(self.config.key_env, self._environ)
        return self._cipher


def _lifetime(token: Mapping[str, Any]) -> float:
    """Seconds the access token lives (RFC 6749 ``expires_in``; an hour when not said)."""
    try:
        seconds = float(token.get("expires_in") or 3600)
    except (TypeError, ValueError):
        seconds = 3600.0
    return max(seconds, 1.0)


def _meaning(error: str) -> str:
    return {
        "invalid_grant": "the consent was revoked, the password changed or the sign-in expired",
        "invalid_client": "the app registration's client id or secret is not accepted "
                          "(email.oauth.client_id, client_secret)",
        "unauthorized_client": "the app registration may not use this grant",
        "invalid_scope": "the app registration may not ask for these scopes",
    }.get(error, "the provider refused it")


# --- signing in once (frontdesk oauth login) ----------------------------------------------------

@dataclass(frozen=True)
class DevicePrompt:
    """What the person signing in is told to do (RFC 8628 3.2)."""

    verification_uri: str
    user_code: str
    verification_uri_complete: str
    expires_in: int
    message: str


async def device_login(config: OAuthConfig, provider: Provider, *,
                       show: Callable[[DevicePrompt], None],
                       sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                       timeout: float = 30.0) -> dict[str, Any]:
    """The device flow: ask for a code, show where to enter it, poll until the person has
    approved (or declined, or the code expired). Returns the token endpoint's answer."""
    scope = " ".join(provider.scopes)
    async with _client(config, scope=scope, timeout=timeout) as client:
        where = f"the device authorization endpoint of {provider.name}"
        try:
            answer = await _token_call(where, _device_code(client, provider, scope))
        except _Refused as exc:
            raise LoginFailed(f"{where} refused: {exc}") from None
        except SignInUnavailable as exc:
            raise LoginFailed(str(exc)) from None
        device_code = str(answer.get("device_code") or "")
        user_code = str(answer.get("user_code") or "")
        uri = str(answer.get("verification_uri") or answer.get("verification_url") or "")
        if not (device_code and user_code and uri):
            raise LoginFailed(f"{where} gave no device code, user code or verification address")
        expires_in = int(answer.get("expires_in") or 900)
        interval = float(answer.get("interval") or 5)
        show(DevicePrompt(uri, user_code, str(answer.get("verification_uri_complete") or ""),
                          expires_in, str(answer.get("message") or "")))
        client.scope = None  # the poll names the device code only
        deadline = time.monotonic() + expires_in
        while True:
            await sleep(interval)
            if time.monotonic() > deadline:
                raise LoginFailed("the code expired before the sign-in was approved; run the "
                                  "command again")
            try:
                return await _token_call(f"the token endpoint of {provider.name}",
                                         client.fetch_token(provider.token_endpoint,
                                                            grant_type=DEVICE_GRANT,
                                                            device_code=device_code))
            except _Refused as exc:
                if exc.error == "authorization_pending":
                    continue
                if exc.error == "slow_down":
                    interval += 5
                    continue
                if exc.error in ("access_denied", "authorization_declined"):
                    raise LoginFailed("the sign-in was declined") from None
                if exc.error in ("expired_token", "bad_verification_code"):
                    raise LoginFailed("the code expired before the sign-in was approved; run "
                                      "the command again") from None
                raise LoginFailed(f"the token endpoint of {provider.name} refused: {exc}"
                                  ) from None
            except SignInUnavailable as exc:
                log.warning("%s; asking again", exc)


async def _device_code(client: Any, provider: Provider, scope: str) -> Any:
    """RFC 8628 3.1: the device authorization request, authenticated like a token request."""
    response = await client.post(provider.device_authorization_endpoint, data={"scope": scope},
                                 auth=client.client_auth(client.token_endpoint_auth_method))
    return client.parse_response_token(response)


_PAGE = ("<!doctype html><meta charset=utf-8><title>frontdesk</title>"
         "<p style='font:16px sans-serif'>{text}</p>")


async def browser_login(config: OAuthConfig, provider: Provider, *, account: str,
                        show: Callable[[str, int], None], port: int = 0,
                        wait: float = 600.0, timeout: float = 30.0) -> dict[str, Any]:
    """The authorization code flow with PKCE (RFC 7636) and a loopback redirect (RFC 8252):
    listen on ``http://127.0.0.1:PORT/``, show the authorization address, take the code the
    browser brings back, trade it for tokens."""
    from aiohttp import web

    if not provider.authorization_endpoint:
        raise LoginFailed("email.oauth.authorization_endpoint is not set, and the provider has "
                          "no device flow: frontdesk has no way to sign in")
    state, verifier = secrets.token_urlsafe(24), secrets.token_urlsafe(48)
    loop = asyncio.get_running_loop()
    code: asyncio.Future[str] = loop.create_future()

    async def redirected(request: web.Request) -> web.Response:
        query = request.query
        if query.get("state") != state:
            return web.Response(status=400, content_type="text/html", text=_PAGE.format(
                text="This is not the sign-in frontdesk is waiting for."))
        if not code.done():
            if query.get("code"):
                code.set_result(query["code"])
            else:
                error = query.get("error", "no code")
                detail = " ".join(query.get("error_description", "").split())[:300]
                code.set_exception(LoginFailed(
                    f"the sign-in was not completed ({error}{': ' + detail if detail else ''})"))
        return web.Response(content_type="text/html", text=_PAGE.format(
            text="frontdesk has the answer; you can close this window."))

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", port))
    except OSError as exc:
        listener.close()
        raise LoginFailed(f"cannot listen on 127.0.0.1:{port} for the browser's redirect "
                          f"({exc.strerror or exc})") from None
    listener.listen(8)
    port = int(listener.getsockname()[1])
    app = web.Application()
    app.router.add_get("/", redirected)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.SockSite(runner, listener).start()
        redirect_uri = f"http://127.0.0.1:{port}/"
        async with _client(config, scope=" ".join(provider.scopes), redirect_uri=redirect_uri,
                           timeout=timeout) as client:
            url, _ = client.create_authorization_url(
                provider.authorization_endpoint, state=state, code_verifier=verifier,
                login_hint=account, **provider.authorize_params)
            show(str(url), port)
            try:
                got = await asyncio.wait_for(asyncio.shield(code), wait)
            except TimeoutError:
                raise LoginFailed(f"no answer from the browser within {int(wait)} s") from None
            try:
                return await _token_call(
                    f"the token endpoint of {provider.name}",
                    client.fetch_token(provider.token_endpoint, grant_type="authorization_code",
                                       code=got, code_verifier=verifier))
            except (_Refused, SignInUnavailable) as exc:
                raise LoginFailed(f"the code could not be traded for tokens: {exc}") from None
    finally:
        await runner.cleanup()
        listener.close()


def granted_scopes(token: Mapping[str, Any], provider: Provider) -> str:
    """The scopes the sign-in was given (as the provider said, else as asked)."""
    scope = token.get("scope")
    if isinstance(scope, list | tuple):
        return " ".join(str(s) for s in scope)
    return str(scope) if scope else " ".join(provider.scopes)


def missing_scopes(token: Mapping[str, Any], provider: Provider) -> list[str]:
    """Scopes asked for that the answer says were not granted (a person may untick one on
    Google's consent screen); the sign-in scopes that are never listed do not count."""
    said = token.get("scope")
    if not said:
        return []
    granted = set(granted_scopes(token, provider).split())
    quiet = {"offline_access", "openid", "email", "profile"}
    return [s for s in provider.scopes if s not in granted and s not in quiet]


async def store_login(store: Store, cipher: TokenCipher, *, account: str, provider: Provider,
                      token: Mapping[str, Any], actor: str, clock: Clock = utcnow) -> None:
    """Keep a sign-in's refresh token, encrypted."""
    refresh_token = token.get("refresh_token")
    if not refresh_token:
        hint = {"google": "Google gives one only with access_type=offline and a fresh consent",
                "microsoft": "the offline_access scope must be asked for and granted"}.get(
            provider.name, "ask for the scope that grants one (often offline_access)")
        raise LoginFailed(f"the provider gave no refresh token ({hint}); nothing was stored")
    await SignIns(store, clock=clock).save(
        account, provider=provider.name, refresh_token=cipher.encrypt(str(refresh_token)),
        scope=granted_scopes(token, provider), actor=actor)
