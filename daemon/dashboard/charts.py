"""Charts drawn on the server as inline SVG: vertical bars (stacked), lines, horizontal bars.

No script, no web font, nothing fetched: each function returns one ``<svg>`` element as text, to
be put in the page as it is. Every piece of text in it (labels, series names, tooltips) is escaped
here, so a channel or tag name a customer chose cannot add markup. Colours are presentation
attributes (``fill``, ``stroke``), never ``style`` attributes, so the page's Content Security
Policy needs no ``'unsafe-inline'``. The figures themselves are in the HTML table under each
chart (:mod:`.page`); a chart's ``<title>`` elements repeat them as tooltips.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

PALETTE = ("#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#06b6d4", "#ec4899",
           "#84cc16", "#64748b", "#a16207")
"""Series colours, in order; they repeat past ten series."""

WIDTH, HEIGHT = 720, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 14, 34
_MAX_X_LABELS = 12

Format = Callable[[float], str]


def colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


@dataclass(frozen=True)
class Series:
    """One named series of values (None: no value there), drawn in ``color``."""

    name: str
    values: Sequence[float | None]
    color: str


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _number(value: float) -> str:
    return f"{value:g}"


def _nice_step(raw: float, *, whole: bool) -> float:
    power = 10 ** math.floor(math.log10(raw))
    for step in ((1, 2, 5, 10) if whole else (1, 2, 2.5, 5, 10)):
        if step * power >= raw:
            return float(max(step * power, 1)) if whole else float(step * power)
    return float(10 * power)


def scale(largest: float, *, top: float | None = None, whole: bool = False
          ) -> tuple[float, float]:
    """The axis top and the step between its gridlines for values up to ``largest``: steps of
    1, 2, 2.5 or 5 times a power of ten (``whole``: counts, steps of at least 1, no 2.5), about
    four of them; ``top`` fixes the top (100 for a share, 5 for a rating)."""
    if top is not None:
        return top, _nice_step(top / 5, whole=whole)
    largest = largest if largest > 0 else 1.0
    step = _nice_step(largest / 4, whole=whole)
    return step * math.ceil(largest / step - 1e-9), step


def _svg(title: str, inner: list[str], height: int = HEIGHT) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" '
            f'width="100%" role="img" aria-label="{_e(title)}" class="chart">'
            f"<title>{_e(title)}</title>{''.join(inner)}</svg>")


def _y_axis(top: float, step: float, fmt: Format) -> list[str]:
    out = []
    plot_h = HEIGHT - TOP - BOTTOM
    for i in range(round(top / step) + 1):
        value = step * i
        y = TOP + plot_h - plot_h * value / top
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
                   f'stroke="#e2e8f0" stroke-width="1"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_e(fmt(value))}'
                   "</text>")
    return out


def _x_labels(labels: Sequence[str], slot: float) -> list[str]:
    every = max(1, math.ceil(len(labels) / _MAX_X_LABELS))
    out = []
    for i, label in enumerate(labels):
        if i % every:
            continue
        x = LEFT + slot * (i + 0.5)
        out.append(f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">'
                   f"{_e(label)}</text>")
    return out


def _nothing(inner: list[str], text: str = "nothing in this period") -> None:
    inner.append(f'<text x="{WIDTH / 2:.1f}" y="{HEIGHT / 2:.1f}" text-anchor="middle" '
                 f'class="empty">{_e(text)}</text>')


def bars(title: str, labels: Sequence[str], series: Sequence[Series], *,
         fmt: Format = _number, top: float | None = None, whole: bool = False) -> str:
    """Stacked vertical bars: one bar per label, one segment per series (``whole``: counts)."""
    totals = [sum((s.values[i] or 0) for s in series) for i in range(len(labels))]
    top, step = scale(max(totals, default=0), top=top, whole=whole)
    plot_h = HEIGHT - TOP - BOTTOM
    slot = (WIDTH - LEFT - RIGHT) / max(1, len(labels))
    width = max(1.0, slot * 0.72)
    inner = _y_axis(top, step, fmt)
    for i, label in enumerate(labels):
        base = 0.0
        for s in series:
            value = s.values[i] or 0
            if value <= 0:
                continue
            h = plot_h * value / top
            y = TOP + plot_h - plot_h * base / top - h
            x = LEFT + slot * i + (slot - width) / 2
            inner.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{h:.1f}" '
                         f'fill="{_e(s.color)}"><title>{_e(label)} · {_e(s.name)}: '
                         f"{_e(fmt(value))}</title></rect>")
            base += value
    inner += _x_labels(labels, slot)
    if not any(totals):
        _nothing(inner)
    return _svg(title, inner)


def lines(title: str, labels: Sequence[str], series: Sequence[Series], *,
          fmt: Format = _number, top: float | None = None) -> str:
    """One line per series, a dot per value; a missing value breaks the line."""
    values = [v for s in series for v in s.values if v is not None]
    top, step = scale(max(values, default=0), top=top)
    plot_h = HEIGHT - TOP - BOTTOM
    slot = (WIDTH - LEFT - RIGHT) / max(1, len(labels))
    strokes: list[str] = []
    dots: list[str] = []
    for s in series:
        points: list[tuple[float, float]] = []
        runs: list[list[tuple[float, float]]] = [points]
        for i, value in enumerate(s.values):
            if value is None:
                points = []
                runs.append(points)
                continue
            x = LEFT + slot * (i + 0.5)
            y = TOP + plot_h - plot_h * min(value, top) / top
            points.append((x, y))
            dots.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{_e(s.color)}">'
                        f"<title>{_e(labels[i])} · {_e(s.name)}: {_e(fmt(value))}</title>"
                        "</circle>")
        for run in runs:
            if len(run) > 1:
                path = " ".join(f"{x:.1f},{y:.1f}" for x, y in run)
                strokes.append(f'<polyline points="{path}" fill="none" '
                               f'stroke="{_e(s.color)}" stroke-width="2"/>')
    inner = [*_y_axis(top, step, fmt), *strokes, *dots]
    inner += _x_labels(labels, slot)
    if not values:
        _nothing(inner)
    return _svg(title, inner)


def hbars(title: str, labels: Sequence[str], values: Sequence[float], *, color: str,
          fmt: Format = _number) -> str:
    """Horizontal bars, one per label, longest first as given."""
    row = 24
    height = max(HEIGHT // 2, TOP + row * len(labels) + 10)
    left = 12 + 150  # the labels' column
    top, _step = scale(max(values, default=0), whole=True)
    span = WIDTH - RIGHT - left - 48  # room for the value after the longest bar
    inner: list[str] = []
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = TOP + row * i
        w = span * value / top
        shown = label if len(label) <= 24 else label[:23] + "…"  # the whole one in the table
        inner.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end">{_e(shown)}</text>')
        inner.append(f'<rect x="{left}" y="{y + 3}" width="{w:.1f}" height="{row - 6}" '
                     f'fill="{_e(color)}"><title>{_e(label)}: {_e(fmt(value))}</title></rect>')
        inner.append(f'<text x="{left + w + 6:.1f}" y="{y + 15}">{_e(fmt(value))}</text>')
    if not labels:
        inner.append(f'<text x="{WIDTH / 2:.1f}" y="{height / 2:.1f}" text-anchor="middle" '
                     'class="empty">no tags in this period</text>')
    return _svg(title, inner, height)


def sparkline(title: str, values: Sequence[float], *, color: str) -> str:
    """A small line of counts (a tag's weeks), for a table cell."""
    w, h, pad = 120, 24, 3
    top = max(values, default=0) or 1
    step = (w - 2 * pad) / max(1, len(values) - 1)
    points = " ".join(f"{pad + step * i:.1f},{h - pad - (h - 2 * pad) * v / top:.1f}"
                      for i, v in enumerate(values))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" '
            f'height="{h}" role="img" aria-label="{_e(title)}" class="spark">'
            f"<title>{_e(title)}</title>"
            f'<polyline points="{points}" fill="none" stroke="{_e(color)}" stroke-width="1.5"/>'
            "</svg>")
