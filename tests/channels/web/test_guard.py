"""The website's gate in isolation: rate windows, file types read from the bytes, the client's
address behind a trusted proxy."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import make_mocked_request

from frontdesk.channels.web.guard import ClientAddress, RateWindows, file_type
from tests.channels.web.test_web_chat import PNG


def test_rates_allow_up_to_their_count_and_say_how_long_to_wait() -> None:
    now = [0.0]
    windows = RateWindows(["3/1m", "5/1h"], clock=lambda: now[0])
    answers = []
    for _ in range(4):
        answers.append(windows.take("ada"))
        now[0] += 1
    assert answers[:3] == [None, None, None] and answers[3] == 57.0
    assert windows.take("bob") is None  # keys are apart
    now[0] = 61.0
    assert windows.take("ada") is None and windows.take("ada") is None
    assert windows.take("ada") == 3539.0  # the hourly rate: 5 since 0 s, so at 3600 s


def test_a_flood_from_one_key_keeps_only_what_the_rates_need() -> None:
    now = [0.0]
    windows = RateWindows(["100/1m"], clock=lambda: now[0])
    for _ in range(100_000):
        windows.take("flood")
        now[0] += 0.001
    assert len(windows._events["flood"]) <= 200


def test_file_types_come_from_the_bytes() -> None:
    assert file_type("photo.png", PNG) == "image/png"
    assert file_type("photo.jpg", PNG) == "image/png"  # the name does not decide
    assert file_type("scan.pdf", b"%PDF-1.7\n...") == "application/pdf"
    assert file_type("notes.txt", "Grüße\n".encode()) == "text/plain"
    assert file_type("list.csv", b"a,b\n1,2\n") == "text/csv"
    docx = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    assert file_type("letter.docx", b"PK\x03\x04" + b"\x00" * 40) == docx
    for name, data in (("setup.exe", b"MZ\x90\x00"), ("page.txt", b"<html><script>x"),
                       ("image.svg", b"<svg onload=alert(1)>"), ("notes.txt", b"a\x00b"),
                       ("archive.zip", b"PK\x03\x04rest"), ("latin.txt", b"caf\xe9")):
        assert file_type(name, data) is None, name


def _request(peer: str, forwarded: str | None = None) -> Any:
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    request = make_mocked_request("GET", "/", headers=headers)
    request._transport_peername = (peer, 12345)  # type: ignore[attr-defined]
    return request


def test_forwarded_for_counts_only_from_a_trusted_proxy() -> None:
    direct = ClientAddress([])
    assert direct(_request("203.0.113.9", "198.51.100.1")) == "203.0.113.9"
    proxied = ClientAddress(["10.0.0.0/8"])
    assert proxied(_request("10.1.2.3", "198.51.100.1, 10.0.0.5")) == "198.51.100.1"
    assert proxied(_request("203.0.113.9", "198.51.100.1")) == "203.0.113.9"  # not a proxy
    assert proxied(_request("10.1.2.3")) == "10.1.2.3"
    assert proxied(_request("10.1.2.3", "2001:db8::1")) == "2001:db8::/64"
