"""Splitting long replies for SMS (1,600) and Telegram (4,096): order, limits, break points."""

from __future__ import annotations

from frontdesk.channels.chat import preview, split_text, utf16_len


def test_short_text_is_one_part() -> None:
    assert split_text("  Hello there  ", 1600) == ["Hello there"]
    assert split_text("   ", 1600) == []


def test_parts_keep_order_and_limit_and_break_at_words() -> None:
    words = " ".join(f"word{i}" for i in range(1000))
    parts = split_text(words, 1600)
    assert all(utf16_len(p) <= 1600 for p in parts)
    assert " ".join(parts) == words
    assert all(not p.startswith(" ") and not p.endswith(" ") for p in parts)


def test_paragraph_breaks_are_preferred() -> None:
    text = "a" * 1000 + "\n\n" + "b" * 1000
    assert split_text(text, 1600) == ["a" * 1000, "b" * 1000]


def test_a_text_without_spaces_is_cut_hard() -> None:
    parts = split_text("x" * 3500, 1600)
    assert [len(p) for p in parts] == [1600, 1600, 300]


def test_emoji_count_twice() -> None:
    text = "😀" * 1000  # 2,000 UTF-16 units
    parts = split_text(text, 1600)
    assert [utf16_len(p) for p in parts] == [1600, 400]
    assert "".join(parts) == text


def test_preview_is_one_short_line() -> None:
    assert preview("Hi,\n\nmy   order") == "Hi, my order"
    long = preview("The parcel with my order of walking boots never arrived at all " * 3)
    assert len(long) <= 60 and long.endswith("…")
