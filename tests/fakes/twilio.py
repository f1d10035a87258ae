"""A loopback fake of Twilio: the REST API's Messages.json and media/recording downloads, and
Twilio's side of the webhooks (signed exactly as Twilio signs them).

The real twilio SDK is pointed at it with ``client.api.base_url`` (frontdesk's
``twilio.api_base_url``). A message's ``MediaUrl`` values (repeated, at most 10) are kept in
``media_urls`` by its Sid. Like Twilio it wants HTTP basic auth (account SID and auth token) on
every REST call and media download, answers a created message with 201 and a JSON resource, and
errors with Twilio's JSON error body (``code``, ``message``, ``more_info``, ``status``).

Error modes: ``fail_next`` is a list of modes used by the next Messages.json calls, one each:
``"21610"`` (unsubscribed recipient), ``"429"`` (too many requests), ``"500"``;
``opted_out`` is a set of numbers that always get 21610; ``media_failures[path]`` is how many
times a media download answers 500 before it works.

Webhooks: :meth:`post` signs a form with the auth token (or, with ``shared_key``, the HMAC-SHA256
variant) against the public URL and delivers it to the daemon's real port, as Twilio calling
``http.public_url`` through a reverse proxy would.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping, Sequence
from email.utils import formatdate
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from twilio.request_validator import (
    HMAC_SHA256,
    SIGNATURE_HEADER,
    SIGNATURE_SETTINGS_HEADER,
    RequestValidator,
)

from tests.fakes import serve

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "fake-twilio-auth-token-0123456789"
PUBLIC_URL = "https://support.example.com"

_ERRORS = {
    "21610": (400, 21610, "Attempt to send to unsubscribed recipient"),
    "21614": (400, 21614, "'To' number is not a valid mobile number"),
    "429": (429, 20429, "Too Many Requests"),
    "500": (500, 20500, "Internal Server Error"),
}


def sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


class FakeTwilio:
    def __init__(self, account_sid: str = ACCOUNT_SID, auth_token: str = AUTH_TOKEN, *,
                 public_url: str = PUBLIC_URL) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.public_url = public_url
        self.messages: list[dict[str, str]] = []  # accepted Messages.json forms (+ "Sid")
        self.media_urls: dict[str, list[str]] = {}  # message Sid: its MediaUrl values
        self.requests: list[tuple[str, str]] = []  # (method, path) of every REST request
        self.fail_next: list[str | None] = []  # None: that call works
        self.opted_out: set[str] = set()
        self.status_during_create: str | None = None  # a status callback before the 201
        self.media: dict[str, tuple[bytes, str]] = {}
        self.media_failures: dict[str, int] = {}
        self.media_requests: list[tuple[str, bool]] = []  # (path, authorised)
        self.daemon_port: int | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- server ---------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FakeTwilio:
        app = web.Application()
        prefix = "/2010-04-01/Accounts/{account}"
        app.router.add_post(prefix + "/Messages.json", self._create_message)
        app.router.add_get(prefix + "/Messages/{message}/Media/{media}", self._media)
        app.router.add_get(prefix + "/Recordings/{recording}", self._media)
        self._runner, self.port = await serve(app)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _authorised(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return (user == self.account_sid and password == self.auth_token
                and request.match_info["account"] == self.account_sid)

    @staticmethod
    def _error(status: int, code: int, message: str) -> web.Response:
        return web.json_response({"code": code, "message": message,
                                  "more_info": f"https://www.twilio.com/docs/errors/{code}",
                                  "status": status}, status=status)

    async def _create_message(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path))
        if not self._authorised(request):
            return self._error(401, 20003, "Authenticate")
        posted = await request.post()
        form = {k: v for k, v in posted.items() if isinstance(v, str)}
        media = [str(v) for v in posted.getall("MediaUrl", [])]  # repeated: up to 10 media
        if not form.get("To") or not form.get("From"):
            return self._error(400, 21604, "A 'To' phone number is required.")
        if not form.get("Body") and not form.get("MediaUrl") and not form.get("ContentSid"):
            return self._error(400, 21602, "Message body is required.")
        if len(form.get("Body", "")) > 1600:
            return self._error(400, 21617, "The concatenated message body exceeds the 1600 "
                                           "character limit.")
        mode = self.fail_next.pop(0) if self.fail_next else None
        if mode is None and form["To"].removeprefix("whatsapp:") in self.opted_out:
            mode = "21610"
        if mode is not None:
            return self._error(*_ERRORS[mode])
        if len(media) > 10:
            return self._error(400, 21623, "Number of media files exceeds allowed limit")
        message_sid = sid("MM" if media else "SM")
        form["Sid"] = message_sid
        self.messages.append(form)
        self.media_urls[message_sid] = media
        if self.status_during_create and form.get("StatusCallback"):
            await self.send_status(form, self.status_during_create)
        now = formatdate(usegmt=True)
        return web.json_response({
            "account_sid": self.account_sid, "api_version": "2010-04-01",
            "body": form.get("Body", ""), "date_created": now, "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api", "error_code": None, "error_message": None,
            "from": form["From"], "messaging_service_sid": None, "num_media": str(len(media)),
            "num_segments": str(max(1, -(-len(form.get("Body", "")) // 153))), "price": None,
            "price_unit": "USD", "sid": message_sid, "status": "queued",
            "subresource_uris": {"media": f"/2010-04-01/Accounts/{self.account_sid}/Messages/"
                                          f"{message_sid}/Media.json"},
            "to": form["To"],
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{message_sid}.json",
        }, status=201)

    async def _media(self, request: web.Request) -> web.Response:
        authorised = self._authorised(request)
        self.media_requests.append((request.path, authorised))
        if not authorised:
            return self._error(401, 20003, "Authenticate")
        if self.media_failures.get(request.path, 0) > 0:
            self.media_failures[request.path] -= 1
            return self._error(500, 20500, "Internal Server Error")
        found = self.media.get(request.path)
        if found is None:
            return self._error(404, 20404, "The requested resource was not found")
        data, content_type = found
        return web.Response(body=data, content_type=content_type)

    # -- media ----------------------------------------------------------------------------------

    def add_media(self, data: bytes, content_type: str, message_sid: str) -> str:
        """Serve a file as an MMS media item of ``message_sid``; returns its MediaUrl."""
        path = (f"/2010-04-01/Accounts/{self.account_sid}/Messages/{message_sid}/Media/"
                f"{sid('ME')}")
        self.media[path] = (data, content_type)
        return self.base_url + path

    def add_recording(self, data: bytes) -> tuple[str, str]:
        """Serve a voicemail recording; returns (RecordingSid, RecordingUrl without extension)."""
        recording = sid("RE")
        path = f"/2010-04-01/Accounts/{self.account_sid}/Recordings/{recording}"
        self.media[path + ".mp3"] = (data, "audio/mpeg")
        return recording, self.base_url + path

    # -- webhooks (Twilio calling the daemon) ---------------------------------------------------

    def signature(self, url: str, params: Mapping[str, str], *,
                  shared_key: str | None = None) -> str:
        if shared_key is not None:
            return RequestValidator(shared_key).compute_signature(url, params, HMAC_SHA256)
        return RequestValidator(self.auth_token).compute_signature(url, params)

    async def post(self, path: str, params: Mapping[str, str], *, signature: str | None = None,
                   shared_key: str | None = None, port: int | None = None) -> tuple[int, str]:
        """POST a signed webhook form to the daemon; returns (status, body).

        ``path`` may carry a query (it is signed with it, as Twilio signs the whole URL)."""
        target = port or self.daemon_port
        assert target, "set fake.daemon_port (the daemon's HTTP port) first"
        url = self.public_url + path
        headers = {SIGNATURE_HEADER: signature if signature is not None
                   else self.signature(url, params, shared_key=shared_key)}
        if shared_key is not None:
            headers[SIGNATURE_SETTINGS_HEADER] = ("key=webhooks_sharedkey_0123,"
                                                  "algorithm=HMAC_SHA256")
        async with aiohttp.ClientSession() as session, session.post(
                f"http://127.0.0.1:{target}{path}", data=dict(params), headers=headers) as r:
            return r.status, await r.text()

    def inbound(self, body: str, *, sender: str = "+15557654321", to: str = "+15550001111",
                message_sid: str | None = None, media: Sequence[tuple[str, str]] = (),
                profile_name: str | None = None) -> dict[str, str]:
        """A messaging webhook form as Twilio sends it (``media``: (url, content type))."""
        message_sid = message_sid or sid("SM" if not media else "MM")
        form = {"ToCountry": "US", "ToState": "CA", "SmsMessageSid": message_sid,
                "NumMedia": str(len(media)), "ToCity": "", "FromZip": "", "SmsSid": message_sid,
                "FromState": "CA", "SmsStatus": "received", "FromCity": "", "Body": body,
                "FromCountry": "US", "To": to, "MessagingServiceSid": "",
                "ToZip": "", "NumSegments": "1", "MessageSid": message_sid,
                "AccountSid": self.account_sid, "From": sender, "ApiVersion": "2010-04-01"}
        for i, (url, content_type) in enumerate(media):
            form[f"MediaUrl{i}"] = url
            form[f"MediaContentType{i}"] = content_type
        if sender.startswith("whatsapp:"):
            form["WaId"] = sender.removeprefix("whatsapp:+")
            form["ProfileName"] = profile_name or ""
            for key in ("ToCountry", "ToState", "ToCity", "FromZip", "FromState", "FromCity",
                        "FromCountry", "ToZip"):
                form.pop(key)
        return form

    async def send_status(self, message: Mapping[str, str], status: str, *,
                          error_code: str | None = None) -> int:
        """Twilio's status callback for a message it accepted, to its StatusCallback URL."""
        callback = message["StatusCallback"]
        assert callback.startswith(self.public_url), callback
        params = {"MessageSid": message["Sid"], "SmsSid": message["Sid"],
                  "MessageStatus": status, "SmsStatus": status, "AccountSid": self.account_sid,
                  "From": message["From"], "To": message["To"], "ApiVersion": "2010-04-01"}
        if error_code:
            params["ErrorCode"] = error_code
        path = callback[len(self.public_url):]
        status_code, _ = await self.post(path, params)
        return status_code

    def path_of(self, url: str) -> str:
        parts = urlsplit(url)
        return parts.path + (f"?{parts.query}" if parts.query else "")
