"""The Telegram channel: a bot customers write to, through python-telegram-bot's ``Bot``.

Receive, polling (the default): the daemon's own getUpdates loop, not PTB's Updater (which
advances the offset as soon as it fetches, so a crash loses what it fetched). Each batch is
journaled first (one group commit), then the next offset is saved in the store; a crash between
the two fetches the batch again and the journal's unique key stores nothing twice. A 409
Conflict (another poller, or a webhook still set) is logged plainly and retried with backoff.
Polling is a single consumer: with several instances on one PostgreSQL store only the instance
elected leader for ``telegram:<bot id>`` polls (:mod:`frontdesk.daemon.process.leader`); another one
takes over from the saved offset when it stops. Webhook mode needs no leader: any instance
accepts an update.

The poller asks getUpdates for the updates as JSON (``do_api_request``), not as PTB objects:
PTB's parser raises for an update it cannot read, and the whole batch would be fetched again for
ever. Each update is checked as the webhook checks it; one that cannot be journaled is skipped
with one log line and the offset moves past it.

Receive, webhook mode: ``set_webhook(public_url + /webhooks/telegram, secret_token=...)`` at
start; POST /webhooks/telegram checks ``X-Telegram-Bot-Api-Secret-Token`` (403 when wrong,
nothing stored), journals, answers 200 (503 when the journal fails, so Telegram retries). A
body that is no update at all (not JSON, nested beyond the parser, not an object, no integer
``update_id``) gets a 400: Telegram never sends one. An update whose message cannot be journaled
(a chat or sender that is no object, ids that are no integers) gets a 200 and is dropped with one
log line: Telegram retries a refused update and holds back the ones after it, so a 4xx would
stall the bot for good. Nothing is stored for either, and no traceback is logged.

Files: getFile, then a download from ``telegram.api_base_url`` only (the file path Telegram
names must be under its file URL; see :mod:`frontdesk.channels.media`), at most
:attr:`TelegramChannel.max_file_bytes`.

Send: sendMessage to the chat, texts over 4,096 characters in several messages, in order, then
each file staff attached as a multipart upload (sendPhoto for a JPEG or PNG of up to 10 MB,
sendDocument for the rest, 50 MB at most); a user who blocked the bot is a permanent failure with
that reason.

Readiness: true once the webhook is set, or once a getUpdates call succeeded, or while another
instance is the poller (a standby is healthy).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from aiohttp import web
from telegram import Bot
from telegram.error import (
    BadRequest,
    Conflict,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
    TimedOut,
)
from telegram.request import HTTPXRequest
from telegram.warnings import PTBUserWarning

from frontdesk.channels.base import (
    Accept,
    ChannelContext,
    ChannelParts,
    DeliveryError,
    Leader,
    ParseError,
    PermanentFailure,
    TemporaryFailure,
)
from frontdesk.channels.chat import split_text
from frontdesk.channels.chat_records import AttachmentJob
from frontdesk.channels.files import FileRules, check_files, read_files
from frontdesk.channels.media import MediaFetcher, MediaHosts, size_words
from frontdesk.channels.telegram import TelegramConfig
from frontdesk.channels.telegram.parse import (
    decode,
    journal_key,
    parse_message,
    parse_update,
    update_id,
)
from frontdesk.channels.telegram.records import FILE_JOB, TelegramRecords
from frontdesk.domain.messages import Attachment, InboundMessage, OutboundMessage, Receipt
from frontdesk.storage.attachments import AttachmentStore

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhooks/telegram"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
MAX_TEXT = 4096
MAX_PHOTO = 10 * 1024 * 1024
"""sendPhoto's limit; a larger image goes as a document."""
PHOTO_TYPES = frozenset({"image/jpeg", "image/png"})
TELEGRAM_FILES = FileRules("Telegram", max_each=50 * 1024 * 1024)
"""The Bot API uploads files of up to 50 MB (sendDocument), of any type."""
ALLOWED_UPDATES = ["message"]  # edits are not asked for: a message is stored once, as sent

# getUpdates goes through Bot.do_api_request (the updates as JSON, see the module docstring),
# which warns that Bot.get_updates exists.
warnings.filterwarnings("ignore", message=r"Please use 'Bot\.getUpdates'",
                        category=PTBUserWarning)


def _seconds(exc: RetryAfter) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PTB 22 warns that the int form is deprecated
        value = exc.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _quiet_url_loggers() -> None:
    """httpx logs every request URL at INFO and PTB logs its base URL at DEBUG: both carry the
    bot token, which must never reach the logs."""
    for name, level in (("httpx", logging.WARNING), ("httpcore", logging.WARNING),
                        ("telegram.Bot", logging.INFO), ("telegram.request", logging.INFO)):
        logger = logging.getLogger(name)
        if logger.level < level:
            logger.setLevel(level)


class TelegramChannel:
    name = "telegram"
    journal_names = ("telegram",)
    channel_names = TelegramConfig.channel_names

    backoff_initial = 1.0
    backoff_max = 60.0
    max_file_bytes = 50 * 1024 * 1024
    """The largest file fetched (Telegram's cloud Bot API hands out up to 20 MB; a local Bot API
    server more)."""

    def __init__(self, config: TelegramConfig, *, public_url: str) -> None:
        self._config = config
        self._public_url = public_url.rstrip("/")
        self._token = config.bot_token.get_secret_value()
        self.bot_id = self._token.split(":", 1)[0]
        self._secret = config.webhook_secret.get_secret_value().encode()
        self.mode = config.mode
        self._bot: Bot | None = None
        self._bot_lock = asyncio.Lock()
        self._accept: Accept | None = None
        self._records: TelegramRecords | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = False
        self._stopping = False
        self._leadership: Leader | None = None  # polling only
        self._fetcher: MediaFetcher | None = None
        self._files: AttachmentStore | None = None  # bind(): staff files' bytes

    # -- composition ----------------------------------------------------------------------------

    def bind(self, context: ChannelContext) -> ChannelParts:
        """The store-side half: filters, hooks, the file job, the webhook (webhook mode) or
        leadership of the getUpdates poll (polling mode)."""
        files = AttachmentJob(FILE_JOB, context.store, context.attachments, self._fetch_file,
                              clock=context.clock)
        records = TelegramRecords(context.store, clock=context.clock,
                                  greeting=self._config.greeting, files=files,
                                  kick=context.kick_outbox)
        self._records = records
        self._files = context.attachments
        if self.mode == "polling":
            self._leadership = context.leadership(f"telegram:{self.bot_id}")
        return ChannelParts(
            routes=[web.post(WEBHOOK_PATH, self._on_update)] if self.mode == "webhook" else [],
            inbound_filters=(records.before_store,), inbound_hooks=(records.after_store,),
            outbox_handlers={FILE_JOB: files})

    # -- lifecycle ------------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "<bot token>") if self._token else text

    def _make_bot(self) -> Bot:
        base = self._config.api_base_url
        timeout = self._config.request_timeout.total_seconds()
        request = HTTPXRequest(connection_pool_size=16, read_timeout=timeout,
                               write_timeout=timeout, connect_timeout=timeout,
                               pool_timeout=timeout)
        # getUpdates holds its connection for the long poll: a pool of its own. PTB adds the
        # long-poll timeout to this read timeout.
        updates = HTTPXRequest(connection_pool_size=1, read_timeout=timeout,
                               write_timeout=timeout, connect_timeout=timeout,
                               pool_timeout=timeout)
        return Bot(self._token, base_url=f"{base}/bot", base_file_url=f"{base}/file/bot",
                   request=request, get_updates_request=updates)

    async def start(self, accept: Accept) -> None:
        _quiet_url_loggers()
        self._accept = accept
        self._stopping = False
        self._bot = self._make_bot()
        self._fetcher = MediaFetcher(
            MediaHosts(origins=[self._config.api_base_url], settings="telegram.api_base_url"),
            provider="Telegram", timeout=self._config.request_timeout.total_seconds(),
            max_bytes=self.max_file_bytes)
        await self._fetcher.start()
        if self.mode == "webhook":
            runner = self._set_webhook()
        elif self._leadership is not None:
            runner = self._leadership.run(self._poll)
        else:
            runner = self._poll()
        self._task = asyncio.create_task(runner, name=f"telegram-{self.mode}")
        log.info("telegram channel: %s", "polling getUpdates" if self.mode == "polling"
                 else f"webhook at {self._public_url}{WEBHOOK_PATH}")

    async def stop(self) -> None:
        self._stopping = True
        self._ready = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._accept = None
        if self._fetcher is not None:
            await self._fetcher.close()
        if self._bot is not None:
            with contextlib.suppress(Exception):
                await self._bot.shutdown()

    @property
    def ready(self) -> bool:
        return self._ready or (self._leadership is not None and self._leadership.following)

    async def _bot_up(self) -> Bot:
        """The bot, initialised (getMe) once; raises TelegramError while Telegram is away."""
        bot = self._bot
        if bot is None or self._stopping:
            raise TemporaryFailure("the telegram channel is not running")
        async with self._bot_lock:
            await bot.initialize()
        return bot

    async def _pause(self, delay: float) -> float:
        await asyncio.sleep(delay)
        return min(delay * 2, self.backoff_max)

    async def _set_webhook(self) -> None:
        delay = self.backoff_initial
        url = f"{self._public_url}{WEBHOOK_PATH}"
        while not self._stopping:
            try:
                bot = await self._bot_up()
                await bot.set_webhook(url, secret_token=self._secret.decode(),
                                      allowed_updates=ALLOWED_UPDATES)
            except InvalidToken:
                log.error("telegram: the bot token was rejected (check telegram.bot_token); "
                          "retrying in %.0f s", delay)
            except RetryAfter as exc:
                delay = max(delay, _seconds(exc))
                log.warning("telegram: setWebhook rate limited; retrying in %.0f s", delay)
            except TelegramError as exc:
                log.warning("telegram: could not set the webhook to %s: %s; retrying in %.0f s",
                            url, self._scrub(str(exc)), delay)
            else:
                self._ready = True
                log.info("telegram: webhook set to %s", url)
                return
            delay = await self._pause(delay)

    async def _poll(self) -> None:
        try:
            await self._poll_updates()
        finally:
            self._ready = False  # stopped, or leadership went to another instance

    async def _poll_updates(self) -> None:
        records = self._records
        if records is None:
            log.error("telegram: the channel is not attached to the store; not polling")
            return
        delay = self.backoff_initial
        offset: int | None = None
        webhook_cleared = False
        while not self._stopping:
            try:
                bot = await self._bot_up()
                if offset is None:
                    offset = await records.load_offset(self.bot_id)
                if not webhook_cleared:
                    # a webhook left set makes every getUpdates a 409
                    await bot.delete_webhook(drop_pending_updates=False)
                    webhook_cleared = True
                updates = await self._get_updates(bot, offset)
            except Conflict as exc:
                self._ready = False
                log.error("telegram: getUpdates refused with 409 Conflict (%s): another "
                          "program is polling this bot or a webhook is set; only one frontdesk "
                          "may poll a bot. Retrying in %.0f s", self._scrub(exc.message), delay)
                delay = await self._pause(delay)
                continue
            except RetryAfter as exc:
                wait = max(delay, _seconds(exc))
                log.warning("telegram: getUpdates rate limited; retrying in %.0f s", wait)
                await asyncio.sleep(wait)
                continue
            except InvalidToken:
                self._ready = False
                log.error("telegram: the bot token was rejected (check telegram.bot_token); "
                          "retrying in %.0f s", delay)
                delay = await self._pause(delay)
                continue
            except TelegramError as exc:
                self._ready = False
                log.warning("telegram: getUpdates failed: %s; retrying in %.0f s",
                            self._scrub(str(exc)), delay)
                delay = await self._pause(delay)
                continue
            except Exception as exc:  # noqa: BLE001 - the store answered the offset with an error
                self._ready = False
                log.error("telegram: polling failed: %s; retrying in %.0f s", exc, delay)
                delay = await self._pause(delay)
                continue
            if not self._ready:
                log.info("telegram: polling getUpdates")
            self._ready = True
            delay = self.backoff_initial
            if not updates:
                continue
            try:
                highest = await self._journal_updates(updates)
            except Exception as exc:  # noqa: BLE001 - not advanced: fetched again, deduplicated
                log.error("telegram: could not journal %d update(s): %s; fetching them again "
                          "in %.0f s", len(updates), exc, delay)
                delay = await self._pause(delay)
                continue
            if highest is None:  # no update_id to move the offset past: never from Telegram
                log.error("telegram: getUpdates handed %d update(s) without a usable update_id; "
                          "asking again in %.0f s", len(updates), delay)
                delay = await self._pause(delay)
                continue
            offset = highest + 1
            try:
                await records.save_offset(self.bot_id, offset)
            except Exception as exc:  # noqa: BLE001 - a restart re-fetches; the journal dedupes
                log.warning("telegram: could not save the getUpdates offset: %s", exc)

    async def _get_updates(self, bot: Bot, offset: int | None) -> list[Any]:
        """getUpdates as JSON: the list of updates, each still to be checked."""
        poll = int(self._config.poll_timeout.total_seconds())
        kwargs: dict[str, Any] = {"timeout": poll, "allowed_updates": ALLOWED_UPDATES}
        if offset is not None:
            kwargs["offset"] = offset
        result = await bot.do_api_request(
            "getUpdates", api_kwargs=kwargs,
            read_timeout=self._config.request_timeout.total_seconds() + poll)
        if not isinstance(result, list):
            raise TelegramError("getUpdates answered something that is not a list")
        return result

    async def _journal_updates(self, updates: Sequence[Any]) -> int | None:
        """Journal the private messages among ``updates`` (one group commit); returns the
        highest usable update_id (None when there is none). An update that cannot be
        journaled is skipped with one log line."""
        accept = self._accept
        if accept is None:
            raise RuntimeError("the channel is stopping")
        pending = []
        highest: int | None = None
        for update in updates:
            uid = update_id(update)
            if uid is None:
                log.warning("telegram: getUpdates handed something without a usable update_id; "
                            "skipped")
                continue
            highest = uid if highest is None else max(highest, uid)
            try:
                key = journal_key(update)
                if key is None:
                    log.debug("telegram: update %d is not a private message; skipped", uid)
                    continue
                parse_message(update)
                raw = json.dumps(update, ensure_ascii=False, separators=(",", ":")).encode()
            except ParseError as exc:
                log.warning("telegram: update %d skipped: %s", uid, exc)
                continue
            except (ValueError, RecursionError) as exc:  # not serialisable again
                log.warning("telegram: update %d skipped: %s", uid, type(exc).__name__)
                continue
            pending.append(accept("telegram", key, raw, {"source": "polling"}))
        if pending:
            await asyncio.gather(*pending)  # one group commit for the batch
        return highest

    # -- webhook --------------------------------------------------------------------------------

    async def _on_update(self, request: web.Request) -> web.Response:
        """POST /webhooks/telegram; see the module docstring for what is answered when."""
        given = request.headers.get(SECRET_HEADER, "").encode()
        if not self._secret or not hmac.compare_digest(given, self._secret):
            log.warning("refused a Telegram webhook from %s: wrong or missing %s",
                        request.remote, SECRET_HEADER)
            return web.Response(status=403, text="wrong secret token")
        raw = await request.read()
        try:
            update = decode(raw)
        except ParseError as exc:
            log.warning("refused a Telegram webhook from %s: %s", request.remote, exc)
            return web.Response(status=400, text="not a Telegram update")
        uid = update_id(update)
        if uid is None:
            log.warning("refused a Telegram webhook from %s: not an update (no integer "
                        "update_id)", request.remote)
            return web.Response(status=400, text="not a Telegram update")
        try:
            key = journal_key(update)
            if key is not None:
                parse_message(update)  # what the processor will do with the row
        except ParseError as exc:
            log.warning("telegram: update %d dropped (answered 200, nothing stored): %s", uid,
                        exc)
            return web.Response(status=200)
        if key is None:
            return web.Response(status=200)
        accept = self._accept
        if accept is None:
            return web.Response(status=503)
        try:
            await accept("telegram", key, raw, {"source": "webhook"})
        except Exception as exc:  # noqa: BLE001 - Telegram retries a 503
            log.error("could not journal Telegram update %d: %s", uid, exc)
            return web.Response(status=503)
        return web.Response(status=200)

    # -- parse ----------------------------------------------------------------------------------

    def parse(self, raw: bytes, meta: Mapping[str, Any]) -> InboundMessage:
        return parse_update(raw, meta)

    # -- send -----------------------------------------------------------------------------------

    def _failure(self, exc: TelegramError) -> DeliveryError:
        said = self._scrub(exc.message)
        lowered = said.lower()
        if isinstance(exc, Forbidden):
            if "blocked" in lowered:
                return PermanentFailure("the customer blocked the bot")
            if "deactivated" in lowered:
                return PermanentFailure("the customer's Telegram account was deleted")
            return PermanentFailure(f"Telegram refused to deliver: {said}")
        if isinstance(exc, RetryAfter):
            return TemporaryFailure("Telegram asked to slow down (flood control)",
                                    retry_after=_seconds(exc))
        if isinstance(exc, BadRequest):
            if "chat not found" in lowered:
                return PermanentFailure("Telegram does not know this chat (the customer may "
                                        "have deleted it)")
            return PermanentFailure(f"Telegram refused the message: {said}")
        if isinstance(exc, InvalidToken):
            return TemporaryFailure("Telegram rejected the bot token (telegram.bot_token)")
        if isinstance(exc, TimedOut | NetworkError):
            return TemporaryFailure(f"could not reach Telegram: {said}")
        return TemporaryFailure(f"Telegram failed: {said}")

    async def send(self, outbound: OutboundMessage) -> Receipt:
        records = self._records
        if records is None:
            raise TemporaryFailure("the telegram channel is not attached to the store")
        try:
            chat_id = int(outbound.to_address)
        except ValueError:
            raise PermanentFailure(f"{outbound.to_address!r} is not a Telegram chat id"
                                   ) from None
        parts = split_text(outbound.text, MAX_TEXT)
        files = outbound.attachments
        if not parts and not files:
            raise PermanentFailure("the message is empty")
        check_files(files, TELEGRAM_FILES)
        key = outbound.idempotency_key
        done = await records.parts.sent("telegram", key)
        total = len(parts) + len(files)
        todo = [n for n in range(len(parts), total) if n not in done]  # files still to go
        data: dict[int, bytes] = {}
        if todo:
            if self._files is None:
                raise TemporaryFailure("the telegram channel is not attached to the store")
            read = await read_files(self._files, [files[n - len(parts)] for n in todo])
            data = dict(zip(todo, read, strict=True))
        ids: list[str] = []
        try:
            bot = await self._bot_up()
            for index, text in enumerate(parts):
                if index in done:
                    ids.append(done[index])
                    continue
                sent = await bot.send_message(chat_id=chat_id, text=text)
                remote = f"{chat_id}:{sent.message_id}"
                ids.append(remote)
                await records.parts.record("telegram", key, index, total, remote, "sent")
            for index, f in enumerate(files, start=len(parts)):
                if index in done:
                    ids.append(done[index])
                    continue
                if f.content_type in PHOTO_TYPES and f.size <= MAX_PHOTO:  # shown as a photo
                    sent = await bot.send_photo(chat_id=chat_id, photo=data[index],
                                                filename=f.filename)
                else:  # a file to download, its name kept
                    sent = await bot.send_document(chat_id=chat_id, document=data[index],
                                                   filename=f.filename)
                remote = f"{chat_id}:{sent.message_id}"
                ids.append(remote)
                await records.parts.record("telegram", key, index, total, remote, "sent")
        except TelegramError as exc:
            raise self._failure(exc) from None
        return Receipt(remote_id=",".join(ids), detail=f"{total} message(s) to {chat_id}")

    # -- files ----------------------------------------------------------------------------------

    async def _fetch_file(self, item: Mapping[str, Any]) -> Attachment:
        """getFile, then the download from the API's own file URL (nothing else: a path that
        is not under it is refused), at most :attr:`max_file_bytes`."""
        files = self._fetcher
        if files is None or not files.running:
            raise TemporaryFailure("the telegram channel is not running")
        try:
            bot = await self._bot_up()
            file = await bot.get_file(str(item["file_id"]))
        except BadRequest as exc:
            raise PermanentFailure(f"Telegram cannot hand over the file: "
                                   f"{self._scrub(exc.message)}") from None
        except TelegramError as exc:
            raise self._failure(exc) from None
        if file.file_size is not None and file.file_size > self.max_file_bytes:
            raise PermanentFailure(f"the file is larger than {size_words(self.max_file_bytes)}, "
                                   f"which is more than frontdesk fetches ({file.file_size} "
                                   "bytes)")
        base = f"{self._config.api_base_url}/file/bot{self._token}/"
        path = file.file_path or ""
        if not path.startswith(base) or ".." in path[len(base):].split("/"):
            raise PermanentFailure("Telegram named a file that is not on its file URL (a local "
                                   "Bot API server's file path?); not fetched")
        try:
            got = await files.fetch(path)
        except DeliveryError as exc:
            raise type(exc)(self._scrub(exc.reason), retry_after=exc.retry_after) from None
        if got.status == 200:
            return Attachment(filename=str(item.get("filename") or item["file_id"]),
                              content_type=str(item.get("content_type")
                                               or "application/octet-stream"),
                              data=got.data)
        if got.status == 429 or got.status >= 500:
            raise TemporaryFailure(f"Telegram answered HTTP {got.status} for the file")
        raise PermanentFailure(f"Telegram answered HTTP {got.status} for the file")
