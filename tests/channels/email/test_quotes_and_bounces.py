"""The pure parts of email in depth: a reply's new part, bounce reports, IMAP wire helpers."""

from __future__ import annotations

from typing import Any

import pytest

from frontdesk.channels.email.dsn import status_words
from frontdesk.channels.email.imap import imap_utf7, parse_fetch, parse_search, uid_set
from frontdesk.channels.email.parse import parse_email
from frontdesk.channels.email.quotes import QUOTE_FOLD, display_text, folded, new_part


def parse(raw: str, **meta: Any) -> Any:
    return parse_email(raw.replace("\n", "\r\n").encode(), meta, ["support@example.com"],
                       own_domains=("example.com",), reply_languages=("en", "de"))


# --- quoted replies -------------------------------------------------------------------------------

def test_the_new_part_of_a_reply_above_the_quote() -> None:
    text = ("Thanks, that works now.\n  - the indented line stays as written\n\n"
            "On Mon, 23 Nov 2026 at 10:00, Support <support@example.com> wrote:\n"
            "> We are on it.\n>\n> > Hello, where is my order?\n")
    assert new_part(text) == "Thanks, that works now.\n  - the indented line stays as written"


@pytest.mark.parametrize(("text", "new"), [
    ("Danke!\n\nAm 23.11.2026 um 10:00 schrieb Support <support@example.com>:\n> Wir sind dran.",
     "Danke!"),
    ("Yes, please.\n\n-----Original Message-----\nFrom: Support <support@example.com>\n"
     "Sent: Monday, November 23, 2026 10:00\nTo: Ada\nSubject: RE: Order\n\nWe are on it.",
     "Yes, please."),
    ("Sounds good.\n\nFrom: Support <support@example.com>\nSent: Monday\nTo: Ada\n"
     "Subject: Re: Order\n\nWe are on it.", "Sounds good."),
    ("Yes please.\n\n> quoted without any header\n> second line\n", "Yes please."),
])
def test_quote_headers_of_common_mail_clients(text: str, new: str) -> None:
    assert new_part(text, ("en", "de")) == new


@pytest.mark.parametrize("text", [
    "Just a new message\nwith two lines.",
    "> I quote you first\n\nand answer below the quote.",
    "",
])
def test_no_quote_to_fold(text: str) -> None:
    assert new_part(text) is None


def test_a_very_long_new_part_is_kept_whole() -> None:
    text = "word " * 5000 + "\n\nOn Mon, Support <support@example.com> wrote:\n> old"
    assert new_part(text) is None


def test_folded_shows_the_new_part_and_a_marker() -> None:
    assert folded("New\n\n> old", "New") == f"New\n\n{QUOTE_FOLD}"
    assert folded("All new", None) == "All new"
    assert display_text({"text": "New\n\n> old", "text_new": "New"}).endswith(QUOTE_FOLD)


def test_parse_email_fills_the_new_part_also_for_html_only_mail() -> None:
    m = parse(
        "From: Ada <ada@example.org>\nTo: support@example.com\nSubject: Re: Order\n"
        "Message-ID: <h1@example.org>\nMIME-Version: 1.0\n"
        "Content-Type: text/html; charset=utf-8\n\n"
        "<html><body><div>Thanks, it arrived!</div><br><div class=\"gmail_quote\">"
        "<div>On Mon, 23 Nov 2026 at 10:00, Support &lt;support@example.com&gt; wrote:</div>"
        "<blockquote>We are on it.</blockquote></div></body></html>\n")
    assert "We are on it." in m.text
    assert m.text_new == "Thanks, it arrived!"


# --- bounces --------------------------------------------------------------------------------------

def _report(parts: str, sender: str = "MAILER-DAEMON@mx.example.org") -> str:
    return (f"From: {sender}\nTo: support@example.com\nSubject: Delivery Status Notification\n"
            "Message-ID: <r1@mx.example.org>\nMIME-Version: 1.0\n"
            "Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n"
            "--b\nContent-Type: text/plain\n\nDelivery failed.\n" + parts + "--b--\n")


def test_a_dsn_with_the_returned_message_names_it() -> None:
    m = parse(_report(
        "--b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.org\n\n"
        "Final-Recipient: rfc822; ada@example.org\nAction: failed\nStatus: 5.2.2\n"
        "Diagnostic-Code: smtp; 552 5.2.2 Mailbox full\n\n"
        "--b\nContent-Type: message/rfc822\n\nFrom: support@example.com\nTo: ada@example.org\n"
        "Subject: Re: Order\nMessage-ID: <ours-1.frontdesk@example.com>\n\nWe are on it.\n"),
        mail_from="")
    report = m.delivery_report
    assert report is not None and report.failed
    assert report.original_ids == ("ours-1.frontdesk@example.com",)
    assert report.recipients == ("ada@example.org",)
    assert report.reason == ("the mail to ada@example.org could not be delivered: the "
                             "recipient's mailbox is full (552 5.2.2 Mailbox full)")
    assert "ours-1.frontdesk@example.com" in m.thread_refs  # it lands in that conversation
    assert m.automated


def test_an_original_message_id_field_and_a_success_notice() -> None:
    delivered = parse(_report(
        "--b\nContent-Type: message/delivery-status\n\n"
        "Original-Message-ID: <ours-2@example.com>\n\n"
        "Final-Recipient: rfc822; ada@example.org\nAction: delivered\nStatus: 2.0.0\n\n"))
    assert delivered.delivery_report is None  # delivered: nothing went wrong
    failed = parse(_report(
        "--b\nContent-Type: message/delivery-status\n\n"
        "Original-Message-ID: <ours-2@example.com>\n\n"
        "Final-Recipient: rfc822; ada@example.org\nStatus: 5.1.2\n\n"))
    assert failed.delivery_report is not None
    assert failed.delivery_report.original_ids == ("ours-2@example.com",)
    assert "domain does not exist" in failed.delivery_report.reason


def test_an_auto_reply_with_the_null_sender_is_not_a_bounce() -> None:
    m = parse("From: Ada <ada@example.org>\nTo: support@example.com\n"
              "Subject: Automatic reply: Undeliverable? No, on holiday\n"
              "Auto-Submitted: auto-replied\nIn-Reply-To: <ours-3@example.com>\n"
              "Message-ID: <ooo@example.org>\n\nI am away.\n", mail_from="")
    assert m.automated and m.delivery_report is None


def test_a_person_mentioning_a_failure_is_not_a_bounce() -> None:
    m = parse("From: Ada <ada@example.org>\nTo: support@example.com\n"
              "Subject: Delivery failed?\nIn-Reply-To: <ours-4@example.com>\n"
              "Message-ID: <p1@example.org>\n\nMy parcel delivery failed, can you help?\n")
    assert not m.automated and m.delivery_report is None


def test_status_words() -> None:
    assert status_words("5.1.1") == "the address does not exist"
    assert status_words("smtp; 550 5.7.1 blocked") is not None
    assert status_words("4.4.7") == "delivery took too long and was given up"
    assert status_words("nonsense") is None


# --- IMAP wire helpers ---------------------------------------------------------------------------

def test_uid_sets_and_folder_names() -> None:
    assert uid_set([1, 2, 3, 7, 9, 10]) == "1:3,7,9:10"
    assert uid_set([5]) == "5"
    assert imap_utf7("Über & Co") == "&ANw-ber &- Co"
    assert imap_utf7("INBOX") == "INBOX"


def test_fetch_and_search_answers() -> None:
    lines = [b"1 FETCH (BODY[] {5}", bytearray(b"Hello"), b" UID 7)",
             b"2 FETCH (FLAGS (\\Seen))",  # an unsolicited flag update
             b"3 FETCH (UID 9 RFC822.SIZE 120)", b"Fetch completed."]
    records = parse_fetch(lines)
    assert [(r.uid, r.size, r.body) for r in records] == [
        (7, None, b"Hello"), (None, None, None), (9, 120, None)]
    assert parse_search([b"4 5 6", b"Search completed."]) == [4, 5, 6]
    assert parse_search([b"", b"Search completed."]) == []
