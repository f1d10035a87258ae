"""Time, as the rest of frontdesk takes it: a clock is passed in, never read from a global.

Every part that needs the time takes a :data:`Clock`; the daemon passes :func:`utcnow`, tests
pass a clock they move by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]
"""The time now, timezone-aware and in UTC."""


def utcnow() -> datetime:
    return datetime.now(UTC)
