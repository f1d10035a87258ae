"""The Twilio webhook signature and form parsing on the hot path agree with the twilio library's
RequestValidator and the standard library's parse_qsl, which they stand in for."""

from __future__ import annotations

import random
from urllib.parse import parse_qsl, urlencode

import pytest
from multidict import MultiDict
from twilio.request_validator import HMAC_SHA1, HMAC_SHA256, RequestValidator

from frontdesk.channels.base import ParseError
from frontdesk.channels.twilio.channel import _Signer, signature_of
from frontdesk.channels.twilio.parse import form_pairs

URL = "https://support.example.com/webhooks/twilio/sms"
TOKEN = "auth-token-0123456789abcdef"


def random_form(rng: random.Random) -> MultiDict[str]:
    names = ["Body", "From", "To", "MessageSid", "MediaUrl0", "é", "a b", "", "x&y", "NumMedia"]
    values = ["", "Hi, my order 1234?", "+15550001111", "whatsapp:+1555", "ü€", "a+b%20c", "=",
              "same", "same"]
    return MultiDict((rng.choice(names), rng.choice(values))
                     for _ in range(rng.randint(0, 12)))


@pytest.mark.parametrize("algorithm", [HMAC_SHA1, HMAC_SHA256, "hmac_sha256"])
def test_signature_is_the_librarys(algorithm: str) -> None:
    rng = random.Random(7)
    validator = RequestValidator(TOKEN)
    signer = _Signer(TOKEN)
    for _ in range(500):
        form = random_form(rng)
        url = rng.choice([URL, URL + "?caller=%2B1555&called=x", "http://h:8080/p"])
        expected = validator.compute_signature(url, form, algorithm)
        assert signature_of(TOKEN.encode(), url, form, algorithm) == expected
        assert signer.signature(url, form, algorithm) == expected


def test_unknown_algorithm_has_no_signature_and_is_refused() -> None:
    form = MultiDict([("Body", "hi")])
    assert signature_of(TOKEN.encode(), URL, form, "HMAC_MD5") is None
    assert _Signer(TOKEN).signature(URL, form, "HMAC_MD5") is None
    good = RequestValidator(TOKEN).compute_signature(URL, form)
    assert not _Signer(TOKEN).signed(URL, form, good, "HMAC_MD5")


def test_signer_accepts_the_url_with_or_without_the_default_port() -> None:
    form = MultiDict([("Body", "hi"), ("From", "+15557654321")])
    validator = RequestValidator(TOKEN)
    signer = _Signer(TOKEN)
    assert signer.signed(URL, form, validator.compute_signature(URL, form), HMAC_SHA1)
    with_port = URL.replace(".com/", ".com:443/")
    assert signer.signed(URL, form, validator.compute_signature(with_port, form), HMAC_SHA1)
    assert not signer.signed(URL, form, validator.compute_signature(URL + "x", form), HMAC_SHA1)
    assert not signer.signed(URL, form, "", HMAC_SHA1)
    assert not _Signer("another-token").signed(URL, form, validator.compute_signature(URL, form),
                                               HMAC_SHA1)


def test_form_pairs_are_parse_qsl() -> None:
    rng = random.Random(11)
    alphabet = "ab=&+%2F0eE;é \u20ac"
    cases = ["", "&", "a", "a=", "=b", "a=b=c", "a+b=c+d", "a%20=%2", "%zz=%e2%82", "a=1&a=2&&b",
             "x=%E2%82%AC+1", ";a=b;c=d", "a=%FF%FE", urlencode({"Body": "Hi & bye = 100%"})]
    cases += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))
              for _ in range(3000)]
    for text in cases:
        assert form_pairs(text.encode()) == parse_qsl(text, keep_blank_values=True), text


def test_form_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(ParseError):
        form_pairs(b"Body=\xff\xfe")
