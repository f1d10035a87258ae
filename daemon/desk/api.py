"""Slack's Web API as the desk uses it: the client, paced posting, errors in the outbox's terms.

One slack_sdk ``AsyncWebClient`` (on the daemon's aiohttp session once the desk starts) serves
every call. Posting is paced to ``slack.post_interval`` per Slack channel (Slack allows about one
post a second per channel) and a 429 holds that channel for its ``Retry-After``: both raise
:class:`~frontdesk.channels.base.Deferred`, which the outbox keeps without counting an attempt.
A short ``Retry-After`` is waited for inside the call (:class:`BriefRateLimitRetry`). Every other
Slack error becomes a :class:`~frontdesk.channels.base.TemporaryFailure` or
:class:`~frontdesk.channels.base.PermanentFailure` with words a person can act on.

:class:`UserDirectory` names Slack users (``users.info``, cached) for the events audit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.http_retry.builtin_interval_calculators import FixedValueRetryIntervalCalculator
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse
from yarl import URL

from frontdesk.channels.base import Deferred, DeliveryError, PermanentFailure, TemporaryFailure
from frontdesk.channels.media import MediaFetcher, MediaHosts
from frontdesk.config.schema import SlackConfig
from frontdesk.domain.files import file_words, size_words
from frontdesk.domain.messages import Attachment, Receipt

log = logging.getLogger(__name__)

UNREACHABLE = (aiohttp.ClientError, TimeoutError, OSError)
"""How a call fails when Slack cannot be reached (besides :class:`SlackApiError`)."""
CALL_ERRORS = (SlackApiError, *UNREACHABLE)
"""Every way a Slack call can fail."""

AUTH_ERRORS = frozenset({"invalid_auth", "not_authed", "token_revoked", "token_expired",
                         "account_inactive", "no_permission", "ekm_access_denied"})
_PERMANENT_ERRORS = frozenset({"invalid_blocks", "invalid_blocks_format", "msg_too_long",
                               "no_text", "invalid_arguments", "message_not_found",
                               "cant_update_message", "edit_window_closed", "invalid_name",
                               "too_many_reactions", "invalid_metadata_format",
                               "invalid_metadata_schema", "metadata_too_large"})
_IN_CALL_RATE_LIMIT_WAIT = 2.0
SLACK_FILES_HOST = "files.slack.com"
"""Where ``url_private_download`` points: with the API's own host, the only one given the bot
token (a redirect to Slack's CDN, ``*.slack-edge.com``, is followed without it)."""


def quiet_logger(name: str) -> logging.Logger:
    """The SDKs log every request (and retry) when their logger's level is DEBUG or unset; start
    them at INFO unless logging is configured for them."""
    logger = logging.getLogger(name)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    return logger


def describe(exc: BaseException) -> str:
    """A failed call in a few words, for the log."""
    if isinstance(exc, SlackApiError):
        return f"{error_code(exc)} (HTTP {exc.response.status_code})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def error_code(exc: SlackApiError) -> str:
    """Slack's ``error`` field (``channel_not_found``, ``ratelimited``, ...)."""
    data = exc.response.data if exc.response is not None else None
    if isinstance(data, dict):
        return str(data.get("error") or "error")
    return "error"


def _retry_after(headers: Mapping[str, Any] | None, default: float = 30.0) -> float:
    if not headers:
        return default
    for key, value in headers.items():
        if key.lower() == "retry-after":
            value = value[0] if isinstance(value, list | tuple) and value else value
            try:
                return max(0.0, float(value))
            except (TypeError, ValueError):
                return default
    return default


class BriefRateLimitRetry(AsyncRateLimitErrorRetryHandler):
    """Waits inside the call only for a short Retry-After; a longer one goes back to the outbox
    (as a Deferred row), so the outbox worker is not held up by one Slack channel."""

    def __init__(self, max_wait: float = _IN_CALL_RATE_LIMIT_WAIT) -> None:
        super().__init__(max_retry_count=1)
        self.max_wait = max_wait

    async def _can_retry_async(self, *, state: RetryState, request: HttpRequest,
                               response: HttpResponse | None = None,
                               error: Exception | None = None) -> bool:
        if response is None or response.status_code != 429:
            return False
        return _retry_after(response.headers) <= self.max_wait


def make_client(config: SlackConfig) -> AsyncWebClient:
    return AsyncWebClient(
        token=config.bot_token.get_secret_value(), base_url=config.api_base_url, timeout=15,
        logger=quiet_logger("frontdesk.daemon.desk.sdk"),
        retry_handlers=[
            AsyncConnectionErrorRetryHandler(
                max_retry_count=1, interval_calculator=FixedValueRetryIntervalCalculator(0.2)),
            BriefRateLimitRetry(),
        ])


@dataclass(frozen=True)
class SlackUser:
    id: str
    name: str
    email: str = ""

    @property
    def actor(self) -> str:
        """How the events audit names this person."""
        return f"{self.name} <{self.email}>" if self.email else f"{self.name} (Slack {self.id})"

    def audit_data(self, **more: str) -> dict[str, str]:
        """The events audit's ``data`` for what this person did in Slack."""
        return {"via": "slack", "slack_user": self.id, **more}


class UserDirectory:
    """users.info, cached for an hour; a failure gives a stand-in name, not an error."""

    ttl = 3600.0
    timeout = 2.5

    def __init__(self, client: AsyncWebClient) -> None:
        self._client = client
        self._cache: dict[str, tuple[float, SlackUser]] = {}

    async def get(self, user_id: str) -> SlackUser:
        hit = self._cache.get(user_id)
        if hit is not None and time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        try:
            response = await asyncio.wait_for(self._client.users_info(user=user_id),
                                              timeout=self.timeout)
        except CALL_ERRORS as exc:
            log.warning("users.info for %s failed (%s); using the user id as the name",
                        user_id, describe(exc))
            return hit[1] if hit is not None else SlackUser(user_id, f"Slack user {user_id}")
        user = response.get("user") or {}
        profile = user.get("profile") or {}
        name = (profile.get("real_name") or user.get("real_name") or profile.get("display_name")
                or user.get("name") or user_id)
        found = SlackUser(user_id, str(name), str(profile.get("email") or ""))
        self._cache[user_id] = (time.monotonic(), found)
        return found


class SlackApi:
    """The desk's Slack calls; who the bot is once :meth:`sign_in` worked."""

    def __init__(self, config: SlackConfig, clock: Callable[[], datetime]) -> None:
        self.config = config
        self.clock = clock
        self.client = make_client(config)
        self.users = UserDirectory(self.client)
        self.bot_user_id: str | None = None
        self.bot_id: str | None = None
        self.team_id: str | None = None
        self._not_before: dict[str, datetime] = {}
        origin = URL(config.api_base_url).origin()
        self._file_origin = str(origin)
        # Staff files come from Slack's file host (or, pointed elsewhere, the API's own host),
        # fetched by the SSRF-safe fetcher with the bot token for those hosts only.
        self.files = MediaFetcher(
            MediaHosts([SLACK_FILES_HOST, "*.slack-edge.com"], origins=[self._file_origin],
                       settings="slack.api_base_url"),
            provider="Slack", timeout=60, max_bytes=config.download_max,
            credentials=self._file_credentials)

    def _file_credentials(self, url: URL) -> dict[str, str]:
        """The bot token, for Slack's file host and the API's own origin only."""
        host = (url.raw_host or "").lower().rstrip(".")
        if (url.scheme == "https" and host == SLACK_FILES_HOST) or \
                str(url.origin()) == self._file_origin:
            return {"Authorization": f"Bearer {self.config.bot_token.get_secret_value()}"}
        return {}

    async def sign_in(self) -> AsyncSlackResponse:
        """``auth.test``: learn the bot's own ids (its messages are not staff replies)."""
        auth = await self.client.auth_test()
        self.bot_user_id, self.bot_id = auth.get("user_id"), auth.get("bot_id")
        self.team_id = auth.get("team_id")
        return auth

    def pace(self, channel: str) -> None:
        """Take the channel's next posting slot, or raise Deferred until it is free."""
        now = self.clock()
        wait_until = self._not_before.get(channel)
        if wait_until is not None and now < wait_until:
            raise Deferred(f"pacing posts to Slack channel {channel}",
                           retry_after=(wait_until - now).total_seconds())
        self._not_before[channel] = now + self.config.post_interval

    async def post(self, channel: str, *, text: str, thread_ts: str | None = None,
                   blocks: list[dict[str, Any]] | None = None,
                   metadata: dict[str, Any] | None = None,
                   paced: bool = False) -> tuple[str, str]:
        """chat.postMessage (paced unless the caller has just called :meth:`pace`); returns the
        message's ts and the channel Slack put it in."""
        if not paced:
            self.pace(channel)
        with self._outbox_errors("chat.postMessage", channel):
            response = await self.client.chat_postMessage(
                channel=channel, text=text, blocks=blocks, thread_ts=thread_ts,
                metadata=metadata, unfurl_links=False, unfurl_media=False)
        return str(response["ts"]), str(response.get("channel") or channel)

    async def update(self, channel: str, ts: str, *, text: str,
                     blocks: list[dict[str, Any]]) -> None:
        with self._outbox_errors("chat.update", channel):
            await self.client.chat_update(channel=channel, ts=ts, text=text, blocks=blocks)

    async def react(self, channel: str, ts: str, name: str) -> Receipt:
        with self._outbox_errors("reactions.add", channel):
            try:
                await self.client.reactions_add(channel=channel, timestamp=ts, name=name)
            except SlackApiError as exc:
                if error_code(exc) != "already_reacted":
                    raise
                return Receipt(detail="already there")
        return Receipt(detail=f":{name}: on {ts}")

    async def find_posted(self, channel: str, event_type: str,
                          payload: Mapping[str, Any]) -> str | None:
        """The ts of a recent message in ``channel`` whose metadata has ``event_type`` and
        ``payload``'s items; None when there is none. Raises what the call raised."""
        history = await self.client.conversations_history(
            channel=channel, limit=200, include_all_metadata=True)
        for m in history.get("messages") or []:
            meta = m.get("metadata") or {}
            found = meta.get("event_payload") or {}
            if meta.get("event_type") == event_type and \
                    all(found.get(k) == v for k, v in payload.items()):
                return str(m["ts"])
        return None

    async def top_message(self, channel: str, ts: str) -> Mapping[str, Any] | None:
        """The channel's top-level message posted at ``ts``, with its metadata, if the bot
        posted it; else None. Raises what the call raised."""
        history = await self.client.conversations_history(
            channel=channel, latest=ts, oldest=ts, inclusive=True, limit=1,
            include_all_metadata=True)
        own = {self.bot_user_id, self.bot_id} - {None}
        for m in history.get("messages") or []:
            if m.get("ts") == ts and (m.get("user") in own or m.get("bot_id") in own):
                return dict(m)
        return None

    async def delete_thread(self, channel: str, ts: str) -> Receipt:
        """Delete the bot's own posts of a thread, its replies first and the root last (a GDPR
        erasure), and the customer's files it uploaded there (``files.delete``: a deleted
        message leaves its files in Slack); what others wrote stays (a bot token cannot delete
        it). A repeat, or a thread already gone, deletes what is left."""
        if self.bot_user_id is None and self.bot_id is None:
            with self._outbox_errors("auth.test", channel):
                await self.sign_in()
        own = {self.bot_user_id, self.bot_id} - {None}
        found: list[str] = []
        files: list[str] = []
        cursor: str | None = None
        with self._outbox_errors("conversations.replies", channel):
            while True:
                try:
                    page = await self.client.conversations_replies(
                        channel=channel, ts=ts, cursor=cursor, limit=200)
                except SlackApiError as exc:
                    if error_code(exc) in ("thread_not_found", "message_not_found"):
                        break
                    raise
                mine = [m for m in page.get("messages") or []
                        if m.get("ts") and (m.get("user") in own or m.get("bot_id") in own)]
                found += [str(m["ts"]) for m in mine]
                files += [str(f["id"]) for m in mine for f in m.get("files") or []
                          if isinstance(f, dict) and f.get("id")]
                cursor = (page.get("response_metadata") or {}).get("next_cursor") or None
                if not cursor:
                    break
        for file_id in files:
            with self._outbox_errors("files.delete", channel):
                try:
                    await self.client.files_delete(file=file_id)
                except SlackApiError as exc:
                    if error_code(exc) not in ("file_not_found", "file_deleted",
                                               "cant_delete_file"):
                        raise
        replies = [t for t in found if t != ts]
        deleted = 0
        for message_ts in [*replies, ts]:
            with self._outbox_errors("chat.delete", channel):
                try:
                    await self.client.chat_delete(channel=channel, ts=message_ts)
                    deleted += 1
                except SlackApiError as exc:
                    if error_code(exc) not in ("message_not_found", "cant_delete_message"):
                        raise
        return Receipt(remote_id=ts, detail=f"deleted {deleted} message(s) and {len(files)} "
                                            f"file(s) in {channel}")

    async def download(self, file: Mapping[str, Any]) -> Attachment:
        """A file staff attached to a thread reply (an item of the message event's ``files``):
        its ``url_private_download`` fetched with the bot token (``files:read``), at most
        ``slack.download_max``. Raises the outbox's DeliveryError kinds, in words for the
        thread."""
        if file.get("file_access") == "check_file_info" or not (
                file.get("url_private_download") or file.get("url_private")):
            with self._outbox_errors("files.info", ""):  # the event carried only the file's id
                found = (await self.client.files_info(file=str(file.get("id") or ""))).get("file")
            file = found if isinstance(found, dict) else {}
        name = str(file.get("name") or file.get("title") or file.get("id") or "file")
        if file.get("mode") in ("tombstone", "hidden_by_limit"):
            raise PermanentFailure(f"Slack no longer shows {name} (deleted, or hidden by the "
                                   "workspace's plan)")
        size = file.get("size")
        limit = self.config.download_max
        if isinstance(size, int) and size > limit:
            raise PermanentFailure(f"{file_words((name, size))} is larger than the "
                                   f"{size_words(limit)} frontdesk fetches (slack.download_max)")
        url = str(file.get("url_private_download") or file.get("url_private") or "")
        got = await self.files.fetch(url)
        if got.status == 429 or got.status >= 500:
            raise TemporaryFailure(f"Slack answered HTTP {got.status} for {name}")
        if got.status != 200:
            raise PermanentFailure(f"Slack answered HTTP {got.status} for {name}")
        if got.content_type.split(";")[0].strip().lower() == "text/html" and \
                file.get("mimetype") != "text/html":
            raise PermanentFailure(f"Slack sent a sign-in page instead of {name}: the app needs "
                                   "the files:read scope (add it and reinstall the app)")
        return Attachment(name, str(file.get("mimetype") or got.content_type or ""), got.data)

    async def upload(self, channel: str, thread_ts: str, files: list[tuple[str, bytes]], *,
                     comment: str | None = None, paced: bool = False) -> Receipt:
        """Slack's external upload (files.getUploadURLExternal, the bytes to the URL it gives,
        then files.completeUploadExternal into the thread): the files appear in one message of
        the thread, images shown inline. Paced like a post (``files:write``)."""
        if not paced:
            self.pace(channel)
        try:
            done = await self.client.files_upload_v2(
                file_uploads=[{"file": data, "filename": name, "title": name}
                              for name, data in files],
                channel=channel, thread_ts=thread_ts, initial_comment=comment)
        except SlackApiError as exc:  # named by the step that failed (a missing scope: which)
            step = str(getattr(exc.response, "api_url", "") or "").rsplit("/", 1)[-1]
            raise self._failure(exc, step or "files.completeUploadExternal", channel) from None
        except SlackRequestError as exc:  # the upload URL did not take the bytes
            raise TemporaryFailure(f"Slack's upload service refused a file ({exc})") from None
        except UNREACHABLE as exc:
            raise TemporaryFailure(f"Slack could not be reached ({describe(exc)})") from None
        ids = [str(f.get("id")) for f in done.get("files") or [] if isinstance(f, dict)]
        return Receipt(remote_id=",".join(ids) or None,
                       detail=f"{len(files)} file(s) uploaded to {channel}")

    async def open_view(self, trigger_id: str, view: dict[str, Any]) -> None:
        """``views.open``: show a modal to the person whose command or click gave
        ``trigger_id`` (valid for three seconds); raises what the call raised."""
        await self.client.views_open(trigger_id=trigger_id, view=view)

    async def tell(self, channel: str, user_id: str, text: str) -> None:
        """An ephemeral note only ``user_id`` sees (not a conversation post: not in the
        outbox); a failure is logged."""
        try:
            await self.client.chat_postEphemeral(channel=channel, user=user_id, text=text)
        except CALL_ERRORS as exc:
            log.warning("could not tell %s %r: %s", user_id, text, exc)

    @contextlib.contextmanager
    def _outbox_errors(self, method: str, channel: str) -> Iterator[None]:
        """A failed call as the outbox's DeliveryError kinds."""
        try:
            yield
        except SlackApiError as exc:
            raise self._failure(exc, method, channel) from None
        except UNREACHABLE as exc:
            raise TemporaryFailure(f"Slack could not be reached ({describe(exc)})") from None

    def _failure(self, exc: SlackApiError, method: str, channel: str) -> DeliveryError:
        status = exc.response.status_code if exc.response is not None else 0
        code = error_code(exc)
        if status == 429 or code == "ratelimited":
            wait = _retry_after(exc.response.headers if exc.response is not None else None)
            self._not_before[channel] = self.clock() + timedelta(seconds=wait)
            return Deferred(f"Slack rate limit on {method} in {channel}: retry after {wait:.0f}s",
                            retry_after=wait)
        if status >= 500:
            return TemporaryFailure(f"Slack answered HTTP {status} to {method}")
        if code == "channel_not_found":
            return TemporaryFailure(f"the Slack channel {channel} does not exist or the bot "
                                    "cannot see it (check slack.channel_id and the routes)")
        if code == "not_in_channel":
            return TemporaryFailure(f"the bot is not a member of the Slack channel {channel}: "
                                    "invite it there (/invite @frontdesk)")
        if code == "is_archived":
            return TemporaryFailure(f"the Slack channel {channel} is archived")
        if code in AUTH_ERRORS:
            return TemporaryFailure(f"Slack refused slack.bot_token ({code})")
        if code == "missing_scope":
            data = exc.response.data if isinstance(exc.response.data, dict) else {}
            return TemporaryFailure(
                f"the Slack app lacks the scope {data.get('needed', '?')} for {method}: add it "
                "under OAuth & Permissions and reinstall the app")
        if code in _PERMANENT_ERRORS:
            return PermanentFailure(f"Slack refused {method}: {code}")
        return TemporaryFailure(f"Slack refused {method}: {code}")
