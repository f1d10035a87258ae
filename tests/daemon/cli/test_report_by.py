"""``frontdesk report --by channel|tag|agent`` (and ``--channel``, ``--tag``): the JSON shape, a
conversation with two tags counted in both groups, the groups without a key, the text and CSV
tables, and ``GET /api/v1/report?by=tag``. SQLite and (when named) PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp

from frontdesk.daemon.api.tokens import create_token
from frontdesk.domain.report import GROUPINGS
from frontdesk.storage.clock import utcnow
from frontdesk.storage.db import Store
from tests.support.helpers import run_cli
from tests.support.seed_figures import Seed, seed


def seeds() -> list[Seed]:
    now = utcnow()
    return [
        Seed(now - timedelta(days=6), "email", ["refund", "shipping"], timedelta(minutes=30), 5,
             "resolved", assignee="Grace"),
        Seed(now - timedelta(days=5), "sms", ["refund"], timedelta(hours=2), 2, "resolved",
             assignee="Grace", escalations=1),
        Seed(now - timedelta(days=4), "email", ["shipping"], timedelta(minutes=10)),
        Seed(now - timedelta(days=3), "web", ["refund"], None, assignee="Alan"),
        Seed(now - timedelta(days=2), "email", [], timedelta(minutes=5)),
        Seed(now - timedelta(days=40), "email", ["refund"], timedelta(minutes=5)),  # too old
    ]


async def store_with_seeds(make_settings: Any, database_url: str, tmp_path: Path) -> str:
    settings = make_settings(database_url=database_url)
    store = Store.from_settings(settings.database)
    try:
        await store.ensure_schema()
        await seed(store, seeds())
    finally:
        await store.dispose()
    config = tmp_path / "frontdesk.toml"
    config.write_text(f'[database]\nurl = "{database_url}"\n[daemon]\n'
                      f'data_dir = "{tmp_path}/data"\n')
    return str(config)


async def report(capsys: Any, config: str, *args: str) -> Any:
    code, out, err = await run_cli(capsys, "report", "-c", config, "--since", "30d", *args)
    assert code == 0, err
    return json.loads(out) if "--json" in args else out


async def test_by_tag_json(make_settings: Any, database_url: str, tmp_path: Path,
                           capsys: Any) -> None:
    config = await store_with_seeds(make_settings, database_url, tmp_path)
    plain = await report(capsys, config, "--json")
    by_tag = await report(capsys, config, "--by", "tag", "--json")
    assert set(by_tag) == {"since", "until", "by", "overall", "groups"}
    assert by_tag["by"] == "tag" and by_tag["overall"] == plain["overall"]
    assert [g["key"] for g in by_tag["groups"]] == ["refund", "shipping", None]
    groups = {g["key"]: g for g in by_tag["groups"]}
    figures = set(plain["overall"])
    assert all(set(g) == figures | {"key"} for g in by_tag["groups"])
    # the conversation tagged refund and shipping counts in both
    assert groups["refund"]["conversations"] == 3 and groups["shipping"]["conversations"] == 2
    assert groups[None]["conversations"] == 1
    assert sum(g["conversations"] for g in by_tag["groups"]) == \
        plain["overall"]["conversations"] + 1 == 6
    assert groups["refund"]["messages_in"] == 3 and groups["refund"]["messages_out"] == 2
    assert groups["shipping"]["first_response_seconds_median"] == (1800 + 600) / 2
    assert (groups["refund"]["ratings"], groups["refund"]["csat_average"]) == (2, 3.5)
    assert groups["refund"]["escalations"] == 1 and groups["shipping"]["escalations"] == 0

    only = await report(capsys, config, "--tag", "refund", "--json")
    assert only["filters"] == {"tag": "refund"}
    assert only["overall"] == {k: v for k, v in groups["refund"].items() if k != "key"}
    assert set(only["channels"]) == {"email", "sms", "web"}


async def test_by_agent_and_by_channel(make_settings: Any, database_url: str, tmp_path: Path,
                                       capsys: Any) -> None:
    config = await store_with_seeds(make_settings, database_url, tmp_path)
    plain = await report(capsys, config, "--json")
    by_agent = await report(capsys, config, "--by", "agent", "--json")
    assert [(g["key"], g["conversations"]) for g in by_agent["groups"]] == \
        [("Grace", 2), ("Alan", 1), (None, 2)]
    by_channel = await report(capsys, config, "--by", "channel", "--json")
    assert {g["key"]: {k: v for k, v in g.items() if k != "key"}
            for g in by_channel["groups"]} == plain["channels"]
    on_email = await report(capsys, config, "--by", "tag", "--channel", "email", "--json")
    assert on_email["overall"] == plain["channels"]["email"]
    assert [(g["key"], g["conversations"]) for g in on_email["groups"]] == \
        [("shipping", 2), ("refund", 1), (None, 1)]


async def test_text_and_csv(make_settings: Any, database_url: str, tmp_path: Path,
                            capsys: Any) -> None:
    config = await store_with_seeds(make_settings, database_url, tmp_path)
    text = await report(capsys, config, "--by", "agent")
    lines = text.splitlines()
    assert lines[0].endswith(" by agent") and "median 1st" in lines[1]
    assert [line.split()[0] for line in lines[2:]] == ["Grace", "Alan", "(nobody)", "overall"]
    assert lines[2].split()[1] == "2"
    tags = await report(capsys, config, "--by", "tag")
    assert [line.split()[0] for line in tags.splitlines()[2:]] == \
        ["refund", "shipping", "(no", "overall"]
    rows = list(csv.DictReader(io.StringIO(await report(capsys, config, "--by", "tag",
                                                        "--csv"))))
    assert [(r["scope"], r["conversations"]) for r in rows] == \
        [("refund", "3"), ("shipping", "2"), ("(no tag)", "1"), ("overall", "5")]
    code, _, err = await run_cli(capsys, "report", "-c", config, "--by", "colour")
    assert code == 2 and "--by" in err
    assert GROUPINGS == ("channel", "tag", "agent")


async def test_the_api_takes_by(make_settings: Any, daemon_factory: Any) -> None:
    d = await daemon_factory(make_settings(api={"enabled": True}))
    await seed(d.store, seeds())
    async with d.store.session() as s:
        token = await create_token(s, "reports", "read", actor="test", now=utcnow())
    base = f"http://127.0.0.1:{d.http.port}/api/v1/report"
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(f"{base}?since=30d&by=tag") as r:
            assert r.status == 200
            body = await r.json()
        async with http.get(f"{base}?since=30d&by=agent&tag=refund") as r:
            narrowed = await r.json()
        async with http.get(f"{base}?by=mood") as r:
            assert r.status == 422
    assert body["by"] == "tag" and "channels" not in body
    assert [(g["key"], g["conversations"]) for g in body["groups"]] == \
        [("refund", 3), ("shipping", 2), (None, 1)]
    assert narrowed["filters"] == {"tag": "refund"}
    assert [(g["key"], g["conversations"]) for g in narrowed["groups"]] == \
        [("Grace", 2), ("Alan", 1)]
