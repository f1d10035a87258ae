"""Staff files in the domain: names and types made fit to send, stored once, and signed links
that name one file for a while and nothing else (the key kept in the store, shared by every
instance)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from frontdesk.config.schema import DatabaseConfig
from frontdesk.domain.files import (
    FileLinks,
    FileProblem,
    LinkRefused,
    clean_filename,
    content_type_of,
    load_link_key,
    store_files,
)
from frontdesk.domain.messages import Attachment, OutboundFile
from frontdesk.storage.attachments import AttachmentStore
from frontdesk.storage.db import Store


def test_names_lose_folders_and_control_characters() -> None:
    assert clean_filename("../../etc/passwd") == "passwd"
    assert clean_filename("C:\\Users\\ada\\label.pdf") == "label.pdf"
    assert clean_filename("in\x00voice\n.pdf") == "in voice .pdf"
    assert clean_filename(".hidden") == "hidden"
    assert clean_filename("") == clean_filename("...") == "file"
    long = clean_filename("a" * 300 + ".pdf")
    assert len(long) == 200 and long.endswith(".pdf")


def test_types_come_from_what_is_given_else_the_name() -> None:
    assert content_type_of("label.pdf") == "application/pdf"
    assert content_type_of("label.pdf", "application/octet-stream") == "application/pdf"
    assert content_type_of("photo", "IMAGE/PNG; name=x") == "image/png"
    assert content_type_of("noext", "nonsense") == "application/octet-stream"


def test_files_are_stored_once_and_checked(tmp_path: Path) -> None:
    store = AttachmentStore(tmp_path)
    data = b"%PDF-1.4 label"
    [a, b] = store_files([Attachment("a.pdf", "", data), Attachment("b.pdf", "", data)], store)
    assert a.sha256 == b.sha256 == hashlib.sha256(data).hexdigest()
    assert store.read(a.sha256) == data
    with pytest.raises(FileProblem, match=r"empty\.txt is empty"):
        store_files([Attachment("empty.txt", "", b"")], store)
    with pytest.raises(FileProblem, match="at most 10 files"):
        store_files([Attachment(f"{n}.txt", "", b"x") for n in range(11)], store)


async def test_links_name_one_file_until_they_expire(database_url: str, clock: Any) -> None:
    store = Store.from_settings(DatabaseConfig(url=database_url))
    await store.ensure_schema()
    try:
        links = FileLinks("https://support.example.com/", store=store, clock=clock)
        file = OutboundFile("label.pdf", "application/pdf", 3, "ab" * 32, id=7)
        token = f"7.{int(clock().timestamp()) + 60}.{'ab' * 32}.{'A' * 43}"
        with pytest.raises(LinkRefused):  # no link made yet: no key, and none is made
            await links.check(token)
        assert await load_link_key(store, clock(), make=False) is None
        url = await links.url(file)
        assert url.startswith("https://support.example.com/files/7.")
        token = url.rsplit("/", 1)[1]
        found = await links.check(token)
        assert (found.attachment_id, found.sha256) == (7, "ab" * 32)
        other = FileLinks("https://support.example.com", store=store, clock=clock)
        assert await other.check(token) == found  # another instance: the key from the store
        for bad in (token.replace("7.", "8.", 1), token[:-1] + ("A" if token[-1] != "A" else "B"),
                    "7.1.2.3", ""):
            with pytest.raises(LinkRefused) as refused:
                await links.check(bad)
            assert refused.value.status == 404
        clock.advance(hours=4, seconds=1)
        with pytest.raises(LinkRefused) as refused:
            await links.check(token)
        assert refused.value.status == 410
        with pytest.raises(FileProblem, match=r"http\.public_url"):
            await FileLinks("", store=store, clock=clock).url(file)
    finally:
        await store.dispose()
