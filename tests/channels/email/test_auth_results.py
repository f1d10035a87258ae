"""Which Authentication-Results count, and what they say about the From address (RFC 8601)."""

from __future__ import annotations

import pytest

from frontdesk.channels.email.auth_results import sender_verdict

TRUSTED = ["mx.example.com"]


@pytest.mark.parametrize(("headers", "verdict"), [
    # DMARC decides when it is there
    (["mx.example.com; dmarc=pass header.from=example.org"], "pass"),
    (["mx.example.com; dkim=pass header.d=example.org; dmarc=fail header.from=example.org"],
     "fail"),
    # a version number, comments (nested) and upper case, as real servers write them
    (["MX.Example.com 1; spf=pass (sender (ip) permitted) smtp.mailfrom=ada@example.org"],
     "pass"),
    # without DMARC: an aligned DKIM or SPF pass; a subdomain aligns, another domain does not
    (["mx.example.com; dkim=pass header.d=mail.example.org"], "pass"),
    (["mx.example.com; dkim=pass header.d=evil.example"], None),
    (["mx.example.com; spf=pass smtp.mailfrom=bounce@evil.example"], None),
    (["mx.example.com; spf=fail smtp.mailfrom=example.org"], "fail"),
    (["mx.example.com; spf=softfail smtp.mailfrom=example.org"], None),
    (["mx.example.com; dkim=pass header.d=example.org; spf=fail smtp.mailfrom=example.org"],
     "pass"),
    (["mx.example.com; none"], None),
    # only the trusted server's header, and only its topmost one
    (["evil.example; dmarc=pass"], None),
    (["mx.example.com; dmarc=none", "mx.example.com; dmarc=pass"], None),
    (["evil.example; dmarc=pass", "mx.example.com; dmarc=fail"], "fail"),
    ([], None),
])
def test_verdicts(headers: list[str], verdict: str | None) -> None:
    assert sender_verdict(headers, TRUSTED, "ada@example.org") == verdict


def test_nothing_is_trusted_unless_named() -> None:
    assert sender_verdict(["mx.example.com; dmarc=pass"], [], "ada@example.org") is None
    assert sender_verdict(["mx.example.com; dmarc=pass"], ["", " "], "ada@example.org") is None
