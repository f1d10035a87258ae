"""A loopback OAuth 2.0 provider for tests, and a relay that takes its tokens (AUTH XOAUTH2).

:class:`FakeOAuth` is an aiohttp server on 127.0.0.1 speaking the JSON of

* RFC 6749 at ``/token``: the ``refresh_token``, ``authorization_code`` (with RFC 7636 PKCE,
  S256) and RFC 8628 ``urn:ietf:params:oauth:grant-type:device_code`` grants, error answers as
  ``{"error": "invalid_grant", "error_description": ...}`` with status 400 (401 for a client
  it does not know);
* RFC 8628 at ``/device/code`` (the device authorization endpoint); the test plays the person:
  ``approve(user_code, account)`` or ``deny(user_code)``;
* RFC 7662 at ``/introspect`` (``token=...`` posted, as Dovecot's oauth2 passdb does with
  ``introspection_mode = post``): ``{"active": true, "username": ..., "scope": ..., "exp": ...}``
  or ``{"active": false}``;
* ``/authorize``: answers the browser's visit with the redirect back to the client, as if
  ``authorize_as`` had signed in and consented (or ``error=access_denied`` when it is None).

``issue_refresh_token(account)`` makes a sign-in without a flow; ``revoke(account)`` ends every
token of an account (what a person revoking consent does). Access tokens live
``access_lifetime`` seconds; with ``rotate`` every refresh gives a new refresh token and ends
the old one.

:class:`XOAuth2Relay` is the SMTP sink (tests/fakes/smtp_sink.py) with ``AUTH XOAUTH2``: it
accepts a user whose access token the fake issued and is still active; otherwise it answers as
Gmail does, a 334 challenge holding a base64 JSON reason, then 535 after the client's empty line.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from aiosmtpd.smtp import SMTP, AuthResult

from tests.fakes.smtp_sink import SmtpSink

__all__ = ["FakeOAuth", "XOAuth2Relay"]


@dataclass
class _Device:
    device_code: str
    user_code: str
    scope: str
    expires_at: float
    account: str | None = None
    denied: bool = False


@dataclass
class _Code:
    account: str
    scope: str
    redirect_uri: str
    challenge: str


@dataclass
class FakeOAuth:
    """An identity provider on 127.0.0.1 (see the module's docstring)."""

    client_id: str = "frontdesk-test"
    client_secret: str = ""
    access_lifetime: int = 3600
    rotate: bool = False
    interval: int = 1
    authorize_as: str | None = None
    port: int = 0
    refresh_tokens: dict[str, tuple[str, str]] = field(default_factory=dict)
    """refresh token -> (account, scope), for the ones still valid."""
    access_tokens: dict[str, tuple[str, str, float]] = field(default_factory=dict)
    """access token -> (account, scope, expiry as time.time())."""
    devices: dict[str, _Device] = field(default_factory=dict)
    codes: dict[str, _Code] = field(default_factory=dict)
    grants: list[str] = field(default_factory=list)
    """The grant_type of every token request, in order."""
    introspections: int = 0
    unavailable: bool = False
    """While set, /token answers 503 (the provider is down)."""
    _runner: web.AppRunner | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/token", self._token)
        app.router.add_post("/device/code", self._device_code)
        app.router.add_route("*", "/introspect", self._introspect)
        app.router.add_get("/authorize", self._authorize)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self, **extra: Any) -> dict[str, Any]:
        """``[email.oauth]`` pointing at this provider (a generic one)."""
        return {"provider": "generic", "client_id": self.client_id,
                "client_secret": self.client_secret,
                "authorization_endpoint": f"{self.base_url}/authorize",
                "token_endpoint": f"{self.base_url}/token",
                "device_authorization_endpoint": f"{self.base_url}/device/code",
                "scopes": ["mail", "offline_access"], **extra}

    # -- what the test does as the person or the provider's admin ----------------------------

    def issue_refresh_token(self, account: str, scope: str = "mail offline_access") -> str:
        token = "rt-" + secrets.token_urlsafe(24)
        self.refresh_tokens[token] = (account, scope)
        return token

    def issue_access_token(self, account: str, scope: str = "mail") -> str:
        access = "at-" + secrets.token_urlsafe(24)
        self.access_tokens[access] = (account, scope, time.time() + self.access_lifetime)
        return access

    def approve(self, user_code: str, account: str) -> None:
        device = next(d for d in self.devices.values() if d.user_code == user_code)
        device.account = account

    def deny(self, user_code: str) -> None:
        next(d for d in self.devices.values() if d.user_code == user_code).denied = True

    def pending_user_codes(self) -> list[str]:
        return [d.user_code for d in self.devices.values()
                if d.account is None and not d.denied]

    def revoke(self, account: str) -> None:
        """End every refresh and access token of ``account`` (consent revoked)."""
        self.refresh_tokens = {k: v for k, v in self.refresh_tokens.items() if v[0] != account}
        self.access_tokens = {k: v for k, v in self.access_tokens.items() if v[0] != account}

    def active(self, access_token: str) -> str | None:
        """The account of an access token that is still valid, else None."""
        found = self.access_tokens.get(access_token)
        if found is None or found[2] < time.time():
            return None
        return found[0]

    # -- the endpoints -----------------------------------------------------------------------

    def _client_ok(self, request: web.Request, form: Any) -> bool:
        client_id, secret = form.get("client_id"), form.get("client_secret", "")
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            client_id, _, secret = base64.b64decode(header[6:]).decode().partition(":")
        return client_id == self.client_id and (not self.client_secret
                                                or secret == self.client_secret)

    @staticmethod
    def _error(error: str, description: str, status: int = 400) -> web.Response:
        return web.json_response({"error": error, "error_description": description},
                                 status=status, headers={"Cache-Control": "no-store"})

    def _tokens(self, account: str, scope: str, *, refresh: str | None = None) -> web.Response:
        access = self.issue_access_token(account, scope)
        body: dict[str, Any] = {"access_token": access, "token_type": "Bearer",
                                "expires_in": self.access_lifetime, "scope": scope}
        if refresh is None or self.rotate:
            if refresh is not None:
                self.refresh_tokens.pop(refresh, None)
            body["refresh_token"] = self.issue_refresh_token(account, scope)
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        grant = str(form.get("grant_type", ""))
        self.grants.append(grant)
        if self.unavailable:
            return web.Response(status=503, text="down for maintenance")
        if not self._client_ok(request, form):
            return self._error("invalid_client", "Unknown client or wrong secret.", 401)
        if grant == "refresh_token":
            refresh = str(form.get("refresh_token", ""))
            found = self.refresh_tokens.get(refresh)
            if found is None:
                return self._error("invalid_grant", "The refresh token was revoked or has "
                                                    "expired.")
            return self._tokens(found[0], found[1], refresh=refresh)
        if grant == "urn:ietf:params:oauth:grant-type:device_code":
            device = self.devices.get(str(form.get("device_code", "")))
            if device is None or device.expires_at < time.time():
                return self._error("expired_token", "The device code expired.")
            if device.denied:
                return self._error("access_denied", "The person declined.")
            if device.account is None:
                return self._error("authorization_pending", "Not approved yet.")
            del self.devices[device.device_code]
            return self._tokens(device.account, device.scope)
        if grant == "authorization_code":
            code = self.codes.pop(str(form.get("code", "")), None)
            if code is None or form.get("redirect_uri") != code.redirect_uri:
                return self._error("invalid_grant", "Unknown code or redirect_uri.")
            verifier = str(form.get("code_verifier", ""))
            digest = hashlib.sha256(verifier.encode()).digest()
            if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != code.challenge:
                return self._error("invalid_grant", "PKCE verification failed.")
            return self._tokens(code.account, code.scope)
        return self._error("unsupported_grant_type", f"{grant!r} is not supported.")

    async def _device_code(self, request: web.Request) -> web.Response:
        form = await request.post()
        if not self._client_ok(request, form):
            return self._error("invalid_client", "Unknown client or wrong secret.", 401)
        device = _Device(device_code="dc-" + secrets.token_urlsafe(24),
                         user_code=f"{secrets.randbelow(10**4):04d}-{secrets.randbelow(10**4):04d}",
                         scope=str(form.get("scope", "")), expires_at=time.time() + 600)
        self.devices[device.device_code] = device
        return web.json_response({
            "device_code": device.device_code, "user_code": device.user_code,
            "verification_uri": f"{self.base_url}/device",
            "verification_uri_complete": f"{self.base_url}/device?user_code={device.user_code}",
            "expires_in": 600, "interval": self.interval})

    async def _introspect(self, request: web.Request) -> web.Response:
        self.introspections += 1
        form = await request.post() if request.method == "POST" else request.query
        token = str(form.get("token", ""))
        header = request.headers.get("Authorization", "")
        if not token and header.startswith("Bearer "):
            token = header[7:].strip()
        found = self.access_tokens.get(token)
        if found is None or found[2] < time.time():
            return web.json_response({"active": False})
        return web.json_response({"active": True, "username": found[0], "scope": found[1],
                                  "client_id": self.client_id, "token_type": "Bearer",
                                  "exp": int(found[2])})

    async def _authorize(self, request: web.Request) -> web.Response:
        q = request.query
        redirect_uri, state = q.get("redirect_uri", ""), q.get("state", "")
        if q.get("client_id") != self.client_id or not redirect_uri.startswith("http://127.0.0.1:"):
            return web.Response(status=400, text="bad client or redirect_uri")
        if self.authorize_as is None:
            params = {"error": "access_denied", "state": state}
        elif q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            params = {"error": "invalid_request", "state": state}
        else:
            code = "code-" + secrets.token_urlsafe(16)
            self.codes[code] = _Code(self.authorize_as, q.get("scope", ""), redirect_uri,
                                     q["code_challenge"])
            params = {"code": code, "state": state}
        raise web.HTTPFound(f"{redirect_uri}?{urlencode(params)}")


class XOAuth2Relay(SmtpSink):
    """The SMTP sink with ``AUTH XOAUTH2`` checked against a :class:`FakeOAuth`'s tokens."""

    def __init__(self, provider: FakeOAuth, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.provider = provider

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        if len(args) > 1:
            blob = args[1].encode()
        else:
            answer = await server.challenge_auth("")
            if not isinstance(answer, bytes):
                return AuthResult(success=False, handled=True)
            blob = base64.b64encode(answer)
        try:
            fields = base64.b64decode(blob, validate=True).decode().split("\x01")
        except (ValueError, UnicodeDecodeError):
            return AuthResult(success=False, message="501 5.5.2 Cannot decode the response")
        user = next((f[5:] for f in fields if f.startswith("user=")), "")
        auth = next((f[5:] for f in fields if f.startswith("auth=")), "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        if user and self.provider.active(token) == user:
            self.logins.append(user)
            return AuthResult(success=True, auth_data=user)
        self.failed_logins.append(user)
        reason = json.dumps({"status": "400", "schemes": "Bearer", "scope": "mail"}).encode()
        await server.challenge_auth(reason)  # the client answers with an empty line
        return AuthResult(success=False, handled=False,
                          message="535 5.7.8 Username and Password not accepted")
