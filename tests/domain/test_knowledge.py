"""What the team learns, from the command line and the store (issue 19): resolution notes,
conversation tags (by hand and by ``[[tag_rules]]``), ``tag:`` in search, saved replies kept in
the store beside the config file's. SQLite and (when named) PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from frontdesk.daemon.cli.main import main
from frontdesk.daemon.process.app import Daemon
from frontdesk.domain.search import search_conversations
from tests.support.helpers import conversations, eventually, mail, processed, send

MAILS = [
    ("ada@example.org", "support@example.com", "Refund please",
     "I returned the broken kettle, I want my refund."),
    ("bob@example.net", "billing@example.com", "Invoice copy", "Please send the invoice again."),
    ("cy@example.net", "support@example.com", "Kettle leaks", "My new kettle leaks water."),
]
TAG_RULES = [
    {"tags": ["refund"], "keywords": ["refund", "money back"]},
    {"tags": ["billing"], "inbox_addresses": ["billing@example.com"]},
    {"tags": ["kettle", "product:kettle"], "keywords": ["kettle"],
     "customer_channels": ["email"]},
    {"tags": ["sms"], "customer_channels": ["sms"]},  # matches none of these mails
]


def _config(tmp_path: Path, database_url: str, extra: str = "") -> str:
    path = tmp_path / "frontdesk.toml"
    path.write_text(f'[database]\nurl = "{database_url}"\n\n[daemon]\n'
                    f'data_dir = "{tmp_path / "data"}"\n\n[saved_replies]\n'
                    'hello = "Hello {first_name}!"\n' + extra)
    return str(path)


def _store_mails(make_settings: Any, database_url: str) -> None:
    async def run() -> None:
        d = Daemon(make_settings(database_url=database_url, tag_rules=TAG_RULES,
                                 email={"inbox_addresses": ["support@example.com",
                                                            "billing@example.com"]}))
        await d.start()
        try:
            for i, (sender, to, subject, body) in enumerate(MAILS):
                await send(d.email.smtp.port, mail(frm=sender, to=to, subject=subject,
                                                   body=body, msgid=f"<k{i}@example.org>"),
                           sender=sender, rcpt=[to])
            await eventually(lambda: _all(d))
            async with d.store.reader() as s:
                tagged = await search_conversations(s, "tag:kettle")
                both = await search_conversations(s, "tag:kettle leaks")
                none = await search_conversations(s, "tag:billing kettle")
            assert [h.reference for h in tagged] == ["FD-3", "FD-1"]  # newest first
            assert [h.reference for h in both] == ["FD-3"]
            assert none == []
        finally:
            await d.stop()

    asyncio.run(run())


async def _all(d: Any) -> bool:
    return await processed(d.store) and len(await conversations(d.store)) >= len(MAILS)


def _show(config: str, ref: str, capsys: Any) -> dict[str, Any]:
    assert main(["show", ref, "--json", "-c", config]) == 0
    return dict(json.loads(capsys.readouterr().out))


def test_tag_rules_tags_and_resolution_notes_on_the_command_line(
        database_url: str, make_settings: Any, tmp_path: Path, capsys: Any) -> None:
    _store_mails(make_settings, database_url)
    config = _config(tmp_path, database_url)
    assert _show(config, "FD-1", capsys)["tags"] == ["kettle", "product:kettle", "refund"]
    assert _show(config, "FD-2", capsys)["tags"] == ["billing"]

    assert main(["tag", "FD-2", "vat", "urgent-ish", "--as", "grace", "-c", config]) == 0
    assert capsys.readouterr().out.strip() == "FD-2 tags: billing urgent-ish vat"
    assert main(["tag", "FD-2", "urgent-ish", "--remove", "-c", config]) == 0
    assert capsys.readouterr().out.strip() == "FD-2 tags: billing vat"
    assert main(["tag", "FD-2", "vat", "-c", config]) == 0
    assert capsys.readouterr().out.strip() == "FD-2 tags (unchanged): billing vat"
    for bad in ("Refund", "two words", "x" * 51, "é", ""):
        assert main(["tag", "FD-2", bad, "-c", config]) == 1
        assert "is not a tag" in capsys.readouterr().err
    assert main(["tag", "FD-99", "vat", "-c", config]) == 1
    assert "no conversation FD-99" in capsys.readouterr().err
    assert _show(config, "FD-2", capsys)["tags"] == ["billing", "vat"]

    assert main(["resolve", "FD-2", "--note", "Re-sent the invoice\nwith the VAT number",
                 "--as", "grace", "-c", config]) == 0
    assert capsys.readouterr().out.strip() == "FD-2 resolved (resolution note kept)"
    shown = _show(config, "FD-2", capsys)
    assert shown["status"] == "resolved"
    assert shown["resolution_note"] == "Re-sent the invoice\nwith the VAT number"
    assert main(["show", "FD-2", "-c", config]) == 0
    text = capsys.readouterr().out
    assert "  tags billing vat\n" in text
    assert "  resolution note: Re-sent the invoice\n    with the VAT number\n" in text
    assert _show(config, "FD-3", capsys)["resolution_note"] is None

    assert main(["conversations", "--json", "-c", config]) == 0
    listed = {c["reference"]: c for c in json.loads(capsys.readouterr().out)}
    assert listed["FD-2"]["tags"] == ["billing", "vat"]
    assert listed["FD-2"]["resolution_note"] == "Re-sent the invoice\nwith the VAT number"

    # similar --json (CONTRACT.md): resolved conversations only, best first, with their notes
    assert main(["resolve", "FD-3", "--note", "Sent a new kettle", "-c", config]) == 0
    capsys.readouterr()
    assert main(["similar", "FD-1", "--json", "-c", config]) == 0
    similar = json.loads(capsys.readouterr().out)
    assert [h["reference"] for h in similar][:1] == ["FD-3"]
    assert set(similar[0]) == {"reference", "subject", "status", "resolution_note", "score"}
    assert similar[0]["status"] == "resolved"
    assert similar[0]["resolution_note"] == "Sent a new kettle"
    assert all(h["reference"] != "FD-1" for h in similar)

    assert main(["search", "tag:vat", "--json", "-c", config]) == 0
    assert [h["reference"] for h in json.loads(capsys.readouterr().out)] == ["FD-2"]
    assert main(["search", "tag:BAD!", "-c", config]) == 1
    assert "tag:" in capsys.readouterr().err


def test_saved_replies_kept_in_the_store(database_url: str, make_settings: Any, tmp_path: Path,
                                         capsys: Any) -> None:
    config = _config(tmp_path, database_url)
    assert main(["db", "upgrade", "-c", config]) == 0
    capsys.readouterr()
    assert main(["saved-reply", "add", "tracking", "Hi {first_name},", "the link is in the mail.",
                 "--as", "grace", "-c", config]) == 0
    assert capsys.readouterr().out.strip() == "saved reply tracking saved"
    assert main(["saved-reply", "add", "Tracking", "Hi {first_name}, see the mail.",
                 "-c", config]) == 0
    assert capsys.readouterr().out.strip() == "saved reply tracking replaced"
    assert main(["saved-reply", "list", "--json", "-c", config]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"name": "hello", "text": "Hello {first_name}!", "source": "config"},
        {"name": "tracking", "text": "Hi {first_name}, see the mail.", "source": "store"}]
    assert main(["saved-reply", "list", "-c", config]) == 0
    assert "tracking  (store)\n    Hi {first_name}, see the mail." in capsys.readouterr().out
    assert main(["saved-reply", "add", "bad name!", "text", "-c", config]) == 1
    assert "is not a saved reply's name" in capsys.readouterr().err
    assert main(["saved-reply", "remove", "hello", "-c", config]) == 1
    assert "config file" in capsys.readouterr().err
    assert main(["saved-reply", "remove", "tracking", "-c", config]) == 0
    assert main(["saved-reply", "remove", "tracking", "-c", config]) == 1
    assert "no saved reply called 'tracking'" in capsys.readouterr().err
    assert main(["saved-reply", "list", "--json", "-c", config]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == ["hello"]


def test_a_tag_rule_needs_a_condition_and_good_tags(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "frontdesk.toml"
    path.write_text('[[tag_rules]]\ntags = ["refund"]\n')
    assert main(["check", "-c", str(path)]) == 1
    assert "a tag rule needs at least one of" in capsys.readouterr().err
    path.write_text('[[tag_rules]]\ntags = ["Refund"]\nkeywords = ["refund"]\n')
    assert main(["check", "-c", str(path)]) == 1
    assert "is not a tag" in capsys.readouterr().err
