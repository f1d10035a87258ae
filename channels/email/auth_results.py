"""What a trusted upstream said about a mail's sender: its ``Authentication-Results`` (RFC 8601).

frontdesk does not check SPF, DKIM or DMARC itself. A mail server in front of it (Postfix with
OpenDMARC, rspamd, Microsoft 365, Gmail) does, and writes its verdict into an
``Authentication-Results`` header naming itself by its *authserv-id*. Anyone can write such a
header into a mail, so only headers with an authserv-id the operator named
(``email.trusted_authserv_id``) count, and of those only the topmost, the one the trusted server
added last (RFC 8601 §5: a server removes or ignores copies of its own id arriving from outside,
and adds its own on top).

:func:`sender_verdict` reads that header:

* ``"pass"``: DMARC passed; or, with no DMARC result, DKIM passed for the From domain (or a
  domain it is a subdomain of, or the reverse) or SPF passed for an aligned envelope domain;
* ``"fail"``: DMARC failed, or SPF failed (``fail``, not ``softfail``) with no DMARC pass;
* ``None``: no trusted header, or nothing conclusive in it.

A ``"fail"`` mail is stored like any other but never acknowledged; only a ``"pass"`` sender gets
an acknowledgement that repeats their name and subject (no backscatter of attacker-chosen text).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Literal

Verdict = Literal["pass", "fail"]

_COMMENT = re.compile(r"\([^()]*\)")
_RESULT = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*=\s*([A-Za-z]+)\b(.*)$", re.DOTALL)
_PROPERTY = re.compile(r"([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)\s*=\s*(\"[^\"]*\"|[^\s;]+)")
_MAX_HEADER = 8192


def _without_comments(value: str) -> str:
    for _ in range(8):  # nested comments, a few levels deep
        stripped = _COMMENT.sub(" ", value)
        if stripped == value:
            break
        value = stripped
    return value


def _authserv_id(value: str) -> str:
    first = value.split(";", 1)[0].split()
    return first[0].lower() if first else ""


def _results(value: str) -> dict[str, list[tuple[str, dict[str, str]]]]:
    """``{"dkim": [("pass", {"header.d": "example.org"})], ...}``."""
    out: dict[str, list[tuple[str, dict[str, str]]]] = {}
    for part in value.split(";")[1:]:
        m = _RESULT.match(part)
        if not m:
            continue
        method, result, rest = m.group(1).lower(), m.group(2).lower(), m.group(3)
        props = {k.lower(): v.strip('"').lower() for k, v in _PROPERTY.findall(rest)}
        out.setdefault(method, []).append((result, props))
    return out


def _domain(value: str) -> str:
    return value.rpartition("@")[2].strip().strip(".<>").lower()


def _aligned(domain: str, from_domain: str) -> bool:
    """Relaxed alignment without a public-suffix list: one domain is the other or its parent."""
    if not domain or not from_domain:
        return False
    return (domain == from_domain or from_domain.endswith("." + domain)
            or domain.endswith("." + from_domain))


def trusted_header(values: Iterable[str], trusted_ids: Sequence[str]) -> str | None:
    """The topmost ``Authentication-Results`` value whose authserv-id is trusted."""
    trusted = {t.strip().lower() for t in trusted_ids if t.strip()}
    if not trusted:
        return None
    for value in values:
        value = _without_comments(" ".join(str(value)[:_MAX_HEADER].split()))
        if _authserv_id(value) in trusted:
            return value
    return None


def sender_verdict(values: Iterable[str], trusted_ids: Sequence[str],
                   from_address: str) -> Verdict | None:
    """The trusted upstream's verdict on ``from_address`` (the From header's address)."""
    header = trusted_header(values, trusted_ids)
    if header is None:
        return None
    results = _results(header)
    dmarc = [r for r, _ in results.get("dmarc", [])]
    if "pass" in dmarc:
        return "pass"
    if "fail" in dmarc:
        return "fail"
    from_domain = _domain(from_address)
    for result, props in results.get("dkim", []):
        if result == "pass" and _aligned(_domain(props.get("header.d")
                                                 or props.get("header.i", "")), from_domain):
            return "pass"
    spf = results.get("spf", [])
    if any(result == "fail" for result, _ in spf):
        return "fail"
    for result, props in spf:
        if result == "pass" and _aligned(_domain(props.get("smtp.mailfrom")
                                                 or props.get("smtp.helo", "")), from_domain):
            return "pass"
    return None
