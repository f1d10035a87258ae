"""A loopback fake of Meta's Graph API for the three Meta channels (Messenger, Instagram
Messaging, the WhatsApp Cloud API), and builders of Meta's webhooks, signed as Meta signs them.

:class:`FakeGraph` is an aiohttp server on 127.0.0.1 (a port the kernel picks), started on the
test's own loop (``async with FakeGraph() as graph`` or ``await graph.start()`` and
``await graph.stop()``); frontdesk's ``meta.api_base_url`` is set to :attr:`FakeGraph.base_url`.
It speaks:

* ``POST /{version}/{id}/messages``: the Send API when ``id`` is the Page, the Instagram account
  or ``me`` (page access token; answers ``{"recipient_id", "message_id"}``), WhatsApp's
  messages endpoint when ``id`` is the business phone number (WhatsApp token; answers
  ``{"messaging_product", "contacts", "messages"}``). A ``sender_action`` (Send API) or a
  ``"status": "read"`` (WhatsApp) is answered and recorded apart, in :attr:`FakeGraph.actions`.
* ``GET /{version}/{id}``: a user profile registered in :attr:`FakeGraph.profiles` (counted in
  :attr:`FakeGraph.profile_calls`), WhatsApp media metadata (:attr:`FakeGraph.media`), or the
  Page, Instagram account or phone number themselves.
* ``GET /whatsapp-media/{media_id}``: the bytes, only with the WhatsApp token (the URL the
  metadata gives, as Meta's lookaside URLs need the token too).
* ``GET /cdn/{name}``: Messenger and Instagram attachment bytes, no token (:meth:`cdn_url`).

The token is read from ``Authorization: Bearer`` or the ``access_token`` query parameter, as
Graph reads it. Errors are Graph error objects (``{"error": {"message", "type", "code",
"error_subcode"?, "error_data"?, "fbtrace_id"}}``): a missing token is code 104, a wrong one 190
(HTTP 400 on the Page side, 401 on the WhatsApp side, as Meta's WhatsApp error table has it), an
unknown id code 100 subcode 33 ``GraphMethodException``, a body that is not JSON code 100, a
route Graph does not have 404.

Scripted failures: :meth:`FakeGraph.fail_next` queues a kind for the next ``count`` message sends
(either endpoint; sender actions and read receipts do not use one up): ``"window"`` (Messenger
code 10 subcode 2018278; WhatsApp 131047 answered at once), ``"window_async"`` (WhatsApp answers
200 and keeps a ``failed`` status with 131047 for the test to deliver, as the Cloud API usually
reports it; on a Page it is ``"window"``), ``"blocked"`` (Messenger code 551 subcode 1545041;
WhatsApp answers 200 and keeps a ``failed`` status with 131026), ``"token"`` (190 subcode 463),
``"rate"`` (Pages: code 613; WhatsApp: 130429 with HTTP 429) and ``"server"`` (HTTP 500, code
2, ``is_transient``). Statuses kept this way are in :attr:`FakeGraph.statuses`
(:meth:`FakeGraph.take_statuses`).

Records: :attr:`FakeGraph.sent` (accepted message sends, in order: path, JSON body, token, id),
:attr:`FakeGraph.requests` ((method, path) of every request, whatever its route or answer) and
:attr:`FakeGraph.media_downloads` ((media id, authorised)).

Webhooks: :func:`messenger_event` and :func:`instagram_event` build one ``messaging`` item,
:func:`page_payload` and :func:`instagram_payload` wrap them in entries; :func:`whatsapp_payload`
with the ``wa_*`` builders makes a WhatsApp Business Account ``messages`` change. Meta sends the
body as compact JSON with non-ASCII escaped (``\\u00e4``, lowercase hex) and ``/`` escaped
(:func:`meta_json`) and signs those exact bytes: :func:`sign` is the ``X-Hub-Signature-256``
value, :func:`post_webhook` delivers a payload to the daemon, :func:`verify_webhook` does the
subscription handshake (``hub.mode``/``hub.verify_token``/``hub.challenge``).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
import secrets
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Self

import aiohttp
from aiohttp import web

from tests.fakes import serve

__all__ = [
    "APP_ID", "APP_SECRET", "DISPLAY_PHONE", "FAIL_KINDS", "GRAPH_VERSION", "INSTAGRAM_ID",
    "PAGE_ID", "PAGE_TOKEN", "PHONE_NUMBER_ID", "WABA_ID", "WHATSAPP_TOKEN", "FakeGraph",
    "graph_error", "instagram_event", "instagram_payload", "messenger_event", "meta_json",
    "now_ms", "page_payload", "post_webhook", "sign", "verify_webhook", "wa_button_reply",
    "wa_contacts", "wa_error", "wa_list_reply", "wa_location", "wa_media", "wa_status",
    "wa_text", "whatsapp_payload",
]

PAGE_TOKEN = "PAGE-TOKEN"
WHATSAPP_TOKEN = "WA-TOKEN"
APP_SECRET = "fake-meta-app-secret-0123456789abcdef"
GRAPH_VERSION = "v21.0"
PAGE_ID = "PAGE1"
INSTAGRAM_ID = "IG1"
PHONE_NUMBER_ID = "PHONE1"
DISPLAY_PHONE = "15550001111"
WABA_ID = "WABA1"
APP_ID = 1517776481860111  # Meta sends the app id of an echo as a number

FAIL_KINDS = ("window", "window_async", "blocked", "token", "rate", "server")

ERROR_CODES_URL = "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"
WINDOW_DETAILS = ("Message failed to send because more than 24 hours have passed since the "
                  "customer last replied to this number.")
UNDELIVERABLE_DETAILS = ("Message failed to send because the recipient could not be reached "
                         "(not a WhatsApp user, blocked the business, or an old app).")
RATE_DETAILS = ("Message failed to send because there were too many messages sent from this "
                "phone number in a short period of time")
EXPIRED_TOKEN = ("Error validating access token: Session has expired on Monday, 01-Jan-24 "
                 "00:00:00 PST. The current time is Tuesday, 02-Jan-24 00:00:00 PST.")
UNSUPPORTED = ("Unsupported {method} request. Object with ID '{id}' does not exist, cannot be "
               "loaded due to missing permissions, or does not support this operation. Please "
               "read the Graph API documentation at https://developers.facebook.com/docs/graph-api")

_inbound_ids = itertools.count(1)


def now_ms() -> int:
    return int(time.time() * 1000)


def _fbtrace_id() -> str:
    return "A" + secrets.token_urlsafe(16)


def graph_error(message: str, code: int, *, type_: str = "OAuthException",
                subcode: int | None = None, error_data: Mapping[str, Any] | None = None,
                is_transient: bool | None = None) -> dict[str, Any]:
    """A Graph API error body, ``{"error": {...}}``, as Meta answers a failed call."""
    error: dict[str, Any] = {"message": message, "type": type_, "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    if is_transient is not None:
        error["is_transient"] = is_transient
    if error_data is not None:
        error["error_data"] = dict(error_data)
    error["fbtrace_id"] = _fbtrace_id()
    return {"error": error}


def _wa_error_data(details: str) -> dict[str, str]:
    return {"messaging_product": "whatsapp", "details": details}


def _page_failure(kind: str) -> tuple[int, dict[str, Any]]:
    """(HTTP status, error body) of a scripted failure of the Send API."""
    if kind in ("window", "window_async"):
        return 400, graph_error(
            "(#10) This message is sent outside of allowed window. Learn more about the new "
            "policy here: https://developers.facebook.com/docs/messenger-platform/"
            "policy-overview", 10, subcode=2018278)
    if kind == "blocked":
        return 400, graph_error("(#551) This person isn't available right now.", 551,
                                subcode=1545041)
    if kind == "token":
        return 400, graph_error(EXPIRED_TOKEN, 190, subcode=463)
    if kind == "rate":
        return 400, graph_error("(#613) Calls to this api have exceeded the rate limit.", 613)
    return 500, graph_error("An unexpected error has occurred. Please retry your request "
                            "later.", 2, is_transient=True)


def _whatsapp_failure(kind: str) -> tuple[int, dict[str, Any]] | None:
    """(HTTP status, error body) of a scripted failure of WhatsApp's messages endpoint; None
    when the Cloud API accepts the message and reports the failure in a status later."""
    if kind == "window":
        return 400, graph_error("(#131047) Re-engagement message", 131047,
                                error_data=_wa_error_data(WINDOW_DETAILS))
    if kind in ("window_async", "blocked"):
        return None
    if kind == "token":
        return 401, graph_error(EXPIRED_TOKEN, 190, subcode=463)
    if kind == "rate":
        return 429, graph_error("(#130429) Rate limit hit", 130429,
                                error_data=_wa_error_data(RATE_DETAILS))
    return 500, graph_error("An unexpected error has occurred. Please retry your request "
                            "later.", 2, is_transient=True)


def wa_error(code: int, title: str, details: str, message: str | None = None) -> dict[str, Any]:
    """An error of a WhatsApp status or ``errors`` webhook (not the Graph error object)."""
    return {"code": code, "title": title, "message": message if message is not None else title,
            "error_data": {"details": details}, "href": ERROR_CODES_URL}


class FakeGraph:
    def __init__(self, page_token: str = PAGE_TOKEN, whatsapp_token: str = WHATSAPP_TOKEN,
                 version: str = GRAPH_VERSION, *, page_id: str = PAGE_ID,
                 instagram_id: str = INSTAGRAM_ID, phone_number_id: str = PHONE_NUMBER_ID,
                 display_phone: str = DISPLAY_PHONE, page_name: str = "Example Support") -> None:
        self.page_token = page_token
        self.whatsapp_token = whatsapp_token
        self.version = version
        self.page_id = page_id
        self.instagram_id = instagram_id
        self.phone_number_id = phone_number_id
        self.display_phone = display_phone
        self.page_name = page_name
        self.profiles: dict[str, dict[str, Any]] = {}  # user id -> profile fields
        self.profile_calls: Counter[str] = Counter()  # user id -> profile GETs answered
        self.media: dict[str, tuple[str, bytes]] = {}  # WhatsApp media id -> (mime type, data)
        self.cdn: dict[str, tuple[str, bytes]] = {}  # name -> (content type, data)
        self.sent: list[dict[str, Any]] = []  # accepted sends: path, json, token, id
        self.actions: list[dict[str, Any]] = []  # sender actions and read receipts: path, json
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self.media_downloads: list[tuple[str, bool]] = []  # (media id, authorised)
        self.statuses: list[dict[str, Any]] = []  # failed statuses of "window_async"/"blocked"
        self._failures: deque[str] = deque()
        self._page_mids = itertools.count(1)
        self._wamids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- server ---------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application(middlewares=[self._record])
        app.router.add_post("/{version}/{node}/messages", self._send)
        app.router.add_get("/whatsapp-media/{media_id}", self._media_download)
        app.router.add_get("/cdn/{name}", self._cdn)
        app.router.add_get("/{version}/{node}", self._node)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        self._runner, self.port = await serve(app, shutdown_timeout=0.1)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- what a test sets up --------------------------------------------------------------------

    def fail_next(self, kind: str, count: int = 1) -> None:
        """The next ``count`` message sends (either endpoint) fail as ``kind`` (FAIL_KINDS)."""
        if kind not in FAIL_KINDS:
            raise ValueError(f"unknown failure kind {kind!r}; one of {FAIL_KINDS}")
        self._failures.extend([kind] * count)

    def cdn_url(self, name: str) -> str:
        return f"{self.base_url}/cdn/{name}"

    def add_cdn(self, data: bytes, content_type: str = "image/jpeg",
                name: str | None = None) -> str:
        """Serve an attachment on the CDN; returns its URL (for a webhook's ``payload.url``)."""
        name = name or f"att-{secrets.token_hex(6)}"
        self.cdn[name] = (content_type, data)
        return self.cdn_url(name)

    def add_media(self, data: bytes, mime_type: str = "image/jpeg",
                  media_id: str | None = None) -> str:
        """Register WhatsApp media; returns its id (for a :func:`wa_media` message)."""
        media_id = media_id or str(secrets.randbelow(10**15) + 10**15)
        self.media[media_id] = (mime_type, data)
        return media_id

    def take_statuses(self) -> list[dict[str, Any]]:
        """The kept failed statuses, for :func:`whatsapp_payload`; the list is emptied."""
        statuses, self.statuses = self.statuses, []
        return statuses

    # -- helpers --------------------------------------------------------------------------------

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        response: web.StreamResponse = await handler(request)
        return response

    @staticmethod
    def _token(request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if header[:7].lower() == "bearer ":
            return header[7:].strip()
        return request.query.get("access_token")

    @staticmethod
    def _json(status: int, body: Mapping[str, Any]) -> web.Response:
        headers = {}
        if status in (400, 401) and body.get("error", {}).get("code") in (104, 190):
            headers["WWW-Authenticate"] = (f'OAuth "Facebook Platform" "invalid_token" '
                                           f'"{body["error"]["message"]}"')
        return web.json_response(dict(body), status=status, headers=headers)

    def _auth_error(self, token: str | None, expected: Iterable[str], *,
                    status: int) -> web.Response | None:
        """None when ``token`` is one of ``expected``; else Graph's 104 or 190 answer."""
        if token is not None and token in set(expected):
            return None
        if not token:
            return self._json(status, graph_error(
                "An access token is required to request this resource.", 104))
        return self._json(status, graph_error(
            "Invalid OAuth access token - Cannot parse access token", 190))

    def _unsupported(self, method: str, node: str) -> web.Response:
        return self._json(400, graph_error(UNSUPPORTED.format(method=method, id=node), 100,
                                           type_="GraphMethodException", subcode=33))

    @staticmethod
    def _invalid(message: str) -> web.Response:
        return FakeGraph._json(400, graph_error(f"(#100) {message}", 100))

    # -- routes ---------------------------------------------------------------------------------

    async def _unknown(self, request: web.Request) -> web.Response:
        return self._json(404, graph_error(f"Unknown path components: {request.path}", 2500))

    async def _send(self, request: web.Request) -> web.Response:
        node = request.match_info["node"]
        if request.match_info["version"] != self.version:
            return await self._unknown(request)
        whatsapp = node == self.phone_number_id
        if not whatsapp and node not in (self.page_id, self.instagram_id, "me"):
            return self._unsupported("post", node)
        token = self._token(request)
        denied = self._auth_error(token, [self.whatsapp_token if whatsapp else self.page_token],
                                  status=401 if whatsapp else 400)
        if denied is not None:
            return denied
        try:
            body = json.loads(await request.read())
        except ValueError:
            return self._invalid("Invalid JSON in the request body")
        if not isinstance(body, dict):
            return self._invalid("The request body must be a JSON object")
        if whatsapp:
            return await self._send_whatsapp(request, body, token)
        return await self._send_page(request, body, token)

    async def _send_page(self, request: web.Request, body: dict[str, Any],
                         token: str | None) -> web.Response:
        recipient = body.get("recipient")
        psid = recipient.get("id") if isinstance(recipient, dict) else None
        if not isinstance(psid, str) or not psid:
            return self._invalid("The parameter recipient is required")
        if "sender_action" in body:
            self.actions.append({"path": request.path, "json": body})
            return self._json(200, {"recipient_id": psid})
        message = body.get("message")
        if not isinstance(message, dict) or not (message.get("text") or
                                                 message.get("attachment")):
            return self._invalid("Must send either message or state")
        messaging_type = body.get("messaging_type", "RESPONSE")
        if messaging_type not in ("RESPONSE", "UPDATE", "MESSAGE_TAG"):
            return self._invalid("Param messaging_type must be one of {RESPONSE, UPDATE, "
                                 "MESSAGE_TAG}")
        if messaging_type == "MESSAGE_TAG" and not body.get("tag"):
            return self._invalid("Param tag is required for messaging_type MESSAGE_TAG")
        if len(str(message.get("text", ""))) > 2000:
            return self._invalid("Length of param message[text] must be less than or equal "
                                 "to 2000")
        if self._failures:
            return self._json(*_page_failure(self._failures.popleft()))
        mid = f"m_{next(self._page_mids)}"
        self.sent.append({"path": request.path, "json": body, "token": token, "id": mid})
        return self._json(200, {"recipient_id": psid, "message_id": mid})

    async def _send_whatsapp(self, request: web.Request, body: dict[str, Any],
                             token: str | None) -> web.Response:
        if body.get("messaging_product") != "whatsapp":
            return self._invalid("The parameter messaging_product is required.")
        if body.get("status") == "read":
            if not body.get("message_id"):
                return self._invalid("The parameter message_id is required.")
            self.actions.append({"path": request.path, "json": body})
            return self._json(200, {"success": True})
        to = body.get("to")
        if not isinstance(to, str) or not re.sub(r"\D", "", to):
            return self._invalid("The parameter to is required.")
        kind = body.get("type", "text")
        content = body.get(kind)
        if not isinstance(content, dict):
            return self._invalid(f"The parameter {kind} is required.")
        if kind == "text":
            text = content.get("body")
            if not isinstance(text, str) or not text:
                return self._invalid("The parameter text['body'] is required.")
            if len(text) > 4096:
                return self._invalid("Param text['body'] must be at most 4096 characters long.")
        if kind == "template" and not (content.get("name") and
                                       isinstance(content.get("language"), dict) and
                                       content["language"].get("code")):
            return self._invalid("The parameters template['name'] and "
                                 "template['language']['code'] are required.")
        wa_id = re.sub(r"\D", "", to)
        failure = self._failures.popleft() if self._failures else None
        if failure is not None:
            answer = _whatsapp_failure(failure)
            if answer is not None:
                return self._json(*answer)
        wamid = f"wamid.{next(self._wamids)}"
        self.sent.append({"path": request.path, "json": body, "token": token, "id": wamid})
        if failure in ("window_async", "blocked"):
            error = (wa_error(131047, "Re-engagement message", WINDOW_DETAILS)
                     if failure == "window_async" else
                     wa_error(131026, "Message undeliverable", UNDELIVERABLE_DETAILS))
            self.statuses.append(wa_status(wamid, "failed", wa_id, [error]))
        return self._json(200, {"messaging_product": "whatsapp",
                                "contacts": [{"input": to, "wa_id": wa_id}],
                                "messages": [{"id": wamid}]})

    async def _node(self, request: web.Request) -> web.Response:
        node = request.match_info["node"]
        if request.match_info["version"] != self.version:
            return await self._unknown(request)
        token = self._token(request)
        requested = [f.strip() for f in request.query.get("fields", "").split(",") if f.strip()]

        def pick(fields: Mapping[str, Any]) -> web.Response:
            chosen = {k: v for k, v in fields.items() if not requested or k in requested}
            chosen["id"] = node
            return self._json(200, chosen)

        if node in self.media:
            denied = self._auth_error(token, [self.whatsapp_token], status=401)
            if denied is not None:
                return denied
            mime_type, data = self.media[node]
            return self._json(200, {"messaging_product": "whatsapp",
                                    "url": f"{self.base_url}/whatsapp-media/{node}",
                                    "mime_type": mime_type,
                                    "sha256": hashlib.sha256(data).hexdigest(),
                                    "file_size": len(data), "id": node})
        if node == self.phone_number_id:
            denied = self._auth_error(token, [self.whatsapp_token], status=401)
            return denied or pick({"display_phone_number": self.display_phone,
                                   "verified_name": self.page_name, "quality_rating": "GREEN"})
        denied = self._auth_error(token, [self.page_token, self.whatsapp_token], status=400)
        if denied is not None:
            return denied
        if node in self.profiles:
            if token != self.page_token:
                return self._unsupported("get", node)
            self.profile_calls[node] += 1
            return pick(self.profiles[node])
        if node == self.page_id and token == self.page_token:
            return pick({"name": self.page_name})
        if node == self.instagram_id and token == self.page_token:
            return pick({"username": "example_support", "name": self.page_name})
        return self._unsupported("get", node)

    async def _media_download(self, request: web.Request) -> web.Response:
        media_id = request.match_info["media_id"]
        authorised = self._token(request) == self.whatsapp_token
        self.media_downloads.append((media_id, authorised))
        if not authorised:
            return self._auth_error(self._token(request), [self.whatsapp_token],
                                    status=401) or web.Response(status=401)
        found = self.media.get(media_id)
        if found is None:
            return web.Response(status=404, text="Not Found")
        mime_type, data = found
        return web.Response(body=data, headers={"Content-Type": mime_type})

    async def _cdn(self, request: web.Request) -> web.Response:
        found = self.cdn.get(request.match_info["name"])
        if found is None:
            return web.Response(status=404, text="URL signature expired")
        content_type, data = found
        return web.Response(body=data, headers={"Content-Type": content_type})


# -- webhooks: Messenger and Instagram ----------------------------------------------------------


def _mid(prefix: str = "m_") -> str:
    return f"{prefix}in{next(_inbound_ids)}.{secrets.token_hex(6)}"


def _messaging_item(sender: str, recipient: str, timestamp: int | None, *, text: str | None,
                    attachments: Sequence[tuple[str, str] | Mapping[str, Any]],
                    quick_reply: str | None, reply_to: str | None,
                    story_reply: tuple[str, str] | None, echo: bool,
                    app_id: int | None, metadata: str | None, postback: tuple[str, str] | None,
                    react_to: str | None, reaction: str, emoji: str, action: str,
                    read: dict[str, Any] | None, delivered: Sequence[str] | None,
                    watermark: int | None, mid: str | None) -> dict[str, Any]:
    item: dict[str, Any] = {"sender": {"id": sender}, "recipient": {"id": recipient},
                            "timestamp": timestamp if timestamp is not None else now_ms()}
    kinds = [postback is not None, react_to is not None, read is not None,
             delivered is not None or watermark is not None]
    if sum(kinds) > 1 or (any(kinds) and (text is not None or attachments or echo)):
        raise ValueError("one event per messaging item: a message, a postback, a reaction, "
                         "a read or a delivery")
    if postback is not None:
        title, payload = postback
        item["postback"] = {"title": title, "payload": payload, "mid": mid or _mid()}
    elif react_to is not None:
        item["reaction"] = {"mid": react_to, "action": action}
        if action == "react":
            item["reaction"].update(reaction=reaction, emoji=emoji)
    elif read is not None:
        item["read"] = read
    elif delivered is not None or watermark is not None:
        # Meta's example of message_deliveries has no timestamp: mids (optional) and watermark
        del item["timestamp"]
        item["delivery"] = {"mids": list(delivered or ()),
                            "watermark": watermark if watermark is not None else now_ms()}
        if delivered is None:
            del item["delivery"]["mids"]
    else:
        message: dict[str, Any] = {"mid": mid or _mid()}
        if echo:
            message["is_echo"] = True
            if app_id is not None:
                message["app_id"] = app_id
            if metadata is not None:
                message["metadata"] = metadata
        if text is not None:
            message["text"] = text
        if attachments:
            message["attachments"] = [
                dict(a) if isinstance(a, Mapping) else {"type": a[0], "payload": {"url": a[1]}}
                for a in attachments]
        if quick_reply is not None:
            message["quick_reply"] = {"payload": quick_reply}
        if reply_to is not None:
            message["reply_to"] = {"mid": reply_to}
        if story_reply is not None:
            url, story_id = story_reply
            message["reply_to"] = {"story": {"url": url, "id": story_id}}
        if len(message) == 1:
            raise ValueError("a message needs text, attachments or a story")
        item["message"] = message
    return item


def messenger_event(psid: str, page_id: str = PAGE_ID, *, text: str | None = None,
                    attachments: Sequence[tuple[str, str] | Mapping[str, Any]] = (),
                    quick_reply: str | None = None, reply_to: str | None = None,
                    echo: bool = False, app_id: int = APP_ID, metadata: str | None = None,
                    postback: tuple[str, str] | None = None, react_to: str | None = None,
                    reaction: str = "love", emoji: str = "\u2764\ufe0f", action: str = "react",
                    read: int | None = None, delivered: Sequence[str] | None = None,
                    watermark: int | None = None, mid: str | None = None,
                    timestamp: int | None = None) -> dict[str, Any]:
    """One item of a Page entry's ``messaging`` list, as Messenger sends it.

    A message (``text``, ``attachments`` as (type, url) with type image/video/audio/file,
    ``quick_reply`` payload, ``reply_to`` mid), its echo (``echo``: sent by the Page, with
    ``app_id``), a postback ((title, payload)), a reaction to ``react_to`` (``action``
    "unreact" leaves out reaction and emoji), a read (``read``: watermark) or a delivery
    (``delivered`` mids and/or ``watermark``). ``timestamp`` is in milliseconds."""
    sender, recipient = (page_id, psid) if echo else (psid, page_id)
    return _messaging_item(
        sender, recipient, timestamp, text=text, attachments=attachments,
        quick_reply=quick_reply, reply_to=reply_to, story_reply=None, echo=echo, app_id=app_id,
        metadata=metadata, postback=postback, react_to=react_to, reaction=reaction, emoji=emoji,
        action=action, read={"watermark": read} if read is not None else None,
        delivered=delivered, watermark=watermark, mid=mid)


def instagram_event(igsid: str, account_id: str = INSTAGRAM_ID, *, text: str | None = None,
                    attachments: Sequence[tuple[str, str] | Mapping[str, Any]] = (),
                    story_mention: str | None = None, story_reply: tuple[str, str] | None = None,
                    quick_reply: str | None = None, reply_to: str | None = None,
                    echo: bool = False, postback: tuple[str, str] | None = None,
                    react_to: str | None = None, reaction: str = "love",
                    emoji: str = "\u2764\ufe0f", action: str = "react",
                    read: str | None = None, mid: str | None = None,
                    timestamp: int | None = None) -> dict[str, Any]:
    """One item of an Instagram entry's ``messaging`` list.

    Like :func:`messenger_event`, plus ``story_mention`` (the story's CDN URL: an attachment of
    type ``story_mention``) and ``story_reply`` ((url, story id): ``message.reply_to.story``,
    with ``text`` the reply). An echo has ``is_echo`` without an app id; a read
    (messaging_seen) names the ``mid`` read, and Instagram has no delivery events."""
    sender, recipient = (account_id, igsid) if echo else (igsid, account_id)
    if story_mention is not None:
        attachments = [*attachments, ("story_mention", story_mention)]
    return _messaging_item(
        sender, recipient, timestamp, text=text, attachments=attachments,
        quick_reply=quick_reply, reply_to=reply_to, story_reply=story_reply, echo=echo,
        app_id=None, metadata=None, postback=postback, react_to=react_to, reaction=reaction,
        emoji=emoji, action=action, read={"mid": read} if read is not None else None,
        delivered=None, watermark=None, mid=mid)


def _entries(object_: str, entry_id: str,
             entries: Sequence[Mapping[str, Any] | Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    built = []
    for events in entries:
        items = [events] if isinstance(events, Mapping) else list(events)
        built.append({"id": entry_id, "time": now_ms(), "messaging": [dict(e) for e in items]})
    return {"object": object_, "entry": built}


def page_payload(page_id: str, *entries: Mapping[str, Any] | Sequence[Mapping[str, Any]]
                 ) -> dict[str, Any]:
    """``{"object": "page", "entry": [...]}``: one entry per argument, each a list of
    :func:`messenger_event` items (a single item is an entry of one)."""
    return _entries("page", page_id, entries)


def instagram_payload(ig_id: str, *entries: Mapping[str, Any] | Sequence[Mapping[str, Any]]
                      ) -> dict[str, Any]:
    """``{"object": "instagram", "entry": [...]}``, as :func:`page_payload`."""
    return _entries("instagram", ig_id, entries)


# -- webhooks: WhatsApp -------------------------------------------------------------------------


def _seconds(timestamp: int | str | None) -> str:
    # WhatsApp's timestamps are Unix seconds as strings, unlike Messenger's milliseconds
    return str(timestamp if timestamp is not None else int(time.time()))


def _wa_message(wa_id: str, id: str, kind: str, content: Any, timestamp: int | str | None,
                context: Mapping[str, str] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"from": wa_id, "id": id, "timestamp": _seconds(timestamp)}
    if context is not None:
        message["context"] = dict(context)
    message["type"] = kind
    message[kind] = content
    return message


def wa_text(wa_id: str, id: str, body: str, *, timestamp: int | str | None = None
            ) -> dict[str, Any]:
    return _wa_message(wa_id, id, "text", {"body": body}, timestamp)


def wa_media(wa_id: str, id: str, media_id: str, mime_type: str, *, kind: str = "image",
             caption: str | None = None, filename: str | None = None, sha256: str | None = None,
             voice: bool | None = None, animated: bool | None = None,
             timestamp: int | str | None = None) -> dict[str, Any]:
    """An image, video, audio (``voice`` for a voice note), document (``filename``) or sticker
    (``animated``) message; ``caption`` goes with image, video and document."""
    if kind not in ("image", "video", "audio", "document", "sticker"):
        raise ValueError(f"not a WhatsApp media type: {kind}")
    content: dict[str, Any] = {}
    if caption is not None:
        content["caption"] = caption
    if filename is not None:
        content["filename"] = filename
    content.update(mime_type=mime_type, sha256=sha256 or secrets.token_hex(32), id=media_id)
    if voice is not None:
        content["voice"] = voice
    if animated is not None:
        content["animated"] = animated
    return _wa_message(wa_id, id, kind, content, timestamp)


def wa_location(wa_id: str, id: str, latitude: float, longitude: float, *,
                name: str | None = None, address: str | None = None,
                timestamp: int | str | None = None) -> dict[str, Any]:
    location: dict[str, Any] = {"latitude": latitude, "longitude": longitude}
    if name is not None:
        location["name"] = name
    if address is not None:
        location["address"] = address
    return _wa_message(wa_id, id, "location", location, timestamp)


def wa_contacts(wa_id: str, id: str, *cards: tuple[str, str],
                timestamp: int | str | None = None) -> dict[str, Any]:
    """Shared contact cards, each (formatted name, phone)."""
    contacts = []
    for name, phone in cards:
        first, _, last = name.partition(" ")
        card_name = {"formatted_name": name, "first_name": first}
        if last:
            card_name["last_name"] = last
        contacts.append({"name": card_name, "phones": [
            {"phone": phone, "wa_id": re.sub(r"\D", "", phone), "type": "CELL"}]})
    return _wa_message(wa_id, id, "contacts", contacts, timestamp)


def _context(context_id: str | None, business: str) -> dict[str, str] | None:
    return {"from": business, "id": context_id} if context_id is not None else None


def wa_button_reply(wa_id: str, id: str, button_id: str, title: str, *,
                    context_id: str | None = None, business: str = DISPLAY_PHONE,
                    timestamp: int | str | None = None) -> dict[str, Any]:
    """A tap on a reply button of the business's interactive message ``context_id``."""
    return _wa_message(wa_id, id, "interactive",
                       {"type": "button_reply", "button_reply": {"id": button_id, "title": title}},
                       timestamp, _context(context_id, business))


def wa_list_reply(wa_id: str, id: str, row_id: str, title: str,
                  description: str | None = None, *, context_id: str | None = None,
                  business: str = DISPLAY_PHONE, timestamp: int | str | None = None
                  ) -> dict[str, Any]:
    row: dict[str, str] = {"id": row_id, "title": title}
    if description is not None:
        row["description"] = description
    return _wa_message(wa_id, id, "interactive", {"type": "list_reply", "list_reply": row},
                       timestamp, _context(context_id, business))


def wa_status(id: str, status: str, recipient_id: str,
              errors: Sequence[Mapping[str, Any]] | None = None, *,
              timestamp: int | str | None = None, **extra: Any) -> dict[str, Any]:
    """A status of a message the business sent (sent, delivered, read, failed); a failed one
    carries ``errors`` (:func:`wa_error`). ``extra`` adds fields (``pricing``,
    ``conversation``, ``biz_opaque_callback_data``)."""
    item: dict[str, Any] = {"id": id, "status": status, "timestamp": _seconds(timestamp),
                            "recipient_id": recipient_id}
    if errors is not None:
        item["errors"] = [dict(e) for e in errors]
    item.update(extra)
    return item


def whatsapp_payload(phone_number_id: str = PHONE_NUMBER_ID,
                     display_phone: str = DISPLAY_PHONE, *,
                     messages: Sequence[Mapping[str, Any]] = (),
                     contacts: Sequence[tuple[str, str] | Mapping[str, Any]] | None = None,
                     statuses: Sequence[Mapping[str, Any]] = (),
                     errors: Sequence[Mapping[str, Any]] = (),
                     waba_id: str = WABA_ID) -> dict[str, Any]:
    """A WhatsApp Business Account webhook with one ``messages`` change.

    ``contacts`` are (wa_id, profile name) or full dicts; left out, one is made for each
    sender of ``messages`` (Meta always sends them with messages)."""
    value: dict[str, Any] = {"messaging_product": "whatsapp",
                             "metadata": {"display_phone_number": display_phone,
                                          "phone_number_id": phone_number_id}}
    if contacts is None:
        senders = dict.fromkeys(str(m["from"]) for m in messages)
        contacts = [(wa_id, f"Customer {wa_id[-4:]}") for wa_id in senders]
    if contacts:
        value["contacts"] = [dict(c) if isinstance(c, Mapping) else
                             {"profile": {"name": c[1]}, "wa_id": c[0]} for c in contacts]
    if messages:
        value["messages"] = [dict(m) for m in messages]
    if statuses:
        value["statuses"] = [dict(s) for s in statuses]
    if errors:
        value["errors"] = [dict(e) for e in errors]
    return {"object": "whatsapp_business_account",
            "entry": [{"id": waba_id, "changes": [{"value": value, "field": "messages"}]}]}


# -- delivering webhooks ------------------------------------------------------------------------


def meta_json(payload: Mapping[str, Any]) -> bytes:
    """The body as Meta writes it: compact JSON, non-ASCII as ``\\uXXXX`` and ``/`` as ``\\/``."""
    text = json.dumps(payload, ensure_ascii=True, separators=(",", ":"))
    return text.replace("/", "\\/").encode("ascii")


def sign(app_secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value of ``body``: ``sha256=`` and the HMAC-SHA256 in hex."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


async def post_webhook(session: aiohttp.ClientSession, url: str,
                       payload: Mapping[str, Any] | bytes, app_secret: str = APP_SECRET, *,
                       signature: str | None = None) -> tuple[int, str]:
    """POST a webhook to the daemon as Meta does; returns (status, body text).

    ``payload`` is encoded with :func:`meta_json` (bytes are sent as they are) and the exact
    bytes sent are signed; ``signature`` replaces the ``X-Hub-Signature-256`` value (the SHA-1
    ``X-Hub-Signature`` Meta also sends is then left out)."""
    body = payload if isinstance(payload, bytes) else meta_json(payload)
    headers = {"Content-Type": "application/json", "User-Agent": "facebookexternalua"}
    if signature is None:
        headers["X-Hub-Signature"] = "sha1=" + hmac.new(app_secret.encode(), body,
                                                        hashlib.sha1).hexdigest()
        headers["X-Hub-Signature-256"] = sign(app_secret, body)
    else:
        headers["X-Hub-Signature-256"] = signature
    async with session.post(url, data=body, headers=headers) as response:
        return response.status, await response.text()


async def verify_webhook(session: aiohttp.ClientSession, url: str, verify_token: str, *,
                         challenge: str = "1158201444", mode: str = "subscribe"
                         ) -> tuple[int, str]:
    """Meta's subscription check: GET with hub.mode, hub.verify_token and hub.challenge; the
    daemon should answer 200 with the challenge as the body. Returns (status, body text)."""
    params = {"hub.mode": mode, "hub.verify_token": verify_token, "hub.challenge": challenge}
    async with session.get(url, params=params,
                           headers={"User-Agent": "facebookplatform/1.0"}) as response:
        return response.status, await response.text()
