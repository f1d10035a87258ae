"""A loopback fake of Slack: the Web API methods the staff desk calls, Slack's side of the Events
API (requests signed exactly as Slack signs them) and a Socket Mode websocket.

The real ``slack_sdk.web.async_client.AsyncWebClient`` is pointed at it with ``base_url``
(frontdesk's ``slack.api_base_url`` = :attr:`FakeSlack.base_url`). Like Slack, every method answers
HTTP 200 with ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``, wants the bot token as a
Bearer token (the app-level token for ``apps.connections.open``), and takes its arguments as JSON,
as a form or in the query string.

Methods: ``auth.test``, ``chat.postMessage`` (returns a new ``ts``; keeps ``metadata``),
``chat.update``, ``chat.delete`` (the bot's own messages; into :attr:`FakeSlack.deleted`),
``chat.postEphemeral``, ``reactions.add``, ``users.info``, ``conversations.history`` (with
``include_all_metadata``), ``conversations.replies`` (a thread, root first, paged by a
numeric ``cursor``), ``views.open`` (kept in :attr:`FakeSlack.views` with a new view
``id``), ``apps.connections.open`` (a
``ws://`` URL of :meth:`FakeSlack._socket`). Every call is recorded in :attr:`FakeSlack.calls`.

Files, both ways. The external upload: ``files.getUploadURLExternal`` (``filename``, ``length``)
hands out an upload URL on this server (no token needed: Slack's is pre-signed) and a file id;
``POST`` of the bytes there answers ``text/plain`` ``OK - <length>``; then
``files.completeUploadExternal`` (``files`` JSON ``[{"id", "title"}]``, ``channel_id``,
``thread_ts``, ``initial_comment``) shares them: one message with ``files`` in the channel (the
thread), kept in :attr:`FakeSlack.shared` with the bytes; ``files.delete`` marks one deleted
(:attr:`FakeSlack.files_deleted`). A file not uploaded, or uploaded with
another length than announced, is refused as Slack refuses it. Staff files: :meth:`staff_file`
stores a file and returns its object as a message event's ``files`` carries it;
``url_private_download`` serves it only with the bot token as a Bearer token (without it, a
redirect to an HTML sign-in page, as Slack does); ``files.info`` describes it.

Error modes: ``fail_next[method]`` is a list of canned answers ``(status, body, headers)`` used
one per call before the method works again (a 429 with ``Retry-After``, a 500); ``lose_next_post``
stores the next posted message and then answers 500, as if the answer was lost on the way;
:meth:`stop` and :meth:`start` (same port) take Slack away and bring it back.

Inbound: :meth:`post_signed` signs a body with the signing secret (``v0=`` HMAC-SHA256 of
``v0:{timestamp}:{body}``, :class:`slack_sdk.signature.SignatureVerifier`) and posts it to the
daemon; :meth:`event`, :meth:`click` and :meth:`command` build Events API, interactivity and
slash command requests the way Slack does. Socket Mode: :meth:`push` sends an envelope over the
websocket and :meth:`wait_ack` waits for the app's acknowledgement.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

import aiohttp
from aiohttp import web
from slack_sdk.signature import SignatureVerifier

from tests.fakes import serve

BOT_TOKEN = "xoxb-1111-2222-fakefrontdeskbottoken"
APP_TOKEN = "xapp-1-A0FAKE-3333-fakefrontdeskapptoken"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
TEAM_ID = "T0FAKETEAM"
BOT_USER_ID = "U0FRONTDESK"
BOT_ID = "B0FRONTDESK"
APP_ID = "A0FAKE"

USERS: dict[str, dict[str, Any]] = {
    "U0GRACE": {"id": "U0GRACE", "name": "grace", "real_name": "Grace Hopper",
                "profile": {"real_name": "Grace Hopper", "display_name": "grace",
                            "email": "grace@example.com"}},
    "U0ALAN": {"id": "U0ALAN", "name": "alan", "real_name": "Alan Turing",
               "profile": {"real_name": "Alan Turing", "display_name": "alan",
                           "email": "alan@example.com"}},
}


@dataclass
class Call:
    method: str
    args: dict[str, Any]
    token: str


class FakeSlack:
    def __init__(self, *, bot_token: str = BOT_TOKEN, app_token: str = APP_TOKEN,
                 signing_secret: str = SIGNING_SECRET) -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.signing_secret = signing_secret
        self.calls: list[Call] = []
        self.messages: list[dict[str, Any]] = []  # every message posted, in order
        self.ephemeral: list[dict[str, Any]] = []
        self.views: list[dict[str, Any]] = []  # views.open: each view, its "id" and trigger_id
        self.deleted: list[dict[str, Any]] = []  # messages chat.delete removed, in order
        self.users = {k: json.loads(json.dumps(v)) for k, v in USERS.items()}
        self.fail_next: dict[str, list[tuple[int, dict[str, Any], dict[str, str]]]] = {}
        self.lose_next_post = False
        self.uploads: dict[str, dict[str, Any]] = {}  # file id: filename, length, data
        self.shared: list[dict[str, Any]] = []  # completed uploads: channel, thread_ts, files
        self.upload_posts = 0  # bytes POSTed to upload URLs
        self.files_deleted: list[str] = []  # files.delete: the ids of uploaded files deleted
        self.staff_files: dict[str, dict[str, Any]] = {}  # file id: the file object + "data"
        self.downloads: list[tuple[str, bool]] = []  # (file id, with the bot token)
        self.acks: dict[str, dict[str, Any]] = {}
        self.stall_sends_after: int | None = None
        """Once this many roots are posted, every post, update and reaction is done at once but
        answered only after :meth:`unstall` (a slow answer, or a round of sends that is slow
        to finish)."""
        self._unstalled = asyncio.Event()
        self.socket_connections = 0
        self._ack_arrived = asyncio.Condition()
        self._sockets: list[web.WebSocketResponse] = []
        self._ts = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    async def start(self, port: int | None = None) -> None:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._method)
        app.router.add_get("/socket", self._socket)
        app.router.add_post("/upload/v1/{upload}", self._upload)
        app.router.add_get("/files-pri/{team_file}/download/{name}", self._download)
        app.router.add_get("/signin", self._signin)
        self._runner, self.port = await serve(app, self.port if port is None else port)

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        self._sockets.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeSlack:
        await self.start(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- what was called -----------------------------------------------------------------------

    def called(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def roots(self, channel: str | None = None) -> list[dict[str, Any]]:
        return [m for m in self.messages if not m.get("thread_ts")
                and (channel is None or m["channel"] == channel)]

    def thread(self, ts: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("thread_ts") == ts]

    def find(self, channel: str, ts: str) -> dict[str, Any] | None:
        return next((m for m in self.messages if m["channel"] == channel and m["ts"] == ts), None)

    # -- the Web API -------------------------------------------------------------------------------

    async def _method(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            if request.content_type == "application/json":
                args.update(await request.json())
            else:
                args.update(dict(parse_qsl(await request.text())))
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip() or \
            str(args.pop("token", ""))
        self.calls.append(Call(method, args, token))
        wanted = self.app_token if method == "apps.connections.open" else self.bot_token
        if token != wanted:
            return _ok_false("invalid_auth" if token else "not_authed")
        canned = self.fail_next.get(method)
        if canned:
            status, body, headers = canned.pop(0)
            return web.json_response(body, status=status, headers=headers)
        handler = getattr(self, "_" + method.replace(".", "_"), None)
        if handler is None:
            return _ok_false("unknown_method")
        result = handler(args)
        if self.stall_sends_after is not None and len(self.roots()) >= self.stall_sends_after \
                and method in ("chat.postMessage", "chat.update", "reactions.add"):
            await self._unstalled.wait()  # done, and seen in Slack, but not answered yet
        if isinstance(result, web.Response):
            return result
        return web.json_response({"ok": True, **result})

    def unstall(self) -> None:
        self.stall_sends_after = None
        self._unstalled.set()

    def _auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"url": "https://fake-team.slack.com/", "team": "Fake Team", "user": "frontdesk",
                "team_id": TEAM_ID, "user_id": BOT_USER_ID, "bot_id": BOT_ID,
                "is_enterprise_install": False}

    def _new_ts(self) -> str:
        n = next(self._ts)
        return f"{1_790_000_000 + n}.{n:06d}"

    def _chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any] | web.Response:
        channel = str(args.get("channel") or "")
        if not channel:
            return _ok_false("channel_not_found")
        blocks = args.get("blocks")
        if isinstance(blocks, str):
            blocks = json.loads(blocks)
        if not args.get("text") and not blocks:
            return _ok_false("no_text")
        metadata = args.get("metadata")
        if isinstance(metadata, str):
            metadata = json.loads(metadata)
        message = {"type": "message", "channel": channel, "ts": self._new_ts(),
                   "text": args.get("text") or "", "blocks": blocks or [],
                   "thread_ts": args.get("thread_ts"), "metadata": metadata,
                   "user": BOT_USER_ID, "bot_id": BOT_ID, "reactions": []}
        self.messages.append(message)
        if self.lose_next_post:
            self.lose_next_post = False
            return web.json_response({"ok": False, "error": "internal_error"}, status=500)
        shown = {k: v for k, v in message.items() if k not in ("channel", "metadata")}
        return {"channel": channel, "ts": message["ts"], "message": shown}

    def _chat_update(self, args: dict[str, Any]) -> dict[str, Any] | web.Response:
        message = self.find(str(args.get("channel")), str(args.get("ts")))
        if message is None:
            return _ok_false("message_not_found")
        blocks = args.get("blocks")
        if isinstance(blocks, str):
            blocks = json.loads(blocks)
        message["text"] = args.get("text") or message["text"]
        message["blocks"] = blocks if blocks is not None else message["blocks"]
        message["edited"] = {"user": BOT_USER_ID, "ts": self._new_ts()}
        return {"channel": message["channel"], "ts": message["ts"], "text": message["text"]}

    def _chat_postEphemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        self.ephemeral.append(dict(args))
        return {"message_ts": self._new_ts()}

    def _reactions_add(self, args: dict[str, Any]) -> dict[str, Any] | web.Response:
        channel, ts, name = str(args.get("channel")), str(args.get("timestamp")), args.get("name")
        message = self.find(channel, ts)
        if message is None:
            message = {"channel": channel, "ts": ts, "reactions": [], "external": True}
            self.messages.append(message)
        if name in message["reactions"]:
            return _ok_false("already_reacted")
        message["reactions"].append(name)
        return {}

    def _users_info(self, args: dict[str, Any]) -> dict[str, Any] | web.Response:
        user = self.users.get(str(args.get("user")))
        if user is None:
            return _ok_false("user_not_found")
        return {"user": user}

    def _conversations_history(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = str(args.get("channel"))
        limit = int(args.get("limit") or 100)
        with_meta = str(args.get("include_all_metadata")).lower() in ("1", "true")
        inclusive = str(args.get("inclusive")).lower() in ("1", "true")
        latest = float(args.get("latest") or "inf")
        oldest = float(args.get("oldest") or 0)

        def within(ts: float) -> bool:
            if inclusive:
                return oldest <= ts <= latest
            return oldest < ts < latest
        found = [m for m in reversed(self.messages)
                 if m["channel"] == channel and not m.get("thread_ts")
                 and within(float(m["ts"]))][:limit]
        shown = []
        for m in found:
            item = {k: v for k, v in m.items() if k not in ("channel", "metadata")}
            if with_meta and m.get("metadata"):
                item["metadata"] = m["metadata"]
            shown.append(item)
        return {"messages": shown, "has_more": False}

    def _chat_delete(self, args: dict[str, Any]) -> dict[str, Any] | web.Response:
        channel, ts = str(args.get("channel")), str(args.get("ts"))
        message = self.find(channel, ts)
        if message is None:
            return _ok_false("message_not_found")
        if message.get("bot_id") != BOT_ID:
            return _ok_false("cant_delete_message")
        self.messages.remove(message)
        self.deleted.append(message)
        return {"channel": channel, "ts": ts}

    def _conversations_replies(self, args: dict[str, Any]) -> dict[str, Any] | web.Response:
        channel, ts = str(args.get("channel")), str(args.get("ts"))
        root = self.find(channel, ts)
        replies = [m for m in self.messages
                   if m["channel"] == channel and m.get("thread_ts") == ts]
        if root is None and not replies:
            return _ok_false("thread_not_found")
        found = ([root] if root is not None else []) + replies
        limit = int(args.get("limit") or 100)
        start = int(args.get("cursor") or 0)
        page = found[start:start + limit]
        more = start + limit < len(found)
        return {"messages": [{k: v for k, v in m.items() if k not in ("channel", "metadata")}
                             for m in page],
                "has_more": more,
                "response_metadata": {"next_cursor": str(start + limit) if more else ""}}

    def _views_open(self, args: dict[str, Any]) -> dict[str, Any] | web.Response:
        view = args.get("view")
        if isinstance(view, str):
            view = json.loads(view)
        if not args.get("trigger_id"):
            return _ok_false("invalid_trigger_id")
        if not isinstance(view, dict) or view.get("type") != "modal":
            return _ok_false("invalid_arguments")
        opened = {**view, "id": "V" + secrets.token_hex(5).upper(),
                  "trigger_id": args["trigger_id"]}
        self.views.append(opened)
        return {"view": {k: v for k, v in opened.items() if k != "trigger_id"}}

    # -- files -------------------------------------------------------------------------------

    def _files_getUploadURLExternal(self, args: dict[str, Any]) -> dict[str, Any] | web.Response:
        filename, length = str(args.get("filename") or ""), str(args.get("length") or "")
        if not filename or not length.isdigit():
            return _ok_false("invalid_arguments")
        file_id = "F" + secrets.token_hex(5).upper()
        token = secrets.token_urlsafe(12)
        self.uploads[file_id] = {"filename": filename, "length": int(length), "data": None,
                                 "token": token}
        return {"upload_url": f"http://127.0.0.1:{self.port}/upload/v1/{token}",
                "file_id": file_id}

    async def _upload(self, request: web.Request) -> web.Response:
        token = request.match_info["upload"]
        found = next((u for u in self.uploads.values() if u["token"] == token), None)
        if found is None:
            return web.Response(status=404, text="upload not found", content_type="text/plain")
        if request.content_type.startswith("multipart/"):  # -F filename=@... works too
            part = next(iter((await request.post()).values()))
            data = part.file.read() if isinstance(part, web.FileField) else str(part).encode()
        else:  # the raw bytes, as slack_sdk sends them
            data = await request.read()
        found["data"] = data
        self.upload_posts += 1
        return web.Response(text=f"OK - {len(data)}", content_type="text/plain")

    def _files_completeUploadExternal(self, args: dict[str, Any]) -> dict[str, Any] | web.Response:
        files = args.get("files")
        if isinstance(files, str):
            files = json.loads(files)
        if not isinstance(files, list) or not files:
            return _ok_false("invalid_arguments")
        shared = []
        for item in files:
            upload = self.uploads.get(str(item.get("id")))
            if upload is None or upload["data"] is None:
                return _ok_false("file_not_found")
            if len(upload["data"]) != upload["length"]:
                return _ok_false("file_upload_size_mismatch")
            shared.append({"id": item["id"], "name": upload["filename"],
                           "title": item.get("title") or upload["filename"],
                           "size": upload["length"], "data": upload["data"]})
        channel, thread_ts = args.get("channel_id"), args.get("thread_ts")
        if channel:
            message = {"type": "message", "subtype": "file_share", "channel": channel,
                       "ts": self._new_ts(), "text": args.get("initial_comment") or "",
                       "blocks": [], "thread_ts": thread_ts, "metadata": None,
                       "user": BOT_USER_ID, "bot_id": BOT_ID, "reactions": [],
                       "files": [{k: v for k, v in f.items() if k != "data"} for f in shared]}
            self.messages.append(message)
        self.shared.append({"channel": channel, "thread_ts": thread_ts,
                            "comment": args.get("initial_comment"), "files": shared})
        return {"files": [{k: v for k, v in f.items() if k != "data"} for f in shared]}

    def _files_delete(self, args: dict[str, Any]) -> dict[str, Any] | web.Response:
        file_id = str(args.get("file"))
        for shared in self.shared:
            for f in shared["files"]:
                if f["id"] == file_id and not f.get("deleted"):
                    f["deleted"] = True
                    self.files_deleted.append(file_id)
                    return {}
        return _ok_false("file_not_found")

    def staff_file(self, name: str, data: bytes, mimetype: str = "application/pdf",
                   *, only_id: bool = False) -> dict[str, Any]:
        """A file a person attached to a message: its object as the message event's ``files``
        carries it (``only_id``: as Slack sometimes sends it, ``file_access:
        check_file_info``, the rest to ask files.info for)."""
        file_id = "F" + secrets.token_hex(5).upper()
        url = f"http://127.0.0.1:{self.port}/files-pri/{TEAM_ID}-{file_id}"
        found = {"id": file_id, "created": int(time.time()), "name": name, "title": name,
                 "mimetype": mimetype, "filetype": name.rpartition(".")[2], "size": len(data),
                 "mode": "hosted", "is_external": False, "user": "U0GRACE",
                 "url_private": f"{url}/{name}", "url_private_download": f"{url}/download/{name}",
                 "permalink": f"https://fake-team.slack.com/files/U0GRACE/{file_id}/{name}"}
        self.staff_files[file_id] = {**found, "data": data}
        if only_id:
            return {"id": file_id, "mode": "hosted", "file_access": "check_file_info"}
        return found

    def _files_info(self, args: dict[str, Any]) -> dict[str, Any] | web.Response:
        found = self.staff_files.get(str(args.get("file")))
        if found is None:
            return _ok_false("file_not_found")
        return {"file": {k: v for k, v in found.items() if k != "data"}}

    async def _download(self, request: web.Request) -> web.Response:
        file_id = request.match_info["team_file"].rpartition("-")[2]
        authorised = request.headers.get("Authorization") == f"Bearer {self.bot_token}"
        self.downloads.append((file_id, authorised))
        if not authorised:  # Slack sends people without the token to its sign-in page
            raise web.HTTPFound("/signin")
        found = self.staff_files.get(file_id)
        if found is None:
            return web.Response(status=404, text="file not found")
        return web.Response(body=found["data"], content_type=found["mimetype"])

    async def _signin(self, request: web.Request) -> web.Response:
        return web.Response(text="<!DOCTYPE html><title>Sign in | Slack</title>",
                            content_type="text/html")

    def _apps_connections_open(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"url": f"ws://127.0.0.1:{self.port}/socket?ticket={secrets.token_hex(8)}"}

    # -- Socket Mode ---------------------------------------------------------------------------

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._sockets.append(ws)
        self.socket_connections += 1
        await ws.send_json({"type": "hello", "num_connections": 1,
                            "debug_info": {"host": "fake-slack"},
                            "connection_info": {"app_id": APP_ID}})
        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(message.data)
            async with self._ack_arrived:
                self.acks[str(data.get("envelope_id"))] = data
                self._ack_arrived.notify_all()
        if ws in self._sockets:
            self._sockets.remove(ws)
        return ws

    async def wait_socket(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not self._sockets:
            if time.monotonic() > deadline:
                raise AssertionError("no Socket Mode connection")
            await asyncio.sleep(0.02)

    async def push(self, kind: str, payload: dict[str, Any], *, retry_attempt: int = 0) -> str:
        """Send an envelope (``events_api``, ``interactive``, ``slash_commands``)."""
        await self.wait_socket()
        envelope_id = str(uuid.uuid4())
        envelope: dict[str, Any] = {"envelope_id": envelope_id, "type": kind,
                                    "payload": payload,
                                    "accepts_response_payload": kind != "events_api"}
        if kind == "events_api":
            envelope.update(retry_attempt=retry_attempt, retry_reason="")
        await self._sockets[-1].send_json(envelope)
        return envelope_id

    async def wait_ack(self, envelope_id: str, timeout: float = 10) -> dict[str, Any]:
        async with self._ack_arrived:
            await asyncio.wait_for(
                self._ack_arrived.wait_for(lambda: envelope_id in self.acks), timeout)
        return self.acks[envelope_id]

    # -- Slack calling the app (HTTP mode) ---------------------------------------------------------

    def signature_headers(self, body: str, timestamp: int | None = None,
                          secret: str | None = None) -> dict[str, str]:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        verifier = SignatureVerifier(secret or self.signing_secret)
        return {"X-Slack-Request-Timestamp": ts,
                "X-Slack-Signature": verifier.generate_signature(timestamp=ts, body=body)}

    async def post_signed(self, url: str, body: str, content_type: str, *,
                          timestamp: int | None = None, secret: str | None = None,
                          headers: dict[str, str] | None = None) -> tuple[int, str]:
        all_headers = {"Content-Type": content_type,
                       **self.signature_headers(body, timestamp, secret), **(headers or {})}
        async with aiohttp.ClientSession() as session, \
                session.post(url, data=body.encode(), headers=all_headers) as response:
            return response.status, await response.text()

    @staticmethod
    def event_body(event: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
        return {"token": "legacy-verification-token", "team_id": TEAM_ID, "api_app_id": APP_ID,
                "event": event, "type": "event_callback",
                "event_id": event_id or "Ev" + secrets.token_hex(5).upper(),
                "event_time": int(time.time()),
                "authorizations": [{"team_id": TEAM_ID, "user_id": BOT_USER_ID,
                                    "is_bot": True, "is_enterprise_install": False}]}

    async def event(self, url: str, event: dict[str, Any], *, event_id: str | None = None,
                    retry_num: int | None = None, **kw: Any) -> tuple[int, str]:
        headers = {}
        if retry_num:
            headers = {"X-Slack-Retry-Num": str(retry_num), "X-Slack-Retry-Reason": "http_timeout"}
        body = json.dumps(self.event_body(event, event_id))
        return await self.post_signed(url, body, "application/json", headers=headers, **kw)

    @staticmethod
    def block_actions(action_id: str, *, value: str | None = None,
                      selected: str | None = None, user: str = "U0GRACE",
                      channel: str = "C0SUPPORT", message_ts: str = "1.000001") -> dict[str, Any]:
        action: dict[str, Any] = {"action_id": action_id, "block_id": "frontdesk_actions",
                                  "action_ts": f"{time.time():.6f}"}
        if selected is not None:
            action.update(type="static_select",
                          selected_option={"text": {"type": "plain_text", "text": selected},
                                           "value": selected})
        else:
            action.update(type="button", value=value,
                          text={"type": "plain_text", "text": action_id})
        return {"type": "block_actions", "team": {"id": TEAM_ID, "domain": "fake-team"},
                "user": {"id": user, "username": user.lower(), "team_id": TEAM_ID},
                "api_app_id": APP_ID, "token": "legacy-verification-token",
                "container": {"type": "message", "message_ts": message_ts,
                              "channel_id": channel, "is_ephemeral": False},
                "trigger_id": "1337.42.abcd", "channel": {"id": channel, "name": "support"},
                "message": {"type": "message", "ts": message_ts, "bot_id": BOT_ID},
                "response_url": "https://hooks.slack.com/actions/T0/1/xyz",
                "actions": [action]}

    async def click(self, url: str, action_id: str, **kw: Any) -> tuple[int, str]:
        payload = self.block_actions(action_id, **kw)
        body = urlencode({"payload": json.dumps(payload)})
        return await self.post_signed(url, body, "application/x-www-form-urlencoded")

    @staticmethod
    def command_form(text: str, *, user: str = "U0GRACE",
                     channel: str = "C0SUPPORT") -> dict[str, str]:
        return {"token": "legacy-verification-token", "team_id": TEAM_ID,
                "team_domain": "fake-team", "channel_id": channel, "channel_name": "support",
                "user_id": user, "user_name": user.lower(), "command": "/frontdesk",
                "text": text, "api_app_id": APP_ID, "is_enterprise_install": "false",
                "response_url": "https://hooks.slack.com/commands/T0/1/xyz",
                "trigger_id": "1337.42.abcd"}

    async def command(self, url: str, text: str, **kw: Any) -> tuple[int, str]:
        body = urlencode(self.command_form(text, **kw))
        return await self.post_signed(url, body, "application/x-www-form-urlencoded")

    @staticmethod
    def message_shortcut(callback_id: str, text: str, *, user: str = "U0GRACE",
                         channel: str = "C0SUPPORT", message_ts: str = "1.000002",
                         thread_ts: str | None = None) -> dict[str, Any]:
        """A message shortcut (the "..." menu of a message), as Slack sends it."""
        message: dict[str, Any] = {"type": "message", "user": user, "text": text,
                                   "ts": message_ts}
        if thread_ts:
            message["thread_ts"] = thread_ts
        return {"type": "message_action", "callback_id": callback_id,
                "team": {"id": TEAM_ID, "domain": "fake-team"},
                "user": {"id": user, "name": user.lower()}, "channel": {"id": channel,
                                                                       "name": "support"},
                "api_app_id": APP_ID, "token": "legacy-verification-token",
                "trigger_id": "1337.44.ijkl", "message_ts": message_ts, "message": message,
                "response_url": "https://hooks.slack.com/app/T0/1/xyz"}

    async def shortcut(self, url: str, callback_id: str, text: str,
                       **kw: Any) -> tuple[int, str]:
        body = urlencode({"payload": json.dumps(self.message_shortcut(callback_id, text, **kw))})
        return await self.post_signed(url, body, "application/x-www-form-urlencoded")

    @staticmethod
    def view_submission(view: dict[str, Any], values: dict[str, str], *,
                        user: str = "U0GRACE") -> dict[str, Any]:
        """A modal's submission as Slack sends it: ``values`` by input block (each block's one
        element has the action id ``value``)."""
        state = {"values": {block: {"value": {"type": "plain_text_input", "value": value}}
                            for block, value in values.items()}}
        shown = {k: v for k, v in view.items() if k != "trigger_id"}
        return {"type": "view_submission", "team": {"id": TEAM_ID, "domain": "fake-team"},
                "user": {"id": user, "username": user.lower(), "team_id": TEAM_ID},
                "api_app_id": APP_ID, "token": "legacy-verification-token",
                "trigger_id": "1337.43.efgh",
                "view": {**shown, "state": state, "team_id": TEAM_ID, "hash": "1.abc"}}

    async def submit(self, url: str, view: dict[str, Any], values: dict[str, str],
                     **kw: Any) -> tuple[int, str]:
        """Post a modal's submission (:meth:`view_submission`) to the daemon, signed."""
        body = urlencode({"payload": json.dumps(self.view_submission(view, values, **kw))})
        return await self.post_signed(url, body, "application/x-www-form-urlencoded")


def _ok_false(error: str) -> web.Response:
    return web.json_response({"ok": False, "error": error})


def thread_message(channel: str, thread_ts: str, text: str, *, user: str = "U0GRACE",
                   ts: str | None = None, **extra: Any) -> dict[str, Any]:
    """A person's message in a thread, as the Events API delivers it."""
    n = time.time()
    event = {"type": "message", "channel": channel, "user": user, "text": text,
             "ts": ts or f"{n:.6f}", "thread_ts": thread_ts, "team": TEAM_ID,
             "channel_type": "channel", "event_ts": ts or f"{n:.6f}"}
    event.update(extra)
    return event
