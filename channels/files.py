"""Files staff attached to a reply, as the customer channels send them: each channel's limits,
checked before anything is sent, and the bytes read from the attachment store.

A channel describes what it takes with :class:`FileRules` and calls :func:`check_files` before
its first remote call: a file that cannot go fails the reply at once (a
:class:`~frontdesk.channels.base.PermanentFailure`), with a reason staff understand, in the thread
and in ``frontdesk show``, and nothing half-sent. Channels that upload the bytes (email,
Telegram) read them with :func:`read_files`; the others hand the provider a signed link
(:class:`~frontdesk.domain.files.FileLinks`, given in the channel's context).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from frontdesk.channels.base import PermanentFailure
from frontdesk.domain.files import file_words, size_words
from frontdesk.domain.messages import OutboundFile
from frontdesk.storage.attachments import AttachmentStore


@dataclass(frozen=True)
class FileRules:
    """What one channel takes. ``types``: content types, exact (``application/pdf``) or by
    their main type (``image/*``); None takes any. ``type_limits``: a smaller size for some
    types (``("image/*", 5 MB)``); ``setting``: the config key a size limit comes from."""

    where: str
    max_each: int | None = None
    max_total: int | None = None
    max_count: int | None = None
    types: frozenset[str] | None = None
    type_words: str = ""
    type_limits: tuple[tuple[str, int], ...] = ()
    setting: str = ""

    def takes(self, content_type: str) -> bool:
        return self.types is None or matches(content_type, self.types)

    def limit_for(self, content_type: str) -> int | None:
        for pattern, limit in self.type_limits:
            if matches(content_type, frozenset({pattern})):
                return limit
        return self.max_each


def matches(content_type: str, patterns: frozenset[str]) -> bool:
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind in patterns or f"{kind.partition('/')[0]}/*" in patterns


def check_files(files: Sequence[OutboundFile], rules: FileRules) -> None:
    """Raise PermanentFailure, naming the file and the limit, when ``files`` cannot go."""
    if not files:
        return
    where = rules.where
    setting = f" ({rules.setting})" if rules.setting else ""
    if rules.max_count is not None and len(files) > rules.max_count:
        raise PermanentFailure(f"{len(files)} files cannot go by {where}: it takes at most "
                               f"{rules.max_count} with one message")
    for f in files:
        if not rules.takes(f.content_type):
            raise PermanentFailure(f"{f.filename} cannot go by {where}: it takes "
                                   f"{rules.type_words or 'other kinds of file'}, not "
                                   f"{f.content_type}")
        limit = rules.limit_for(f.content_type)
        if limit is not None and f.size > limit:
            raise PermanentFailure(f"{file_words(f)} cannot go by {where}: it takes files of "
                                   f"at most {size_words(limit)}{setting}")
    total = sum(f.size for f in files)
    if rules.max_total is not None and total > rules.max_total:
        what = file_words(files[0]) if len(files) == 1 else (
            f"the files ({', '.join(file_words(f) for f in files)}), {size_words(total)} "
            "together,")
        raise PermanentFailure(f"{what} cannot go by {where}: it takes at most "
                               f"{size_words(rules.max_total)} in all{setting}")


async def read_files(store: AttachmentStore, files: Sequence[OutboundFile]) -> list[bytes]:
    """The bytes of ``files``, read in a worker thread; a file no longer stored (its contact
    was erased) fails the reply for good, saying so."""
    def read() -> list[bytes]:
        out = []
        for f in files:
            try:
                out.append(store.read(f.sha256))
            except FileNotFoundError:
                raise PermanentFailure(f"{f.filename} is no longer stored (its contact's data "
                                       "was erased?), so the reply cannot be sent") from None
        return out
    return await asyncio.to_thread(read)
