"""Parsing raw email into InboundMessage: what a support person would notice.

Messages are built with the stdlib email package or written as literal bytes. The last tests
check that the cheap compat32 parse agrees with a policy.default parse (get_body,
iter_attachments) on a corpus of these messages, and that it is the cheaper of the two.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import pytest

from frontdesk.channels.base import ParseError
from frontdesk.channels.email.parse import html_to_text, parse_email, remote_id_for
from frontdesk.domain.messages import InboundMessage

INBOXES = ["support@example.org", "billing@example.org"]
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 8 + b"\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(200))


def parse(raw: bytes, **meta: Any) -> InboundMessage:
    return parse_email(raw, meta, INBOXES)


def lines(text: str) -> bytes:
    """Literal mail text with CRLF line ends, as it comes off SMTP."""
    return text.replace("\n", "\r\n").encode("utf-8")


# --- builders (also the equivalence corpus) -----------------------------------------------------

def plain_mail() -> bytes:
    msg = EmailMessage()
    msg["From"] = "Anna Berg <Anna.Berg@Customer.example>"
    msg["To"] = "Support <support@example.org>"
    msg["Cc"] = "boss@customer.example"
    msg["Subject"] = "Printer on fire"
    msg["Message-ID"] = "<plain-1@customer.example>"
    msg["Date"] = "Mon, 23 Nov 2026 09:58:00 +0100"
    msg.set_content("Hello,\n\nthe printer is on fire.   \n\nAnna\n\n\n")
    return msg.as_bytes(policy=policy.SMTP)


def alternative_mail() -> bytes:
    msg = EmailMessage()
    msg["From"] = "anna@customer.example"
    msg["To"] = "support@example.org"
    msg["Subject"] = "Order 123"
    msg["Message-ID"] = "<alt-1@customer.example>"
    msg.set_content("Where is my order 123?\n")
    msg.add_alternative("<html><body><p>Where is my <b>order 123</b>?</p></body></html>\n",
                        subtype="html")
    return msg.as_bytes()


def html_only_mail() -> bytes:
    html = (
        "<html><head><title>Secret title</title><style>p { color: red }</style></head>"
        "<body><p>Hello&nbsp;team,</p>\n<p>My order&nbsp;#123 &amp; invoice<br>arrived\n"
        "   broken.</p><script>var tracking = 'do not show';</script>"
        "<ul><li>Item A</li><li>Item B</li></ul><div>Thanks &lt;3<br/>Anna</div></body></html>"
    )
    msg = EmailMessage()
    msg["From"] = "anna@customer.example"
    msg["To"] = "support@example.org"
    msg["Subject"] = "HTML only"
    msg["Message-ID"] = "<html-1@customer.example>"
    msg.set_content(html, subtype="html")
    return msg.as_bytes()


def latin1_mail() -> bytes:
    return (
        b"From: =?iso-8859-1?q?J=FCrgen_M=FCller?= <juergen@kunde.example>\r\n"
        b"To: support@example.org\r\n"
        b"Subject: =?utf-8?q?Re=3A_Bestellung_=C3=BCber_5_=E2=82=AC?=\r\n"
        b"Message-ID: <latin1-1@kunde.example>\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=ISO-8859-1\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n"
        b"\r\n"
        b"Gr=FC=DFe aus K=F6ln,\r\nJ=FCrgen\r\n"
    )


def cp1252_mail() -> bytes:
    return (
        b"From: shop@kunde.example\r\nTo: support@example.org\r\n"
        b"Subject: Preis\r\nMessage-ID: <cp1252-1@kunde.example>\r\n"
        b"Content-Type: text/plain; charset=windows-1252\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n"
        b"Das kostet 5 \x80 \x96 \x84Angebot\x93\r\n"
    )


def attachment_mail() -> bytes:
    msg = EmailMessage()
    msg["From"] = "anna@customer.example"
    msg["To"] = "billing@example.org"
    msg["Subject"] = "Invoice attached"
    msg["Message-ID"] = "<att-1@customer.example>"
    msg.set_content("See the invoice.\n")
    msg.add_attachment(PDF, maintype="application", subtype="pdf",
                       filename="Rechnung März 2024.pdf")
    msg.add_attachment(b"a,b\n1,2\n", maintype="text", subtype="csv", filename="data.csv")
    return msg.as_bytes()


def inline_image_mail() -> bytes:
    msg = EmailMessage()
    msg["From"] = "anna@customer.example"
    msg["To"] = "support@example.org"
    msg["Subject"] = "Screenshot"
    msg["Message-ID"] = "<img-1@customer.example>"
    msg.set_content("See the screenshot.\n")
    msg.add_alternative('<p>See <img src="cid:shot@x"></p>\n', subtype="html")
    html = list(msg.iter_parts())[1]
    html.add_related(PNG, maintype="image", subtype="png", cid="<shot@x>",
                     filename="screenshot.png", disposition="inline")
    html.add_related(PNG[::-1], maintype="image", subtype="png", cid="<logo@x>")
    return msg.as_bytes()


def forwarded_mail() -> bytes:
    inner = EmailMessage()
    inner["From"] = "angry@other.example"
    inner["To"] = "anna@customer.example"
    inner["Subject"] = "Complaint"
    inner["Message-ID"] = "<inner-1@other.example>"
    inner.set_content("This is unacceptable.\n")
    outer = EmailMessage()
    outer["From"] = "anna@customer.example"
    outer["To"] = "support@example.org"
    outer["Subject"] = "Fwd: Complaint"
    outer["Message-ID"] = "<fwd-1@customer.example>"
    outer.set_content("Please look at this.\n")
    outer.add_attachment(inner)
    return outer.as_bytes()


def literal_rfc2231_mail() -> bytes:
    return lines(
        "From: \"Zoë\" <zoe@customer.example>\n"
        "To: support@example.org\n"
        "Subject: =?utf-8?b?w5xiZXJ3ZWlzdW5n?= (bank transfer)\n"
        "Message-ID: <r2231-1@customer.example>\n"
        "MIME-Version: 1.0\n"
        "Content-Type: multipart/mixed; boundary=\"b1\"\n"
        "\n"
        "--b1\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: 8bit\n"
        "\n"
        "Beleg anbei.\n"
        "--b1\n"
        "Content-Type: application/pdf\n"
        "Content-Disposition: attachment;\n"
        " filename*0*=utf-8''%C3%9Cberweisung%20M%C3%A4;\n"
        " filename*1*=rz.pdf\n"
        "Content-Transfer-Encoding: base64\n"
        "\n"
        + base64.encodebytes(PDF).decode()
        + "--b1--\n"
    )


CORPUS: dict[str, Callable[[], bytes]] = {
    "plain": plain_mail, "alternative": alternative_mail, "html-only": html_only_mail,
    "latin1": latin1_mail, "cp1252": cp1252_mail, "attachments": attachment_mail,
    "inline-image": inline_image_mail, "forwarded": forwarded_mail,
    "rfc2231": literal_rfc2231_mail,
}


# --- the ordinary cases -------------------------------------------------------------------------

def test_plain_mail() -> None:
    m = parse(plain_mail(), mail_from="anna.berg@customer.example",
              rcpt_tos=["support@example.org"], received_at="2026-11-23T09:58:01+00:00",
              journal_id=7)
    assert m.channel == "email"
    assert m.external_id == "plain-1@customer.example"
    assert m.sender_address == "anna.berg@customer.example"
    assert m.sender_name == "Anna Berg"
    assert m.subject == "Printer on fire"
    assert m.text == "Hello,\n\nthe printer is on fire.   \n\nAnna"
    assert "\r" not in m.text
    assert m.html is None
    assert m.attachments == ()
    assert m.recipients == ("support@example.org", "boss@customer.example")
    assert m.inbox_address == "support@example.org"
    assert m.conversation_hint is None and m.subject_token is None
    assert m.received_at == datetime(2026, 11, 23, 9, 58, 1, tzinfo=UTC)
    assert m.raw_ref == 7
    assert m.automated is False and m.automated_reason is None
    assert m.headers["Subject"] == "Printer on fire"
    assert m.headers["Message-ID"] == "<plain-1@customer.example>"
    assert m.headers["From"] == "Anna Berg <Anna.Berg@Customer.example>"
    assert m.headers["Date"] == "Mon, 23 Nov 2026 09:58:00 +0100"
    assert "Reply-To" not in m.headers and "List-Id" not in m.headers


def test_without_meta_received_at_is_none() -> None:
    m = parse(plain_mail())
    assert m.received_at is None and m.raw_ref is None


def test_multipart_alternative_chooses_text_and_keeps_html() -> None:
    m = parse(alternative_mail())
    assert m.text == "Where is my order 123?"
    assert m.html is not None and "<b>order 123</b>" in m.html
    assert m.attachments == ()


def test_html_only_becomes_readable_text() -> None:
    m = parse(html_only_mail())
    assert m.text == (
        "Hello team,\n\nMy order #123 & invoice\narrived broken.\n\n- Item A\n- Item B\n\n"
        "Thanks <3\nAnna"
    )
    assert "Secret title" not in m.text and "tracking" not in m.text and "color" not in m.text
    assert m.html is not None and m.html.startswith("<html>")


def test_html_to_text_details() -> None:
    html = ("<head><title>t</title><body><h1>Title</h1><p>one &eacute; &#8364; &#x263a;</p>"
            "<table><tr><td>Qty</td><td>2</td></tr><tr><td>Total</td><td>5 &euro;</td></tr></table>"
            '<p>Read <a href="https://help.example/faq">the FAQ</a> or '
            '<a href="mailto:help@example.org">help@example.org</a>.</p>'
            "<pre>  keep\n    indent</pre><!-- a comment --><style>x{}</style>")
    text = html_to_text(html)
    assert text == ("Title\n\none é € ☺\n\nQty 2\nTotal 5 €\n\n"
                    "Read the FAQ (https://help.example/faq) or help@example.org.\n\n"
                    "  keep\n    indent")
    assert html_to_text("") == ""
    assert html_to_text("<p>unclosed <b>bold <div>and <<broken>> markup") == (
        "unclosed bold\nand <> markup")


def test_empty_plain_part_falls_back_to_html() -> None:
    msg = EmailMessage()
    msg["From"] = "a@customer.example"
    msg.set_content("\n")
    msg.add_alternative("<p>Only here</p>", subtype="html")
    assert parse(msg.as_bytes()).text == "Only here"


# --- charsets -----------------------------------------------------------------------------------

def test_latin1_body_and_rfc2047_headers() -> None:
    m = parse(latin1_mail())
    assert m.sender_name == "Jürgen Müller"
    assert m.sender_address == "juergen@kunde.example"
    assert m.subject == "Bestellung über 5 €"
    assert m.headers["Subject"] == "Re: Bestellung über 5 €"
    assert m.headers["From"] == "Jürgen Müller <juergen@kunde.example>"
    assert m.text == "Grüße aus Köln,\nJürgen"


def test_windows_1252_body() -> None:
    assert parse(cp1252_mail()).text == "Das kostet 5 € – „Angebot“"


def test_bogus_and_wrong_charsets_do_not_raise() -> None:
    raw = (
        b"From: =?x-no-such-charset?q?B=C3=B6rje?= <borje@customer.example>\r\n"
        b"Subject: =?bogus?b?w5xiZXI=?= =?utf-8?q?broken=ZZ?= x\r\n"
        b"Content-Type: text/plain; charset=\"x-klingon\"\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n"
        b"K\xc3\xb6ln and caf\xe9\r\n"
    )
    m = parse(raw)
    assert m.sender_name == "Börje"
    assert m.subject.startswith("Über")
    assert m.text.startswith("K") and "caf" in m.text  # mixed bytes: a best effort, no error
    # Declared utf-8 with one stray Latin-1 byte keeps the rest of the text.
    raw2 = (b"From: a@customer.example\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            b"gr\xc3\xbc\xc3\x9fe \xe9 \xe2\x82\xac\r\n")
    assert parse(raw2).text == "grüße \ufffd €"
    # A charset that is a bytes codec, not a text encoding.
    raw3 = b"From: a@customer.example\r\nContent-Type: text/plain; charset=base64\r\n\r\nhello\r\n"
    assert parse(raw3).text == "hello"


# --- attachments --------------------------------------------------------------------------------

def test_attachment_with_rfc2231_filename() -> None:
    m = parse(attachment_mail())
    assert m.text == "See the invoice."
    names = [a.filename for a in m.attachments]
    assert names == ["Rechnung März 2024.pdf", "data.csv"]
    pdf = m.attachments[0]
    assert pdf.content_type == "application/pdf"
    assert pdf.data == PDF
    assert hashlib.sha256(pdf.data).hexdigest() == hashlib.sha256(PDF).hexdigest()
    assert m.attachments[1].data == b"a,b\n1,2\n"
    assert m.inbox_address == "billing@example.org"


def test_literal_rfc2231_continuation_and_8bit_body() -> None:
    m = parse(literal_rfc2231_mail())
    assert [a.filename for a in m.attachments] == ["Überweisung März.pdf"]
    assert m.attachments[0].data == PDF
    assert m.subject == "Überweisung (bank transfer)"
    assert m.sender_name == "Zoë"
    assert m.text == "Beleg anbei."


def test_inline_images_are_attachments() -> None:
    m = parse(inline_image_mail())
    assert m.text == "See the screenshot."
    assert m.html is not None and "cid:shot@x" in m.html
    assert [(a.filename, a.content_type) for a in m.attachments] == [
        ("screenshot.png", "image/png"), ("attachment-2.png", "image/png")]
    assert m.attachments[0].data == PNG and m.attachments[1].data == PNG[::-1]


def test_rfc2047_filename_and_path_components() -> None:
    raw = lines(
        "From: a@customer.example\n"
        "Content-Type: multipart/mixed; boundary=zz\n\n"
        "--zz\nContent-Type: text/plain\n\nbody\n"
        "--zz\nContent-Type: image/jpeg; name=\"=?utf-8?q?F=C3=B6to_1.jpg?=\"\n"
        "Content-Transfer-Encoding: base64\n\n/9j/4AAQ\n"
        "--zz\nContent-Type: application/octet-stream\n"
        "Content-Disposition: attachment; filename=\"..\\\\..\\\\evil.exe\"\n\nMZ\n"
        "--zz\nContent-Type: application/x-unknown-thing\n\nxx\n"
        "--zz--\n"
    )
    m = parse(raw)
    assert [a.filename for a in m.attachments] == ["Föto 1.jpg", "evil.exe", "attachment-3.bin"]
    assert m.attachments[0].data == base64.b64decode("/9j/4AAQ")


def test_forwarded_message_kept_as_eml() -> None:
    m = parse(forwarded_mail())
    assert m.text == "Please look at this."
    assert [(a.filename, a.content_type) for a in m.attachments] == [
        ("forwarded.eml", "message/rfc822")]
    inner = BytesParser(policy=policy.default).parsebytes(m.attachments[0].data)
    assert inner["Subject"] == "Complaint"
    assert inner["Message-ID"] == "<inner-1@other.example>"
    assert inner.get_content().strip() == "This is unacceptable."
    # The forwarded mail's ids are not taken as this message's own.
    assert m.external_id == "fwd-1@customer.example"
    assert m.thread_refs == ()


def test_extra_inline_text_part_is_not_lost() -> None:
    raw = lines(
        "From: a@customer.example\nContent-Type: multipart/mixed; boundary=q\n\n"
        "--q\nContent-Type: text/plain\n\nbefore the image\n"
        "--q\nContent-Type: image/png\nContent-Disposition: inline\n"
        "Content-Transfer-Encoding: base64\n\niVBORw0KGgo=\n"
        "--q\nContent-Type: text/plain\n\nafter the image\n--q--\n"
    )
    m = parse(raw)
    assert m.text == "before the image"
    assert [a.filename for a in m.attachments] == ["attachment-1.png", "attachment-2.txt"]
    assert m.attachments[1].data.strip() == b"after the image"


# --- subject, addresses, threading --------------------------------------------------------------

@pytest.mark.parametrize(("subject", "clean", "token"), [
    ("Re: RE: Fwd: [FD-12] Help", "Help", 12),
    ("AW: WG: Sv: FW: Hallo   Welt", "Hallo Welt", None),
    ("Re: [fd-7]   broken\tprinter", "broken printer", 7),
    ("Re[2]: Re: Question about [FD-3001]", "Question about", 3001),
    ("Reply needed: refund", "Reply needed: refund", None),
    ("Svelte question", "Svelte question", None),
    ("[FD-x] not a token", "[FD-x] not a token", None),
    ("", "", None),
])
def test_subject_cleaning_and_token(subject: str, clean: str, token: int | None) -> None:
    msg = EmailMessage()
    msg["From"] = "a@customer.example"
    msg["Subject"] = subject
    msg.set_content("x")
    m = parse(msg.as_bytes())
    assert m.subject == clean
    assert m.subject_token == token


@pytest.mark.parametrize(("to", "rcpt_tos", "inbox", "hint"), [
    ("support+FD-42@example.org", [], "support@example.org", 42),
    ("Support+fd-3@Example.ORG", [], "support@example.org", 3),
    ("someone@else.example", ["billing+FD-9@example.org"], "billing@example.org", 9),
    ("support+newsletter@example.org", [], "support@example.org", None),
    ("other+FD-5@example.org", [], None, None),
    ("other@example.org, billing@example.org", ["support@example.org"],
     "billing@example.org", None),
])
def test_plus_address_hint_and_inbox(to: str, rcpt_tos: list[str], inbox: str | None,
                                     hint: int | None) -> None:
    msg = EmailMessage()
    msg["From"] = "a@customer.example"
    msg["To"] = to
    msg.set_content("x")
    m = parse(msg.as_bytes(), rcpt_tos=rcpt_tos)
    assert m.inbox_address == inbox
    assert m.conversation_hint == hint
    for address in rcpt_tos:
        assert address.lower() in m.recipients


def test_thread_refs_from_in_reply_to_then_references() -> None:
    raw = lines(
        "From: a@customer.example\n"
        "In-Reply-To: <reply-to-this@example.org> (Anna's message)\n"
        "References: <root@example.org>\n <middle@example.org>\n"
        "\t<reply-to-this@example.org>\n"
        "\n"
        "x\n"
    )
    assert parse(raw).thread_refs == ("reply-to-this@example.org", "root@example.org",
                                      "middle@example.org")
    raw2 = b"From: a@customer.example\nIn-Reply-To: bare@example.org\n\nx\n"
    assert parse(raw2).thread_refs == ("bare@example.org",)


def test_sender_falls_back_to_sender_header_then_envelope() -> None:
    raw = b"From: undisclosed\nSender: =?utf-8?q?B=C3=BCro?= <Office@Customer.example>\n\nx\n"
    m = parse(raw, mail_from="bounce@relay.example")
    assert (m.sender_address, m.sender_name) == ("office@customer.example", "Büro")
    m2 = parse(b"Subject: hi\n\nx\n", mail_from="<Envelope@Customer.example>")
    assert (m2.sender_address, m2.sender_name) == ("envelope@customer.example", "")


UNADDRESSED_BOUNCES = [
    (b"From: Mail Delivery System <>\n", "Mail Delivery System", "null envelope sender"),
    (b"From: MAILER-DAEMON\n", "Mail Delivery System", "null envelope sender"),
    (b"", "Mail Delivery System", "null envelope sender"),
    (b"From: \n", "Mail Delivery System", "null envelope sender"),
    (b"From: =?utf-8?q?Mail_Delivery_Subsyst=C3=A8me?= <>\n", "Mail Delivery Subsystème",
     "null envelope sender"),
]


@pytest.mark.parametrize(("from_line", "name", "reason"), UNADDRESSED_BOUNCES,
                         ids=["empty-angle", "bare-mailer-daemon", "no-from", "empty-from",
                              "encoded-name"])
def test_a_bounce_without_a_sender_address_gets_the_mail_system_as_sender(
        from_line: bytes, name: str, reason: str) -> None:
    """The null sender and a From without an address: nobody to answer, so the placeholder
    mailer-daemon@<the inbox domain the mail came to> stands in, and the mail is automated."""
    raw = (from_line + b"To: billing@example.org\nSubject: Undelivered Mail Returned to Sender\n"
           b"Message-ID: <bounce-7@mx.customer.example>\n\nThe mail could not be delivered.\n")
    m = parse(raw, mail_from="<>", rcpt_tos=["billing@example.org"])
    assert (m.sender_address, m.sender_name) == ("mailer-daemon@example.org", name)
    assert m.automated and m.automated_reason == reason
    assert m.inbox_address == "billing@example.org"
    assert m.text == "The mail could not be delivered."


def test_mail_without_any_sender_address_is_automated_from_the_placeholder() -> None:
    # Read over IMAP (no envelope): a bare MAILER-DAEMON is a robot by its name; nothing at
    # all names no reason but the missing address.
    bare = parse(b"From: MAILER-DAEMON\nSubject: Returned mail\n\nx\n")
    assert bare.sender_address == "mailer-daemon@example.org"  # the first inbox's domain
    assert bare.automated and bare.automated_reason == "sent by mailer-daemon"
    nothing = parse(b"Subject: hi\n\nx\n")
    assert (nothing.sender_address, nothing.automated_reason) == (
        "mailer-daemon@example.org", "no sender address")
    # No inbox address configured: our own mail's domain, else a domain that never resolves.
    assert parse_email(b"Subject: hi\n\nx\n", {}, [], own_domains=("example.net",)
                       ).sender_address == "mailer-daemon@example.net"
    assert parse_email(b"Subject: hi\n\nx\n", {}, []).sender_address \
        == "mailer-daemon@frontdesk.invalid"


def test_imap_mail_without_from_takes_the_return_path() -> None:
    m = parse(b"Return-Path: <Notices@Shop.example>\nSubject: hi\n\nx\n")
    assert (m.sender_address, m.automated) == ("notices@shop.example", False)


def test_an_empty_mail_is_a_parse_error() -> None:
    with pytest.raises(ParseError, match="empty"):
        parse(b"")
    with pytest.raises(ParseError, match="empty"):
        parse(b"  \r\n")


# --- the idempotency key ------------------------------------------------------------------------

def test_remote_id_is_the_message_id() -> None:
    assert remote_id_for(plain_mail()) == "plain-1@customer.example"
    assert remote_id_for(b"Message-Id:   <abc@example.org>  \n\nx") == "abc@example.org"
    folded = b"Subject: x\r\nMESSAGE-ID:\r\n  <folded.123@example.org>\r\nFrom: a@b.example\r\n\r\n"
    assert remote_id_for(folded) == "folded.123@example.org"
    # Only the header block counts: a Message-ID line in the body is not the mail's.
    assert remote_id_for(b"From: a@b.example\n\nMessage-ID: <body@x>\n").startswith("sha256-")


def test_remote_id_without_message_id_is_stable_across_relays() -> None:
    original = (
        "Return-Path: <a@customer.example>\n"
        "Received: from mx1.example by mx2.example; Mon, 23 Nov 2026 09:00:00 +0000\n"
        "From: a@customer.example\n"
        "To: support@example.org\n"
        "Subject: no id\n"
        "\n"
        "Hello,\nno message id here.\n"
    )
    resent = (
        "Received: from relay.other by mx9.example; Mon, 23 Nov 2026 09:05:00 +0000\n"
        "X-Spam-Status: No, score=0.1\n"
        "ARC-Seal: i=1; a=rsa-sha256; cv=none\n"
        "Authentication-Results: mx9.example; spf=pass\n"
        "Delivered-To: support@example.org\n"
        "Received: from mx1.example by mx2.example;\n Mon, 23 Nov 2026 09:00:00 +0000\n"
        "From: a@customer.example\n"
        "To: support@example.org\n"
        "Subject: no id\n"
        "\n"
        "Hello,\nno message id here.\n"
    ).replace("\n", "\r\n")
    first = remote_id_for(original.encode())
    assert first.startswith("sha256-") and first.endswith("@frontdesk.invalid")
    assert len(first) == len("sha256-@frontdesk.invalid") + 64
    assert remote_id_for(resent.encode()) == first
    assert remote_id_for(original.replace("no message id", "another body").encode()) != first
    assert remote_id_for(original.replace("Subject: no id", "Subject: other").encode()) != first
    # An empty Message-ID is no id either.
    assert remote_id_for(("Message-ID: <>\n" + original).encode()) == first
    assert parse(original.encode()).external_id == first


def test_remote_id_for_headers_only_and_odd_input() -> None:
    assert remote_id_for(b"Message-ID: <only@headers>") == "only@headers"
    assert remote_id_for(b"\r\nbody only").startswith("sha256-")
    assert remote_id_for(b"Message-ID: no-brackets@example.org (comment)\n\n") == (
        "no-brackets@example.org")
    long_id = b"<" + b"x" * 2000 + b"@example.org>"
    key = remote_id_for(b"Message-ID: " + long_id + b"\n\n")
    assert key.startswith("sha256-") and len(key) < 100


# --- automated mail -----------------------------------------------------------------------------

@pytest.mark.parametrize(("header", "reason_part"), [
    ("Auto-Submitted: auto-replied", "Auto-Submitted"),
    ("Auto-Submitted: auto-generated; foo=bar", "Auto-Submitted"),
    ("X-Autoreply: yes", "X-Autoreply"),
    ("X-Autorespond: vacation", "X-Autorespond"),
    ("X-Autoresponse: 1", "X-Autoresponse"),
    ("Precedence: bulk", "Precedence"),
    ("Precedence: list", "Precedence"),
    ("Precedence: junk", "Precedence"),
    ("Precedence: auto_reply", "Precedence"),
    ("X-Apple-Action: VACATION", "X-Apple-Action"),
    ("List-Id: Customers <customers.lists.example>", "List-Id"),
    ("List-Unsubscribe: <mailto:unsub@lists.example>", "List-Unsubscribe"),
    ("X-Failed-Recipients: gone@example.org", "X-Failed-Recipients"),
    ("Return-Path: <>", "null envelope sender"),
])
def test_automated_headers(header: str, reason_part: str) -> None:
    raw = f"From: a@customer.example\n{header}\nSubject: hi\n\nbody\n".encode()
    m = parse(raw)
    assert m.automated is True
    assert m.automated_reason is not None and reason_part in m.automated_reason


@pytest.mark.parametrize("mail_from", ["<>", ""])
def test_null_envelope_sender_is_automated(mail_from: str) -> None:
    m = parse(plain_mail(), mail_from=mail_from)
    assert m.automated and m.automated_reason == "null envelope sender"
    assert m.sender_address == "anna.berg@customer.example"


@pytest.mark.parametrize(("from_", "mail_from"), [
    ("MAILER-DAEMON@mx.example", "x@y.example"),
    ("Mail Delivery System <Mailer-Daemon@mx.example>", None),
    ("postmaster@customer.example", None),
    ("No Reply <no-reply@shop.example>", None),
    ("noreply@shop.example", None),
    ("do-not-reply@shop.example", None),
    ("DoNotReply@shop.example", None),
    ("anna@customer.example", "postmaster@relay.example"),
])
def test_robot_senders_are_automated(from_: str, mail_from: str | None) -> None:
    raw = f"From: {from_}\nSubject: hi\n\nbody\n".encode()
    meta = {} if mail_from is None else {"mail_from": mail_from}
    m = parse(raw, **meta)
    assert m.automated and m.automated_reason and m.automated_reason.startswith("sent by")


def test_delivery_report_is_automated() -> None:
    raw = lines(
        "From: a@customer.example\n"
        "Content-Type: multipart/report; report-type=delivery-status; boundary=r\n\n"
        "--r\nContent-Type: text/plain\n\nYour message could not be delivered.\n"
        "--r\nContent-Type: message/delivery-status\n\n"
        "Reporting-MTA: dns; mx.example\n\nFinal-Recipient: rfc822; gone@example.org\n"
        "Status: 5.1.1\n"
        "--r\nContent-Type: text/rfc822-headers\n\nSubject: original\n"
        "--r--\n"
    )
    m = parse(raw)
    assert m.automated and m.automated_reason == "report (delivery-status)"
    assert m.text == "Your message could not be delivered."
    names = [a.filename for a in m.attachments]
    assert names == ["attachment-1.txt", "attachment-2.txt"]
    assert b"Status: 5.1.1" in m.attachments[0].data


@pytest.mark.parametrize("extra", ["", "Auto-Submitted: no\n", "Precedence: first-class\n",
                                   "X-Auto-Response-Suppress: DR, RN, NRN\n",
                                   # Outlook and Exchange put it on ordinary mail too
                                   "X-Auto-Response-Suppress: All\n",
                                   "X-Auto-Response-Suppress: DR, OOF, AutoReply\n"])
def test_normal_mail_is_not_automated(extra: str) -> None:
    raw = f"From: Anna <anna@customer.example>\n{extra}Subject: help\n\nbody\n".encode()
    m = parse(raw, mail_from="anna@customer.example")
    assert m.automated is False and m.automated_reason is None


# --- malformed mail -----------------------------------------------------------------------------

def test_missing_closing_boundary() -> None:
    raw = lines(
        "From: a@customer.example\nContent-Type: multipart/mixed; boundary=\"cut\"\n\n"
        "--cut\nContent-Type: text/plain\n\nthe text\n"
        "--cut\nContent-Type: application/pdf; name=a.pdf\nContent-Transfer-Encoding: base64\n\n"
        + base64.encodebytes(PDF).decode()
    )
    m = parse(raw)
    assert m.text == "the text"
    assert m.attachments[0].filename == "a.pdf" and m.attachments[0].data == PDF


def test_boundary_that_never_appears_still_shows_the_text() -> None:
    raw = b"From: a@customer.example\nContent-Type: multipart/mixed; boundary=nope\n\nplain words\n"
    m = parse(raw)
    assert "plain words" in m.text


def test_broken_base64() -> None:
    raw = lines(
        "From: a@customer.example\nContent-Type: multipart/mixed; boundary=b\n\n"
        "--b\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n"
        "SGVsbG8gd29y\n"  # "Hello wor", then the rest lost
        "--b\nContent-Type: image/png; name=x.png\nContent-Transfer-Encoding: base64\n\n"
        "iVBORw0KGgo!!!%%%AAAA\n"
        "--b--\n"
    )
    m = parse(raw)
    assert m.text.startswith("Hello wor")
    assert m.attachments[0].filename == "x.png" and m.attachments[0].data


def test_header_line_without_colon() -> None:
    raw = lines(
        "Subject: hello\n"
        "this line is garbage\n"
        "From: Anna <anna@customer.example>\n"
        "To: support@example.org\n"
        "Content-Type: multipart/alternative; boundary=\"a\"\n"
        "\n"
        "--a\nContent-Type: text/plain\n\nreal body\n--a--\n"
    )
    m = parse(raw)
    assert m.sender_address == "anna@customer.example"
    assert m.inbox_address == "support@example.org"
    assert m.text == "real body"
    # A missing blank line before the body: the first body line is kept as text.
    m2 = parse(b"From: a@customer.example\nSubject: hi\nHello there,\nsecond line\n")
    assert m2.text.startswith("Hello there,")


def test_8bit_header_bytes() -> None:
    raw = ("From: Jürgen Groß <jg@kunde.example>\r\nSubject: Grüße, Bestellung über 5 €\r\n"
           "To: support@example.org\r\n\r\nHallo\r\n").encode()
    m = parse(raw)
    assert m.sender_name == "Jürgen Groß" and m.sender_address == "jg@kunde.example"
    assert m.subject == "Grüße, Bestellung über 5 €"
    latin = b"From: J\xfcrgen <jg@kunde.example>\r\nSubject: Gr\xfc\xdfe\r\n\r\nHallo\r\n"
    m2 = parse(latin)
    assert m2.sender_name == "Jürgen" and m2.subject == "Grüße"


def test_garbage_does_not_raise() -> None:
    samples = [
        b"From: a@customer.example\n\n\x00\xff\xfe binary \x00",
        b"From: a@customer.example\nContent-Type: multipart/mixed\n\n--\n--\n",
        b"From: a@customer.example\nContent-Type: text/plain; charset=\n\nx",
        b"From: a@customer.example\nContent-Type: ;;;=\nContent-Transfer-Encoding: x-weird\n\nx",
        b"From: a@customer.example\nContent-Type: message/rfc822\n\nnot really a message",
        (b"From: a@customer.example\nContent-Type: multipart/related; boundary=r; start=<nope>\n\n"
         b"--r\nContent-Type: text/html\n\n<p>hi</p>\n--r--\n"),
        b"From: =?utf-8?b?!!!?= <a@customer.example>\nSubject: =?utf-8?q?=\n\nx",
    ]
    for raw in samples:
        m = parse(raw)
        assert m.sender_address == "a@customer.example"
        assert "\x00" not in m.text


# --- the cheap parse agrees with policy.default -------------------------------------------------

def default_parse(raw: bytes) -> dict[str, Any]:
    """What a policy.default parse gives: get_body(('plain', 'html')) and iter_attachments,
    applied down the tree (iter_attachments itself looks one level deep)."""
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    body = msg.get_body(("plain", "html"))
    text = ""
    if body is not None:
        content = body.get_content().replace("\r\n", "\n").rstrip()
        text = content if body.get_content_subtype() == "plain" else html_to_text(content)
    html_part = msg.get_body(("html",))
    html = html_part.get_content().replace("\r\n", "\n").rstrip() if html_part else None

    def attachments_of(part: Any) -> list[Any]:
        found = list(part.iter_attachments())
        out: list[Any] = []
        for sub in part.iter_parts():
            if sub.get_content_maintype() == "multipart":
                out += attachments_of(sub)
            elif any(sub is a for a in found):
                out.append(sub)
        return out

    attachments = []
    for part in attachments_of(msg):
        if part.get_content_type() == "message/rfc822":
            data = part.get_content().as_bytes()
        else:
            data = part.get_payload(decode=True)
        attachments.append((part.get_filename(), part.get_content_type(), data))
    sender = msg["from"].addresses[0]
    return {"text": text, "html": html, "subject": utf8(str(msg["subject"] or "")),
            "attachments": attachments,
            "sender": (utf8(sender.display_name), sender.addr_spec.lower())}


def utf8(value: str) -> str:
    """policy.default leaves 8-bit header bytes as surrogate escapes; read them as UTF-8."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_cheap_parse_matches_policy_default(name: str) -> None:
    raw = CORPUS[name]()
    mine = parse(raw)
    ref = default_parse(raw)
    assert mine.text == ref["text"]
    assert mine.html == ref["html"]
    assert mine.headers.get("Subject", "") == " ".join(ref["subject"].split())
    assert (mine.sender_name, mine.sender_address) == ref["sender"]
    assert len(mine.attachments) == len(ref["attachments"])
    for got, (filename, content_type, data) in zip(mine.attachments, ref["attachments"],
                                                   strict=True):
        assert got.content_type == content_type
        if filename is not None:
            assert got.filename == filename
        if content_type == "message/rfc822":  # regenerated by two different generators
            a = BytesParser(policy=policy.default).parsebytes(got.data)
            b = BytesParser(policy=policy.default).parsebytes(data)
            assert (a["Subject"], a.get_content()) == (b["Subject"], b.get_content())
        else:
            assert got.data == data


def big_html_mail() -> bytes:
    rows = "".join(f"<tr><td>Item {i}</td><td>{i * 3} &euro;</td><td>in stock</td></tr>\n"
                   for i in range(300))
    html = f"<html><body><p>Dear team,</p><table>{rows}</table><p>Regards</p></body></html>"
    msg = EmailMessage()
    msg["From"] = "Anna <anna@customer.example>"
    msg["To"] = "support@example.org"
    msg["Subject"] = "Big order"
    msg["Message-ID"] = "<big@customer.example>"
    msg.set_content(html_to_text(html))
    msg.add_alternative(html, subtype="html")
    msg.add_attachment(PDF, maintype="application", subtype="pdf", filename="order.pdf")
    return msg.as_bytes(policy=policy.SMTP)


def test_big_mail_matches_policy_default() -> None:
    raw = big_html_mail()
    assert 20_000 < len(raw) < 60_000
    mine = parse(raw)
    ref = default_parse(raw)
    assert mine.text == ref["text"] and mine.html == ref["html"]
    assert [(a.filename, a.data) for a in mine.attachments] == [("order.pdf", PDF)]
