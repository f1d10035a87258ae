"""The dashboard's HTML: the sign-in page and the page of figures.

Plain server-rendered HTML with one inline stylesheet (allowed by its CSP nonce) and no script.
Every value that reaches the page is escaped here (``html.escape``): channel and tag names come
from customers and staff, and the token's name from whoever made it.

Stable hooks for tests and for anyone styling or scraping the page: each chart's container has
``data-chart`` (``conversations-per-day``, ``first-response``, ``sla-met``, ``csat``, ``tags``,
``backlog``), each table row ``data-row`` (its day, week, tag or bucket) and each cell
``data-column``; the summary numbers have ``data-figure`` (the ``report --json`` key) and
``data-value`` (the exact JSON value, ``null`` when there is none).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from html import escape
from typing import Any
from zoneinfo import ZoneInfo

from frontdesk.daemon.dashboard.charts import Series, bars, colour, hbars, lines, sparkline

PERIODS = ("7d", "14d", "30d", "90d", "180d", "365d")
"""The period choices the form offers (any duration works in the query string)."""

SUMMARY = (
    ("conversations", "conversations"),
    ("messages_in", "messages in"),
    ("messages_out", "messages out"),
    ("open", "still open"),
    ("resolved", "resolved"),
    ("first_response_seconds_median", "first response, median"),
    ("first_response_seconds_p90", "first response, p90"),
    ("sla_met_share", "SLA met"),
    ("csat_average", "CSAT (1–5)"),
    ("ratings", "ratings"),
    ("escalations", "escalations"),
)
"""The summary's figures: the ``report --json`` key and its label."""

STATUS_COLOURS = {"open": "#2563eb", "pending": "#f59e0b", "snoozed": "#94a3b8"}


@dataclass(frozen=True)
class View:
    """What the page shows: the period (as written, ``"30d"``) and the filters."""

    since: str = "30d"
    channel: str | None = None
    tag: str | None = None

    def query(self) -> dict[str, str]:
        out = {"since": self.since}
        if self.channel:
            out["channel"] = self.channel
        if self.tag:
            out["tag"] = self.tag
        return out


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def duration(seconds: float | None) -> str:
    """``"45s"``, ``"12m"``, ``"1h05m"``, ``"2d3h"``; ``"–"`` for None."""
    if seconds is None:
        return "–"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m" if s % 60 == 0 or s >= 600 else f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


def share(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.0f}%"


def _shown(key: str, value: Any) -> str:
    if value is None:
        return "–"
    if key.endswith("_seconds_median") or key.endswith("_seconds_p90"):
        return duration(value)
    if key.endswith("_share"):
        return share(value)
    if key == "csat_average":
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return str(value)


def _day_label(day: str) -> str:
    d = date.fromisoformat(day)
    return f"{d.day} {d:%b}"


def _local(at: str | None, tz: ZoneInfo) -> str:
    if at is None:
        return ""
    return datetime.fromisoformat(at.replace("Z", "+00:00")).astimezone(tz).strftime(
        "%d %b %Y %H:%M")


CSS = """
:root { color-scheme: light; --ink: #0f172a; --soft: #475569; --line: #e2e8f0; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
       color: var(--ink); background: #f8fafc; }
header { display: flex; align-items: center; justify-content: space-between; gap: 1rem;
         padding: .8rem 1.5rem; background: #0f172a; color: #f8fafc; }
header h1 { font-size: 1.1rem; margin: 0; }
header form { display: inline; }
header .who { font-size: .9rem; }
main { padding: 1rem 1.5rem 3rem; max-width: 1500px; margin: 0 auto; }
button { font: inherit; padding: .3rem .8rem; border-radius: 6px; border: 1px solid #94a3b8;
         background: #fff; color: var(--ink); cursor: pointer; }
header button { background: transparent; color: #f8fafc; border-color: #64748b; }
form.filters { display: flex; flex-wrap: wrap; gap: .8rem; align-items: end; margin: 0 0 .5rem; }
form.filters label { display: flex; flex-direction: column; font-size: .8rem; color: var(--soft); }
select, input { font: inherit; padding: .25rem .4rem; border: 1px solid #94a3b8;
                border-radius: 6px; min-width: 9rem; }
.period { color: var(--soft); margin: .2rem 0 1rem; }
.summary { display: grid; grid-template-columns: repeat(auto-fill, minmax(130px, 1fr));
           gap: .6rem; margin-bottom: 1.2rem; }
.figure { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: .6rem; }
.figure .value { display: block; font-size: 1.5rem; font-weight: 600; }
.figure .label { color: var(--soft); font-size: .8rem; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(560px, 1fr)); gap: 1rem; }
section.chart { background: #fff; border: 1px solid var(--line); border-radius: 8px;
                padding: .8rem 1rem; min-width: 0; }
section.chart h2 { font-size: 1rem; margin: 0 0 .2rem; }
section.chart p.note { color: var(--soft); font-size: .8rem; margin: 0 0 .4rem; }
svg.chart { display: block; height: auto; }
svg text { font: 11px system-ui, sans-serif; fill: #475569; }
svg text.empty { font-size: 13px; fill: #94a3b8; }
.legend { display: flex; flex-wrap: wrap; gap: .8rem; margin: .2rem 0; padding: 0;
          list-style: none; font-size: .8rem; }
.legend svg { vertical-align: middle; margin-right: .25rem; }
.table { max-height: 220px; overflow: auto; border-top: 1px solid var(--line); margin-top: .4rem; }
table { border-collapse: collapse; width: 100%; font-size: .8rem;
        font-variant-numeric: tabular-nums; }
caption { text-align: left; color: var(--soft); padding: .3rem 0; }
th, td { padding: .15rem .5rem; border-bottom: 1px solid var(--line); text-align: right;
         white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead th { position: sticky; top: 0; background: #fff; }
.signin { max-width: 420px; margin: 12vh auto; background: #fff; padding: 1.5rem;
          border: 1px solid var(--line); border-radius: 10px; }
.signin input { width: 100%; margin: .4rem 0 .8rem; }
.error { color: #b91c1c; }
"""


def _document(title: str, body: str, nonce: str) -> str:
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<meta name=\"robots\" content=\"noindex\">"
            f"<title>{_e(title)}</title><style nonce=\"{_e(nonce)}\">{CSS}</style></head>"
            f"<body>{body}</body></html>\n")


def sign_in_page(*, nonce: str, error: str | None = None, next_query: str = "") -> str:
    """The sign-in form (POST ``/dashboard/sign-in``), with an error line when one is given."""
    problem = f'<p class="error" data-error>{_e(error)}</p>' if error else ""
    body = f"""<main><form class="signin" method="post" action="/dashboard/sign-in"
 data-form="sign-in"><h1>frontdesk dashboard</h1>
<p>Sign in with an API token (<code>frontdesk token create NAME</code>; any scope).</p>{problem}
<label for="token">Token</label>
<input id="token" name="token" type="password" autocomplete="off" required
 placeholder="fdt_…" spellcheck="false">
<input type="hidden" name="next" value="{_e(next_query)}">
<button type="submit">Sign in</button></form></main>"""
    return _document("Sign in · frontdesk dashboard", body, nonce)


def message_page(*, nonce: str, title: str, text: str) -> str:
    body = (f'<main><div class="signin"><h1>{_e(title)}</h1><p>{_e(text)}</p>'
            '<p><a href="/dashboard">Back to the dashboard</a></p></div></main>')
    return _document(f"{title} · frontdesk dashboard", body, nonce)


def _table(rows: Sequence[tuple[str, Sequence[tuple[str, str, Any]]]], head: Sequence[str],
           caption: str, drawn: dict[str, str] | None = None) -> str:
    """``rows``: (row key, [(column key, shown text, exact value)]); the first cell is the key.
    ``drawn``: an SVG (made by :mod:`.charts`, escaped there) to end a row with, by row key."""
    out = [f'<div class="table"><table><caption>{_e(caption)}</caption><thead><tr>']
    out += [f'<th scope="col">{_e(h)}</th>' for h in head]
    out.append("</tr></thead><tbody>")
    for key, cells in rows:
        out.append(f'<tr data-row="{_e(key)}">')
        for i, (column, text, value) in enumerate(cells):
            tag = "th" if i == 0 else "td"
            scope = ' scope="row"' if i == 0 else ""
            exact = "" if value is _NO_VALUE else f' data-value="{_e(json.dumps(value))}"'
            out.append(f'<{tag}{scope} data-column="{_e(column)}"{exact}>{_e(text)}</{tag}>')
        if drawn is not None:
            out.append(f'<td data-column="trend">{drawn.get(key, "")}</td>')
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


_NO_VALUE = object()


def _legend(series: Sequence[Series]) -> str:
    items = "".join(
        f'<li><svg width="10" height="10" aria-hidden="true"><rect width="10" height="10" '
        f'fill="{_e(s.color)}"/></svg>{_e(s.name)}</li>' for s in series)
    return f'<ul class="legend">{items}</ul>'


def _section(chart: str, title: str, note: str, body: str) -> str:
    return (f'<section class="chart" data-chart="{_e(chart)}"><h2>{_e(title)}</h2>'
            f'<p class="note">{_e(note)}</p>{body}</section>')


def _per_day(data: dict[str, Any]) -> str:
    channels: list[str] = data["channels"]
    days = data["days"]
    series = [Series(ch, [d["channels"][ch] for d in days], colour(i))
              for i, ch in enumerate(channels)]
    svg = bars("Conversations per day by channel", [_day_label(d["day"]) for d in days], series,
               whole=True)
    rows = [(d["day"], [("day", d["day"], _NO_VALUE),
                        *((ch, str(d["channels"][ch]), d["channels"][ch]) for ch in channels),
                        ("total", str(d["total"]), d["total"])]) for d in days]
    table = _table(rows, ["Day", *channels, "Total"], "Conversations that began each day")
    return _section("conversations-per-day", "Conversations per day",
                    "By the channel each began on.", _legend(series) + svg + table)


def _seconds_unit(values: Sequence[float | None]) -> tuple[float, str]:
    biggest = max((v for v in values if v is not None), default=0)
    if biggest >= 2 * 86400:
        return 86400, "d"
    if biggest >= 2 * 3600:
        return 3600, "h"
    return 60, "min"


def _first_response(data: dict[str, Any]) -> str:
    weeks = data["weeks"]
    medians = [w["first_response_seconds_median"] for w in weeks]
    p90s = [w["first_response_seconds_p90"] for w in weeks]
    size, unit = _seconds_unit(p90s + medians)
    series = [Series("median", [None if v is None else v / size for v in medians], colour(0)),
              Series("p90", [None if v is None else v / size for v in p90s], colour(3))]
    svg = lines("First-response time per week (business time)",
                [_day_label(w["week"]) for w in weeks], series, fmt=lambda v: f"{v:g} {unit}")
    rows = [(w["week"], [("week", w["week"], _NO_VALUE),
                         ("answered", str(w["answered"]), w["answered"]),
                         ("median", duration(w["first_response_seconds_median"]),
                          w["first_response_seconds_median"]),
                         ("p90", duration(w["first_response_seconds_p90"]),
                          w["first_response_seconds_p90"])]) for w in weeks]
    table = _table(rows, ["Week of", "Answered", "Median", "p90"],
                   "First-response time of the conversations that began each week")
    return _section("first-response", "First-response time",
                    "Median and 90th percentile per week, in business time.",
                    _legend(series) + svg + table)


def _sla(data: dict[str, Any]) -> str:
    weeks = data["weeks"]
    series = [Series("SLA met", [None if w["sla_met_share"] is None else w["sla_met_share"] * 100
                                 for w in weeks], colour(2))]
    svg = bars("Share of first responses within the SLA per week",
               [_day_label(w["week"]) for w in weeks], series, fmt=lambda v: f"{v:g}%", top=100)
    rows = [(w["week"], [("week", w["week"], _NO_VALUE),
                         ("met", str(w["sla_met"]), w["sla_met"]),
                         ("breached", str(w["sla_breached"]), w["sla_breached"]),
                         ("share", share(w["sla_met_share"]), w["sla_met_share"])])
            for w in weeks]
    table = _table(rows, ["Week of", "Met", "Breached", "Share met"],
                   "First responses within the SLA, by the week the conversation began")
    return _section("sla-met", "SLA met", "Share of conversations answered in time per week.",
                    svg + table)


def _csat(data: dict[str, Any]) -> str:
    weeks = data["weeks"]
    series = [Series("CSAT", [w["csat_average"] for w in weeks], colour(1))]
    svg = bars("Average rating (1–5) per week", [_day_label(w["week"]) for w in weeks], series,
               fmt=lambda v: f"{v:g}", top=5)
    rows = [(w["week"], [("week", w["week"], _NO_VALUE),
                         ("ratings", str(w["ratings"]), w["ratings"]),
                         ("average", _shown("csat_average", w["csat_average"]),
                          w["csat_average"]),
                         ("satisfied", share(w["csat_satisfied_share"]),
                          w["csat_satisfied_share"])]) for w in weeks]
    table = _table(rows, ["Week of", "Ratings", "Average", "Rated 4–5"],
                   "Survey ratings of the conversations that began each week")
    return _section("csat", "CSAT", "Average survey rating per week (1–5).", svg + table)


def _tags(data: dict[str, Any]) -> str:
    tags = data["tags"]
    weeks = [w["week"] for w in data["weeks"]]
    svg = hbars("Most frequent tags", [t["tag"] for t in tags],
                [t["conversations"] for t in tags], color=colour(4))
    rows = []
    trends: dict[str, str] = {}
    for t in tags:
        counts = [t["weeks"][w] for w in weeks]
        trends[t["tag"]] = sparkline(f"{t['tag']} per week", counts, color=colour(4))
        rows.append((t["tag"], [("tag", t["tag"], _NO_VALUE),
                                ("total", str(t["conversations"]), t["conversations"]),
                                *((w, str(c), c) for w, c in zip(weeks, counts, strict=True))]))
    head = ["Tag", "Total", *(_day_label(w) for w in weeks), "Trend"]
    table = _table(rows, head, "Conversations with each tag, by the week they began", trends)
    return _section("tags", "Tags", "The most frequent tags and how each trends per week.",
                    svg + table)


def _backlog(data: dict[str, Any]) -> str:
    buckets = data["backlog"]
    statuses = ["open", "pending", "snoozed"]
    series = [Series(s, [b[s] for b in buckets], STATUS_COLOURS[s]) for s in statuses]
    svg = bars("Conversations not resolved, by age", [b["bucket"] for b in buckets], series,
               whole=True)
    rows = [(b["bucket"], [("age", b["bucket"], _NO_VALUE),
                           *((s, str(b[s]), b[s]) for s in statuses),
                           ("total", str(b["total"]), b["total"])]) for b in buckets]
    table = _table(rows, ["Age", "Open", "Pending", "Snoozed", "Total"],
                   "Every conversation not resolved now, by how long ago it began")
    return _section("backlog", "Open backlog by age",
                    "Now, whatever the period: open, pending and snoozed conversations.",
                    _legend(series) + svg + table)


def _filters(view: View, data: dict[str, Any]) -> str:
    periods = list(PERIODS) if view.since in PERIODS else [view.since, *PERIODS]
    since = "".join(f'<option value="{_e(p)}"{" selected" if p == view.since else ""}>'
                    f"last {_e(p)}</option>" for p in periods)
    channels = list(data["known_channels"])
    if view.channel and view.channel not in channels:
        channels.append(view.channel)
    channel = '<option value="">all</option>' + "".join(
        f'<option value="{_e(c)}"{" selected" if c == view.channel else ""}>{_e(c)}</option>'
        for c in channels)
    tags = "".join(f'<option value="{_e(t)}"></option>' for t in data["known_tags"][:100])
    return f"""<form class="filters" method="get" action="/dashboard" data-form="filters">
<label>Period<select name="since">{since}</select></label>
<label>Channel<select name="channel">{channel}</select></label>
<label>Tag<input name="tag" list="known-tags" value="{_e(view.tag or '')}"
 placeholder="any" spellcheck="false"></label><datalist id="known-tags">{tags}</datalist>
<button type="submit">Show</button></form>"""


def _summary(overall: dict[str, Any]) -> str:
    cells = "".join(
        f'<div class="figure" data-figure="{_e(key)}" '
        f'data-value="{_e(json.dumps(overall.get(key)))}"><span class="value">'
        f'{_e(_shown(key, overall.get(key)))}</span><span class="label">{_e(label)}</span></div>'
        for key, label in SUMMARY)
    return f'<section class="summary" data-summary>{cells}</section>'


def dashboard_page(*, nonce: str, data: dict[str, Any], view: View, signed_in_as: str,
                   tz: ZoneInfo) -> str:
    """The page of figures for ``data`` (:func:`frontdesk.domain.dashboard.dashboard_figures`)."""
    report = data["report"]
    narrowed = "".join(f" · {_e(k)} <b>{_e(v)}</b>"
                       for k, v in (("channel", view.channel), ("tag", view.tag)) if v)
    period = (f'<p class="period" data-period data-since="{_e(report["since"])}" '
              f'data-until="{_e(report["until"])}">From {_e(_local(report["since"], tz))} to '
              f'{_e(_local(report["until"], tz))} ({_e(data["timezone"])}){narrowed}. '
              "Conversations count in the period they began; times are business time.</p>")
    header = (f'<header><h1>frontdesk dashboard</h1><div class="who">signed in with token '
              f'<b data-signed-in>{_e(signed_in_as)}</b> <form method="post" '
              'action="/dashboard/sign-out" data-form="sign-out"><button type="submit">'
              "Sign out</button></form></div></header>")
    charts = "".join(f(data) for f in (_per_day, _first_response, _sla, _csat, _tags, _backlog))
    body = (f"{header}<main>{_filters(view, data)}{period}{_summary(report['overall'])}"
            f'<div class="charts">{charts}</div></main>')
    return _document("frontdesk dashboard", body, nonce)
