"""Quoted replies: the new part of a mail, and its text with the quoted history folded away.

Customers answer above (or below) the whole earlier exchange. frontdesk keeps the full text and
stores the new part beside it; the CLI and the Slack desk show the new part followed by
``[quoted text hidden]``. HTML-only mail is split on the text made from its HTML, where the
quote header survives as text.

How a quote is found, line by line from the top (the first of these that appears is where the
quote starts; what is above it is the new part):

* an **attribution line**, which may wrap over a few lines: ``On <date>, Ada <ada@x> wrote:``,
  ``Am <date> schrieb Ada <ada@x>:``, ``Le <date>, Ada a écrit :``, Zoho's
  ``---- On <date> Ada wrote ----``, Gmail's date-first ``2016-10-24 15:36 GMT+02:00 Ada
  <ada@x>:``. It must name a date or an address, so "as I wrote:" in a sentence is no header;
* a **separator line**: ``-----Original Message-----`` and its translations;
* an **Outlook header block**: ``From:`` then at least two of ``Sent:``/``To:``/``Subject:``/...
  in one of the languages below (``Von:/Gesendet:/An:/Betreff:``, ``De :/Envoyé :/À :/Objet :``);
* otherwise a **trailing block** of ``>`` (or ``|``) lines at the end of the mail.

Separator lines just above the quote (``____``, ``-----``) go with it. A reply written *below*
the quote (a header at the very top, then the ``>`` block, then the new text) keeps the text
after the block. Mail that begins with a bare ``>`` block (answering a quote inline), answers
between several quote blocks, and forwarded mail ("---------- Forwarded message ----------",
"Begin forwarded message:") are kept whole: there, the quoted text is what the customer wants
read. Signatures are not cut.

The phrases are tables per language (:data:`LANGUAGES`); ``email.reply_languages`` narrows them
(default: all). Only the first 16 KB of a text are searched for a quote header: a reply whose new
part is longer than that is kept whole.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

QUOTE_FOLD = "[quoted text hidden]"
ALL = "all"
"""``email.reply_languages = ["all"]``: every language in :data:`LANGUAGES` (the default)."""

_SCAN_LIMIT = 16_384
_HEADER_LINES = 6  # physical lines an attribution may wrap over
_HEADER_PARTS = 4  # non-blank lines of it
_HEADER_CHARS = 400
_FIELD_LINES = 10  # lines an Outlook header block may take


@dataclass(frozen=True, slots=True)
class Language:
    """The words one language's mail clients write around a quote."""

    wrote: tuple[str, ...]
    """The verb of an attribution line (``wrote``, ``schrieb``, ``a écrit``)."""
    lead: tuple[str, ...]
    """The word an attribution line starts with (``On``, ``Am``, ``Le``)."""
    original: tuple[str, ...]
    """The text of a separator line (``-----Original Message-----``)."""
    from_field: tuple[str, ...]
    """The first field of an Outlook header block (``From:``, ``Von:``, ``De :``)."""
    fields: tuple[str, ...]
    """Its other fields (``Sent:``, ``To:``, ``Subject:``...)."""
    forward: tuple[str, ...]
    """A forwarded mail's separator ("Forwarded message"): such mail is kept whole."""


LANGUAGES: dict[str, Language] = {
    "en": Language(
        wrote=("wrote",), lead=("On",), original=("Original Message", "Reply Message"),
        from_field=("From",), fields=("Sent", "Date", "To", "Cc", "Subject", "Reply-To"),
        forward=("Forwarded message", "Begin forwarded message", "Forwarded e-mail")),
    "de": Language(
        wrote=("schrieb", "geschrieben"), lead=("Am",),
        original=("Ursprüngliche Nachricht", "Originalnachricht", "Original-Nachricht"),
        from_field=("Von",), fields=("Gesendet", "Datum", "An", "Cc", "Kopie", "Betreff",
                                     "Antwort an"),
        forward=("Weitergeleitete Nachricht", "Anfang der weitergeleiteten Nachricht")),
    "fr": Language(
        wrote=("a écrit",), lead=("Le",), original=("Message d'origine", "Message original"),
        from_field=("De",), fields=("Envoyé", "Date", "À", "A", "Cc", "Objet", "Répondre à"),
        forward=("Message transféré", "Début du message réexpédié", "Message réexpédié")),
    "es": Language(
        wrote=("escribió",), lead=("El",), original=("Mensaje original",),
        from_field=("De",), fields=("Enviado", "Fecha", "Para", "CC", "Asunto", "Responder a"),
        forward=("Mensaje reenviado",)),
    "it": Language(
        wrote=("ha scritto", "scrive"), lead=("Il",), original=("Messaggio originale",),
        from_field=("Da",), fields=("Inviato", "Data", "A", "Cc", "Oggetto", "Risposta",
                                    "Rispondi a"),
        forward=("Messaggio inoltrato",)),
    "nl": Language(
        wrote=("schreef", "geschreven"), lead=("Op",),
        original=("Oorspronkelijk bericht", "Origineel bericht"),
        from_field=("Van",), fields=("Verzonden", "Datum", "Aan", "CC", "Onderwerp",
                                     "Beantwoorden"),
        forward=("Doorgestuurd bericht",)),
    "pt": Language(
        wrote=("escreveu",), lead=("Em", "No dia"), original=("Mensagem original",),
        from_field=("De",), fields=("Enviada", "Enviado", "Data", "Para", "Cc", "Assunto",
                                    "Responder a"),
        forward=("Mensagem encaminhada",)),
    "sv": Language(
        wrote=("skrev",), lead=("Den",),
        original=("Ursprungligt meddelande", "Originalmeddelande"),
        from_field=("Från",), fields=("Skickat", "Datum", "Till", "Kopia", "Ämne"),
        forward=("Vidarebefordrat meddelande",)),
    "da": Language(
        wrote=("skrev",), lead=("Den",), original=("Oprindelig meddelelse",),
        from_field=("Fra",), fields=("Sendt", "Dato", "Til", "Cc", "Emne"),
        forward=("Videresendt meddelelse",)),
    "no": Language(
        wrote=("skrev",), lead=("Den",), original=("Opprinnelig melding",),
        from_field=("Fra",), fields=("Sendt", "Dato", "Til", "Kopi", "Emne"),
        forward=("Videresendt melding",)),
    "pl": Language(
        wrote=("napisał(a)", "napisał", "napisała", "pisze"), lead=("W dniu", "Dnia"),
        original=("Wiadomość oryginalna", "Oryginalna wiadomość"),
        from_field=("Od",), fields=("Wysłano", "Data", "Do", "DW", "Temat"),
        forward=("Przekazana wiadomość",)),
    "cs": Language(
        wrote=("napsal(a)", "napsal", "napsala"), lead=("Dne",), original=("Původní zpráva",),
        from_field=("Od",), fields=("Odesláno", "Datum", "Komu", "Kopie", "Předmět"),
        forward=("Přeposlaná zpráva",)),
    "ru": Language(
        wrote=("написал(а)", "написал", "написала", "пишет"), lead=(),
        original=("Исходное сообщение",),
        from_field=("От",), fields=("Отправлено", "Дата", "Кому", "Копия", "Тема"),
        forward=("Пересылаемое сообщение",)),
    "uk": Language(
        wrote=("написав", "написала", "пише"), lead=(), original=("Оригінальне повідомлення",),
        from_field=("Від",), fields=("Надіслано", "Дата", "Кому", "Копія", "Тема"),
        forward=("Пересланий лист",)),
    "zh": Language(
        wrote=("写道", "寫道"), lead=("在",), original=("原始邮件", "原始郵件"),
        from_field=("发件人", "寄件者"),
        fields=("发送时间", "日期", "收件人", "抄送", "主题", "傳送時間", "收件者", "副本", "主旨"),
        forward=("转发邮件", "轉寄郵件")),
    "ja": Language(
        wrote=("書きました",), lead=(), original=("元のメッセージ",),
        from_field=("差出人", "送信者"), fields=("送信日時", "日付", "宛先", "CC", "件名"),
        forward=("転送メッセージ",)),
    "ko": Language(
        wrote=("작성",), lead=(), original=("원본 메시지",),
        from_field=("보낸 사람",), fields=("보낸 날짜", "받는 사람", "참조", "제목"),
        forward=("전달된 메시지",)),
}

# Patterns that are the same in every language.
_QUOTED = re.compile(r"^\s*(?:>|\|(?!.*\|\s*$))")  # "> text", "| text" (not a table row)
_QUOTE_MARKS = re.compile(r"^\s*(?:>\s?)+|^\s*\|\s?")
_SEPARATOR_ONLY = re.compile(r"^[\s_\-=*~]*$")  # "______", " -------", "*---*", blank
_DATED = re.compile(
    r"(?<!\d)(?:19|20)\d\d(?!\d)"  # a year
    r"|(?<!\d)\d{1,2}[./-]\d{1,2}[./-]\d{2,4}(?!\d)"  # 02.04.12, 6/16/2016
    r"|(?<!\d)\d{1,2}[:.]\d\d(?!\d)")  # a time: 15:36, 20.42
_ADDRESS = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_DATE_FIRST = re.compile(r"^\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b")  # Gmail: "2016-10-24 15:36 ..."
_GMT = re.compile(r"\bGMT[+-]\d")
_DASHES = re.compile(r"^-{2,}\s*(.*?)\s*-{2,}$")  # Zoho: "---- On ... wrote ----"
_COLON_END = re.compile(r"[:：]$")
_WS = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class _Patterns:
    """One set of languages' phrases, compiled."""

    wrote: re.Pattern[str]  # the verb anywhere
    wrote_end: re.Pattern[str]  # the verb right before the closing colon
    after_address: re.Pattern[str]  # "Ada <ada@x> schrieb am ...": the verb after the address
    lead: re.Pattern[str]
    separator: re.Pattern[str]
    forward: re.Pattern[str]
    from_field: re.Pattern[str]
    field: re.Pattern[str]


def _words(words: Sequence[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))


@functools.lru_cache(maxsize=16)
def _patterns(languages: tuple[str, ...]) -> _Patterns:
    chosen = [LANGUAGES[code] for code in (LANGUAGES if ALL in languages else languages)
              if code in LANGUAGES] or [LANGUAGES["en"]]
    wrote = _words([w for lang in chosen for w in lang.wrote])
    lead = _words([w for lang in chosen for w in lang.lead]) or r"(?!)"
    original = _words([w for lang in chosen for w in lang.original])
    forward = _words([w for lang in chosen for w in lang.forward])
    from_field = _words([w for lang in chosen for w in lang.from_field])
    fields = _words([w for lang in chosen for w in lang.from_field + lang.fields])
    flags = re.IGNORECASE
    return _Patterns(
        wrote=re.compile(rf"(?<!\w)(?:{wrote})(?!\w)", flags),
        wrote_end=re.compile(rf"(?<!\w)(?:{wrote})\s*[:：]?$", flags),
        after_address=re.compile(rf"(?:>|@\S+)\s*(?:{wrote})(?!\w)", flags),
        lead=re.compile(rf"^(?:{lead})\s", flags),
        separator=re.compile(rf"^[\s>*_]*-{{2,}}\s*(?:{original})\s*-{{2,}}[\s*_]*$", flags),
        forward=re.compile(rf"^[\s>*_]*-*\s*(?:{forward})\s*:?\s*-*[\s*_]*$", flags),
        from_field=re.compile(rf"^\s*[*_]*(?:{from_field})\s*[:：][*_]*\s*\S", flags),
        field=re.compile(rf"^\s*[*_]*(?:{fields})\s*[:：]", flags),
    )


# --- the parts of a quote -----------------------------------------------------------------------

def _is_quoted(line: str) -> bool:
    return bool(_QUOTED.match(line))


def _may_start_attribution(line: str, p: _Patterns) -> bool:
    """Whether an attribution could start on this line: it names a date or an address or starts
    with the language's lead word ("On", "Am")."""
    text = line.strip()
    return bool(text) and len(text) <= _HEADER_CHARS and bool(
        p.lead.match(text) or _DATED.search(text) or _ADDRESS.search(text))


def _is_attribution(joined: str, p: _Patterns) -> bool:
    """``joined`` (one attribution's lines, whitespace collapsed) introduces a quote."""
    dashed = _DASHES.match(joined)
    if dashed:  # "---- On <date> Ada wrote ----": no colon
        inner = dashed.group(1)
        return bool(p.wrote_end.search(inner) and (_DATED.search(inner) or _ADDRESS.search(inner)))
    named = bool(_DATED.search(joined) or _ADDRESS.search(joined))
    colon = bool(_COLON_END.search(joined))
    if colon and p.wrote_end.search(joined) and named:
        return True  # "... Ada <ada@x> wrote:", "At 6/16/2016 08:32 PM, you wrote:"
    if colon and p.lead.match(joined) and p.wrote.search(joined) and named:
        return True  # "Am 03.02.2016 schrieb Max <max@x>:"
    if colon and p.after_address.search(joined):
        return True  # "Max <max@x> schrieb am Fr., 28. Apr. 2017 um 11:53 Uhr:"
    # Gmail: "2016-10-24 15:36 GMT+02:00 Ada <ada@x>:"
    return bool(_DATE_FIRST.match(joined)
                and (_GMT.search(joined) or (colon and _ADDRESS.search(joined))))


def _attribution_end(lines: list[str], start: int, p: _Patterns) -> int | None:
    """The index of the last line of an attribution that starts at ``start``, or None."""
    if not _may_start_attribution(lines[start], p):
        return None
    parts: list[str] = []
    blanks = 0
    for index in range(start, min(len(lines), start + _HEADER_LINES)):
        text = lines[index].strip()
        if not text:
            blanks += 1
            if blanks > 1:
                return None
            continue
        blanks = 0
        if parts and (p.lead.match(text) or _DATE_FIRST.match(text)):
            return None  # the next line starts an attribution of its own
        parts.append(text)
        joined = _WS.sub(" ", " ".join(parts))
        if len(joined) > _HEADER_CHARS:
            return None
        if _is_attribution(joined, p):
            return index
        if len(parts) >= _HEADER_PARTS:
            return None
    return None


def _gmail_dated_line(lines: list[str], start: int) -> int | None:
    """Old Gmail: ``2013/7/20 Ada <ada@x>`` (no colon) right above a quote block."""
    text = lines[start].strip()
    if not (_DATE_FIRST.match(text) and _ADDRESS.search(text)):
        return None
    for index in range(start + 1, min(len(lines), start + 3)):
        if lines[index].strip():
            return start if _is_quoted(lines[index]) else None
    return None


def _header_block(lines: list[str], start: int, p: _Patterns) -> bool:
    """Outlook's ``From: / Sent: / To: / Subject:`` block (in any of the languages) at
    ``start``: a From field and at least two more fields below it."""
    if not p.from_field.match(lines[start]):
        return False
    found = 0
    for line in lines[start + 1: start + _FIELD_LINES]:
        if not line.strip():
            break
        if p.field.match(line):
            found += 1
            if found >= 2:
                return True
    return False


@dataclass(frozen=True, slots=True)
class _Header:
    start: int
    end: int  # its last line
    marked: bool  # an attribution line (the quote under it is marked with ">"), not Outlook's


def _find_header(lines: list[str], index: int, p: _Patterns) -> _Header | None:
    line = lines[index]
    if p.separator.match(line) or _header_block(lines, index, p):
        return _Header(index, index, marked=False)
    end = _attribution_end(lines, index, p)
    if end is None:
        end = _gmail_dated_line(lines, index)
    return _Header(index, end, marked=True) if end is not None else None


# --- the split ----------------------------------------------------------------------------------

def _trim(lines: list[str]) -> list[str]:
    """Without the blank, separator-only and ``>`` lines at the end."""
    kept = list(lines)
    while kept and (_SEPARATOR_ONLY.match(kept[-1]) or _is_quoted(kept[-1])):
        kept.pop()
    return kept


def _has_text(lines: list[str]) -> bool:
    return any(line.strip() and not _is_quoted(line) for line in lines)


def _below_the_quote(lines: list[str], header: _Header, p: _Patterns) -> list[str] | None:
    """Bottom-posting: a header at the very top, its ``>`` block, then the new text. None when
    that is not the shape (an unmarked quote, a quote only, answers between quote blocks)."""
    if not header.marked:
        return None  # Outlook's block quotes everything below it, unmarked: nothing is new
    index = header.end + 1
    marked = False
    while index < len(lines) and (not lines[index].strip() or _is_quoted(lines[index])):
        marked = marked or _is_quoted(lines[index])
        index += 1
    rest = lines[index:]
    if not marked or not _has_text(rest):
        return None
    if any(_is_quoted(line) for line in rest) or any(
            _find_header(rest, i, p) for i in range(len(rest)) if rest[i].strip()):
        return None  # answers between quotes: they need the quotes beside them
    return rest


def _split(lines: list[str], p: _Patterns, whole: bool) -> list[str] | None:
    """The new part's lines, or None when everything is new (or nothing could be told)."""
    bare: list[str] | None = None  # the lines without their quote marks, when needed
    previous = ""
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        if p.forward.match(line):
            return None  # a forwarded mail is kept whole
        header: _Header | None
        if _is_quoted(line):
            block_start, previous = not _is_quoted(previous), line
            if not block_start:
                continue
            # A quote block that opens with its own header ("> On ... wrote:"): the quote.
            bare = bare or [_QUOTE_MARKS.sub("", item) for item in lines]
            header = _find_header(bare, index, p)
            header = _Header(index, index, marked=True) if header is not None else None
        else:
            previous = line
            header = _find_header(lines, index, p)
        if header is None:
            continue
        start = header.start
        while start > 0 and _SEPARATOR_ONLY.match(lines[start - 1]):
            start -= 1  # "______" or "-----" above the header goes with it
        above = lines[:start]
        if _has_text(above):
            return _trim(above)
        if any(_is_quoted(line) for line in above):
            return None  # a bare quote first, then a header: answers inline
        return _below_the_quote(lines, header, p)
    if not whole:
        return None  # no quote header in the part searched: keep it all
    # No header: fold a trailing block of ">" lines (with blank lines) if text stands above it.
    end = len(lines)
    while end > 0 and (not lines[end - 1].strip() or _is_quoted(lines[end - 1])):
        end -= 1
    if end == len(lines) or not any(_is_quoted(line) for line in lines[end:]):
        return None
    if any(p.forward.match(line) for line in lines[end:]):
        return None
    return _trim(lines[:end]) if _has_text(lines[:end]) else None


def new_part(text: str, languages: Sequence[str] = (ALL,)) -> str | None:
    """The new part of a reply, or None when there is no quote to fold (all of it is new)."""
    if not text or not text.strip():
        return None
    head = text[:_SCAN_LIMIT]
    whole = len(head) == len(text)
    if not whole and "\n" in head:
        head = head[: head.rfind("\n")]
    lines = head.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    kept = _split(lines, _patterns(tuple(languages)), whole)
    if kept is None:
        return None
    new = "\n".join(kept).strip("\n").rstrip()
    if not new.strip() or new.strip() == text.strip():
        return None
    return new


def folded(text: str, text_new: str | None) -> str:
    """The new part, then ``[quoted text hidden]`` where the quote was (the text itself when it
    has no quote)."""
    if not text_new or text_new.strip() == (text or "").strip():
        return text or ""
    return f"{text_new.rstrip()}\n\n{QUOTE_FOLD}"


def display_text(message: Any) -> str:
    """What a person reads first of a stored message or its JSON view (``text``/``text_new``):
    for the Slack desk, the CLI and notifications."""
    if isinstance(message, dict):
        return folded(message.get("text") or "", message.get("text_new"))
    return folded(getattr(message, "text", "") or "", getattr(message, "text_new", None))
