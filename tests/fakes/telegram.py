"""A loopback fake of the Telegram Bot API: getMe, getUpdates (offset semantics and long
polling), sendMessage, sendDocument and sendPhoto (multipart/form-data uploads, as the Bot API
takes a new file; kept with their bytes in ``uploads``), getFile and the file download,
setWebhook and deleteWebhook.

python-telegram-bot's ``Bot`` is pointed at it with ``base_url``/``base_file_url``
(frontdesk's ``telegram.api_base_url``): requests go to ``/bot<token>/<method>`` and files to
``/file/bot<token>/<file_path>``. Answers are the Bot API's JSON (``{"ok": true, "result": ...}``
or ``{"ok": false, "error_code": ..., "description": ...}``).

getUpdates: updates with an id below ``offset`` are confirmed and forgotten, as Telegram does;
with nothing to hand out it waits up to ``timeout`` seconds for an update. It answers 409 while
a webhook is set or while ``conflict`` is true (another poller).

Error modes: ``blocked`` (chat ids whose sendMessage gets 403 "bot was blocked by the user"),
``retry_after_next`` (the next sendMessage gets 429 with ``retry_after``), ``file_failures``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp import web

from tests.fakes import serve

BOT_TOKEN = "123456789:AAFakeTelegramBotTokenForTests_0123456"


class FakeTelegram:
    def __init__(self, token: str = BOT_TOKEN) -> None:
        self.token = token
        self.bot_id = int(token.split(":", 1)[0])
        self.updates: list[dict[str, Any]] = []  # not yet confirmed
        self.sent: list[dict[str, Any]] = []  # sendMessage calls that worked
        self.uploads: list[dict[str, Any]] = []  # sendDocument/sendPhoto: method, file, bytes
        self.calls: list[str] = []  # every method called, in order
        self.get_updates_offsets: list[int | None] = []
        self.webhook: dict[str, Any] | None = None
        self.conflict = False
        self.blocked: set[int] = set()
        self.retry_after_next: int | None = None
        self.files: dict[str, tuple[str, bytes]] = {}  # file_id → (file_path, data)
        self.file_failures: dict[str, int] = {}
        self.file_downloads: list[str] = []
        self._update_ids = itertools.count(700_000_001)
        self._message_ids = itertools.count(1)
        self._new_update = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FakeTelegram:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._method)
        app.router.add_get("/file/bot{token}/{path:.+}", self._file)
        self._runner, self.port = await serve(app, shutdown_timeout=0.1)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- the Bot API ----------------------------------------------------------------------------

    @staticmethod
    def _ok(result: Any) -> web.Response:
        return web.json_response({"ok": True, "result": result})

    @staticmethod
    def _error(code: int, description: str, **parameters: Any) -> web.Response:
        body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
        if parameters:
            body["parameters"] = parameters
        return web.json_response(body, status=code)

    @staticmethod
    async def _params(request: web.Request) -> dict[str, Any]:
        if request.content_type == "application/json":
            data = await request.json()
            return dict(data)
        params: dict[str, Any] = dict(request.query)
        for key, value in (await request.post()).items():
            params[key] = value if isinstance(value, str) else {
                "filename": value.filename, "content_type": value.content_type,
                "data": value.file.read(), "multipart": request.content_type}
        decoded: dict[str, Any] = {}
        for key, value in params.items():  # non-string values arrive JSON encoded
            if key in ("text", "url", "secret_token", "file_id", "caption"):
                decoded[key] = value
                continue
            try:
                decoded[key] = json.loads(value)
            except (TypeError, ValueError):
                decoded[key] = value
        return decoded

    async def _method(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return self._error(401, "Unauthorized")
        method = request.match_info["method"]
        self.calls.append(method)
        params = await self._params(request)
        handler = getattr(self, f"_m_{method}", None)
        if handler is None:
            return self._error(404, "Not Found")
        result: web.Response = await handler(params)
        return result

    async def _m_getMe(self, params: Mapping[str, Any]) -> web.Response:
        return self._ok({"id": self.bot_id, "is_bot": True, "first_name": "Example Support",
                         "username": "example_support_bot", "can_join_groups": False,
                         "can_read_all_group_messages": False, "supports_inline_queries": False})

    async def _m_getUpdates(self, params: Mapping[str, Any]) -> web.Response:
        offset = params.get("offset")
        self.get_updates_offsets.append(offset)
        if self.webhook is not None:
            return self._error(409, "Conflict: can't use getUpdates method while webhook is "
                                    "active; use deleteWebhook to delete the webhook first")
        if self.conflict:
            return self._error(409, "Conflict: terminated by other getUpdates request; make "
                                    "sure that only one bot instance is running")
        if offset is not None:
            self.updates = [u for u in self.updates if u["update_id"] >= int(offset)]
        deadline = time.monotonic() + float(params.get("timeout") or 0)
        async with self._new_update:
            while not self.updates:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(self._new_update.wait(), remaining)
                except TimeoutError:
                    break
        limit = int(params.get("limit") or 100)
        return self._ok(self.updates[:limit])

    async def _m_sendMessage(self, params: Mapping[str, Any]) -> web.Response:
        chat_id = int(params["chat_id"])
        if self.retry_after_next is not None:
            wait, self.retry_after_next = self.retry_after_next, None
            return self._error(429, f"Too Many Requests: retry after {wait}", retry_after=wait)
        if chat_id in self.blocked:
            return self._error(403, "Forbidden: bot was blocked by the user")
        text = str(params.get("text", ""))
        if not text:
            return self._error(400, "Bad Request: message text is empty")
        if len(text.encode("utf-16-le")) // 2 > 4096:
            return self._error(400, "Bad Request: message is too long")
        message = {"message_id": next(self._message_ids), "date": int(time.time()),
                   "chat": {"id": chat_id, "type": "private", "first_name": "Customer"},
                   "from": {"id": self.bot_id, "is_bot": True, "first_name": "Example Support",
                            "username": "example_support_bot"},
                   "text": text}
        self.sent.append({"chat_id": chat_id, "text": text, "message_id": message["message_id"]})
        return self._ok(message)

    async def _upload(self, method: str, field: str, params: Mapping[str, Any],
                      limit: int) -> web.Response:
        chat_id = int(params["chat_id"])
        if chat_id in self.blocked:
            return self._error(403, "Forbidden: bot was blocked by the user")
        file = params.get(field)
        if not isinstance(file, dict):  # a file_id or URL string is not a new upload
            return self._error(400, f"Bad Request: there is no {field} in the request")
        if len(file["data"]) > limit:
            return self._error(413, "Request Entity Too Large")
        message = {"message_id": next(self._message_ids), "date": int(time.time()),
                   "chat": {"id": chat_id, "type": "private", "first_name": "Customer"},
                   "from": {"id": self.bot_id, "is_bot": True, "first_name": "Example Support",
                            "username": "example_support_bot"}}
        file_id = "BQAC" + secrets.token_hex(12)
        if field == "photo":
            message["photo"] = [{"file_id": file_id, "file_unique_id": "AQADp", "width": 800,
                                 "height": 600, "file_size": len(file["data"])}]
        else:
            message["document"] = {"file_id": file_id, "file_unique_id": "AgADd",
                                   "file_name": file["filename"],
                                   "mime_type": file["content_type"],
                                   "file_size": len(file["data"])}
        self.uploads.append({"method": method, "chat_id": chat_id, **file,
                             "caption": params.get("caption"),
                             "message_id": message["message_id"]})
        return self._ok(message)

    async def _m_sendDocument(self, params: Mapping[str, Any]) -> web.Response:
        return await self._upload("sendDocument", "document", params, 50 * 1024 * 1024)

    async def _m_sendPhoto(self, params: Mapping[str, Any]) -> web.Response:
        return await self._upload("sendPhoto", "photo", params, 10 * 1024 * 1024)

    async def _m_getFile(self, params: Mapping[str, Any]) -> web.Response:
        file_id = str(params.get("file_id", ""))
        found = self.files.get(file_id)
        if found is None:
            return self._error(400, "Bad Request: invalid file_id")
        path, data = found
        return self._ok({"file_id": file_id, "file_unique_id": f"u{file_id[-8:]}",
                         "file_size": len(data), "file_path": path})

    async def _m_setWebhook(self, params: Mapping[str, Any]) -> web.Response:
        self.webhook = dict(params)
        return self._ok(True)

    async def _m_deleteWebhook(self, params: Mapping[str, Any]) -> web.Response:
        self.webhook = None
        return self._ok(True)

    async def _file(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.Response(status=401)
        path = request.match_info["path"]
        self.file_downloads.append(path)
        if self.file_failures.get(path, 0) > 0:
            self.file_failures[path] -= 1
            return web.Response(status=502, text="Bad Gateway")
        for stored_path, data in self.files.values():
            if stored_path == path:
                return web.Response(body=data, content_type="application/octet-stream")
        return web.Response(status=404, text="Not Found")

    # -- what customers do ----------------------------------------------------------------------

    def add_file(self, data: bytes, folder: str = "photos", ext: str = "jpg") -> str:
        file_id = "AgAC" + secrets.token_hex(12)
        self.files[file_id] = (f"{folder}/file_{len(self.files)}.{ext}", data)
        return file_id

    def message_update(self, user_id: int, text: str | None = None, *,
                       first_name: str = "Ada", last_name: str = "Lovelace",
                       username: str = "ada", **extra: Any) -> dict[str, Any]:
        """An update as Telegram makes it for a private message (not yet queued)."""
        message: dict[str, Any] = {
            "message_id": next(self._message_ids), "date": int(time.time()),
            "from": {"id": user_id, "is_bot": False, "first_name": first_name,
                     "last_name": last_name, "username": username, "language_code": "en"},
            "chat": {"id": user_id, "type": "private", "first_name": first_name,
                     "last_name": last_name, "username": username},
        }
        if text is not None:
            message["text"] = text
            if text.startswith("/"):
                message["entities"] = [{"offset": 0, "length": len(text.split()[0]),
                                        "type": "bot_command"}]
        message.update(extra)
        return {"update_id": next(self._update_ids), "message": message}

    def photo(self, file_id: str, size: int) -> list[dict[str, Any]]:
        """A photo's PhotoSize list (Telegram sends several sizes; the last is the largest)."""
        return [{"file_id": file_id + "small", "file_unique_id": "AQADs", "width": 90,
                 "height": 67, "file_size": 1200},
                {"file_id": file_id, "file_unique_id": "AQADl", "width": 1280, "height": 960,
                 "file_size": size}]

    async def push(self, update: dict[str, Any]) -> dict[str, Any]:
        """Queue an update for getUpdates (waking a long poll)."""
        async with self._new_update:
            self.updates.append(update)
            self._new_update.notify_all()
        return update

    async def deliver_webhook(self, port: int, update: Mapping[str, Any],
                              secret: str | None) -> int:
        """Telegram POSTing an update to the daemon's webhook (through a proxy at its port)."""
        headers = {"Content-Type": "application/json"}
        if secret is not None:
            headers["X-Telegram-Bot-Api-Secret-Token"] = secret
        async with aiohttp.ClientSession() as session, session.post(
                f"http://127.0.0.1:{port}/webhooks/telegram", data=json.dumps(update),
                headers=headers) as r:
            return r.status
