"""The words of the scheduler's messages to customers: acknowledgements, surveys, reminders.

Pure functions, no I/O. A message is a template (a subject for email, a text) chosen by kind,
channel and language: the ``templates`` tables of the config first (``[acknowledgement.templates
.email.de]``, with the key ``chat`` for every channel but email), then the built-in ones for
English, German, French and Spanish. Templates are filled with ``str.format`` placeholders:
``{reference}``, ``{name}``, ``{first_name}``, ``{subject}`` and, in acknowledgements, ``{due}``
(when the customer will hear from us, like "Monday 10:00") and ``{expectation}`` (the whole honest
sentence: "We're closed for the weekend; you'll hear from us by Monday 10:00.").

Text messages are meant to fit one or two SMS segments; :func:`sms_segments` counts them the way
carriers do (GSM-7 with its extension table, else UCS-2).
"""

from __future__ import annotations

import logging
import string
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Protocol

from frontdesk.domain.business_hours import BusinessCalendar

log = logging.getLogger(__name__)

KINDS = ("acknowledgement", "survey", "reminder")
CHAT_KEY = "chat"
"""The templates key for every channel but email (sms, whatsapp, voice, telegram)."""

COMMON_FIELDS = frozenset({"reference", "name", "first_name", "subject"})
FIELDS: dict[str, frozenset[str]] = {
    "acknowledgement": COMMON_FIELDS | {"due", "expectation"},
    "survey": COMMON_FIELDS,
    "reminder": COMMON_FIELDS,
}
MAX_SMS_SEGMENTS = 2


class TemplateLike(Protocol):
    subject: str
    text: str


@dataclass(frozen=True)
class Template:
    subject: str
    text: str


# --- built-in templates --------------------------------------------------------------------------

_BUILTIN: dict[str, dict[str, dict[str, Template]]] = {
    "acknowledgement": {
        "en": {
            "email": Template(
                "Re: {subject} [{reference}]",
                "Hello {name},\n\nThank you for writing to us. Your message is with our support "
                "team under the reference {reference}.\n\n{expectation}\n\nIf you have anything "
                "to add, just reply to this email.\n\n(This is an automatic reply.)"),
            CHAT_KEY: Template("", "Thanks, we got your message ({reference}). {expectation}"),
        },
        "de": {
            "email": Template(
                "Re: {subject} [{reference}]",
                "Hallo {name},\n\nvielen Dank für Ihre Nachricht. Sie liegt unserem Support-Team "
                "unter der Nummer {reference} vor.\n\n{expectation}\n\nWenn Sie etwas ergänzen "
                "möchten, antworten Sie einfach auf diese E-Mail.\n\n(Dies ist eine automatische "
                "Antwort.)"),
            CHAT_KEY: Template("", "Danke, Ihre Nachricht ist da ({reference}). {expectation}"),
        },
        "fr": {
            "email": Template(
                "Re: {subject} [{reference}]",
                "Bonjour {name},\n\nMerci de nous avoir écrit. Votre message est entre les mains "
                "de notre équipe sous la référence {reference}.\n\n{expectation}\n\nPour ajouter "
                "quelque chose, répondez simplement à cet e-mail.\n\n(Ceci est une réponse "
                "automatique.)"),
            CHAT_KEY: Template("", "Merci, votre message est bien arrivé ({reference}). "
                                   "{expectation}"),
        },
        "es": {
            "email": Template(
                "Re: {subject} [{reference}]",
                "Hola {name}:\n\nGracias por escribirnos. Su mensaje está en manos de nuestro "
                "equipo con la referencia {reference}.\n\n{expectation}\n\nSi quiere añadir algo, "
                "responda a este correo.\n\n(Esta es una respuesta automática.)"),
            # "más" makes Spanish texts UCS-2 (67 characters a segment): kept short.
            CHAT_KEY: Template("", "Recibido ({reference}). {expectation}"),
        },
    },
    "survey": {
        "en": {
            "email": Template(
                "How did we do? [{reference}]",
                "Hello {name},\n\nYour request {reference} is resolved. How did we do? Reply to "
                "this email with just a number from 1 (poor) to 5 (excellent).\n\nThank you!"),
            CHAT_KEY: Template("", "How did we do with {reference}? Reply 1-5 (5 = excellent)."),
        },
        "de": {
            "email": Template(
                "Wie waren wir? [{reference}]",
                "Hallo {name},\n\nIhre Anfrage {reference} ist erledigt. Wie zufrieden waren Sie? "
                "Antworten Sie auf diese E-Mail nur mit einer Zahl von 1 (schlecht) bis 5 "
                "(ausgezeichnet).\n\nVielen Dank!"),
            CHAT_KEY: Template("", "Wie waren wir bei {reference}? Antworten Sie 1-5 "
                                   "(5 = ausgezeichnet)."),
        },
        "fr": {
            "email": Template(
                "Comment avons-nous fait ? [{reference}]",
                "Bonjour {name},\n\nVotre demande {reference} est résolue. Comment avons-nous "
                "fait ? Répondez à cet e-mail avec un seul chiffre de 1 (mauvais) à 5 "
                "(excellent).\n\nMerci !"),
            CHAT_KEY: Template("", "Comment avons-nous fait pour {reference} ? Répondez 1-5 "
                                   "(5 = excellent)."),
        },
        "es": {
            "email": Template(
                "¿Qué tal lo hicimos? [{reference}]",
                "Hola {name}:\n\nSu solicitud {reference} está resuelta. ¿Qué tal lo hicimos? "
                "Responda a este correo solo con un número del 1 (mal) al 5 (excelente)."
                "\n\n¡Gracias!"),
            CHAT_KEY: Template("", "¿Qué tal lo hicimos con {reference}? Responda 1-5 "
                                   "(5 = excelente)."),
        },
    },
    "reminder": {
        "en": {
            "email": Template(
                "Do you still need help? [{reference}]",
                "Hello {name},\n\nWe are waiting for your answer on {reference}. Do you still "
                "need help? Just reply to this email and we will pick it up."),
            CHAT_KEY: Template("", "Do you still need help with {reference}? Just reply here "
                                   "and we will pick it up."),
        },
        "de": {
            "email": Template(
                "Brauchen Sie noch Hilfe? [{reference}]",
                "Hallo {name},\n\nwir warten auf Ihre Antwort zu {reference}. Brauchen Sie noch "
                "Hilfe? Antworten Sie einfach auf diese E-Mail, dann machen wir weiter."),
            CHAT_KEY: Template("", "Brauchen Sie noch Hilfe mit {reference}? Antworten Sie "
                                   "einfach hier."),
        },
        "fr": {
            "email": Template(
                "Avez-vous encore besoin d'aide ? [{reference}]",
                "Bonjour {name},\n\nNous attendons votre réponse pour {reference}. Avez-vous "
                "encore besoin d'aide ? Répondez simplement à cet e-mail et nous reprendrons."),
            CHAT_KEY: Template("", "Avez-vous encore besoin d'aide pour {reference} ? "
                                   "Répondez simplement ici."),
        },
        "es": {
            "email": Template(
                "¿Todavía necesita ayuda? [{reference}]",
                "Hola {name}:\n\nEstamos esperando su respuesta sobre {reference}. ¿Todavía "
                "necesita ayuda? Responda a este correo y seguiremos."),
            CHAT_KEY: Template("", "¿Todavía necesita ayuda con {reference}? Responda aquí y "
                                   "seguiremos."),
        },
    },
}


# --- the honest expected reply time --------------------------------------------------------------

@dataclass(frozen=True)
class _Words:
    weekdays: tuple[str, ...]
    months: tuple[str, ...]
    today: str            # "{time}"
    tomorrow: str         # "{time}"
    weekday: str          # "{weekday}", "{time}"
    dated: str            # "{weekday}", "{day}", "{month}", "{time}"
    open: str             # "{due}"
    closed_now: str
    closed_day: str
    closed_weekend: str
    closed_holiday: str
    fallback_name: str
    your_message: str     # a subject when the customer's own cannot be repeated


_WORDS: dict[str, _Words] = {
    "en": _Words(
        weekdays=("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
        months=("January", "February", "March", "April", "May", "June", "July", "August",
                "September", "October", "November", "December"),
        today="{time} today", tomorrow="{time} tomorrow", weekday="{weekday} {time}",
        dated="{weekday} {day} {month} {time}",
        open="You'll hear from us by {due}.",
        closed_now="We're closed right now; you'll hear from us by {due}.",
        closed_day="We're closed for the day; you'll hear from us by {due}.",
        closed_weekend="We're closed for the weekend; you'll hear from us by {due}.",
        closed_holiday="We're closed for the holiday; you'll hear from us by {due}.",
        fallback_name="there", your_message="your message"),
    "de": _Words(
        weekdays=("Montag", "Dienstag", "Mittwoch", "Donnerstag", "Freitag", "Samstag",
                  "Sonntag"),
        months=("Januar", "Februar", "März", "April", "Mai", "Juni", "Juli", "August",
                "September", "Oktober", "November", "Dezember"),
        today="heute um {time}", tomorrow="morgen um {time}", weekday="{weekday} um {time}",
        dated="{weekday}, {day}. {month}, um {time}",
        open="Sie hören bis {due} von uns.",
        closed_now="Wir haben gerade geschlossen; Sie hören bis {due} von uns.",
        closed_day="Wir haben für heute geschlossen; Sie hören bis {due} von uns.",
        closed_weekend="Wir haben am Wochenende geschlossen; Sie hören bis {due} von uns.",
        closed_holiday="Wir haben feiertags geschlossen; Sie hören bis {due} von uns.",
        fallback_name="", your_message="Ihre Nachricht"),
    "fr": _Words(
        weekdays=("lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche"),
        months=("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août",
                "septembre", "octobre", "novembre", "décembre"),
        today="aujourd'hui à {time}", tomorrow="demain à {time}", weekday="{weekday} à {time}",
        dated="{weekday} {day} {month} à {time}",
        open="Nous vous répondrons au plus tard {due}.",
        closed_now="Nous sommes fermés pour le moment ; nous vous répondrons au plus tard {due}.",
        closed_day="Nous sommes fermés pour aujourd'hui ; nous vous répondrons au plus tard "
                   "{due}.",
        closed_weekend="Nous sommes fermés pour le week-end ; nous vous répondrons au plus tard "
                       "{due}.",
        closed_holiday="Nous sommes fermés (jour férié) ; nous vous répondrons au plus tard "
                       "{due}.",
        fallback_name="", your_message="votre message"),
    "es": _Words(
        weekdays=("lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo"),
        months=("enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto",
                "septiembre", "octubre", "noviembre", "diciembre"),
        today="hoy a las {time}", tomorrow="mañana a las {time}",
        weekday="el {weekday} a las {time}", dated="el {weekday} {day} de {month} a las {time}",
        open="Le responderemos a más tardar {due}.",
        closed_now="Ahora mismo estamos cerrados; le responderemos a más tardar {due}.",
        closed_day="Hemos cerrado por hoy; le responderemos a más tardar {due}.",
        closed_weekend="Estamos cerrados el fin de semana; le responderemos a más tardar {due}.",
        closed_holiday="Estamos cerrados por festivo; le responderemos a más tardar {due}.",
        fallback_name="", your_message="su mensaje"),
}
BUILTIN_LANGUAGES = tuple(_WORDS)


def base_language(language: str) -> str:
    """``"de-AT"`` → ``"de"``."""
    return language.strip().lower().replace("_", "-").split("-")[0]


def _words(language: str) -> _Words:
    return _WORDS.get(base_language(language), _WORDS["en"])


def due_phrase(due: datetime, now: datetime, calendar: BusinessCalendar, language: str) -> str:
    """When, in the desk's time zone and the customer's language: "14:30 today", "Monday 10:00",
    "Monday 7 December 10:00" (more than six days ahead)."""
    words = _words(language)
    local_due = due.astimezone(calendar.tz)
    today = now.astimezone(calendar.tz).date()
    at = local_due.strftime("%H:%M")
    days = (local_due.date() - today).days
    if days <= 0:
        return words.today.format(time=at)
    if days == 1:
        return words.tomorrow.format(time=at)
    weekday = words.weekdays[local_due.weekday()]
    if days <= 6:
        return words.weekday.format(weekday=weekday, time=at)
    return words.dated.format(weekday=weekday, day=local_due.day,
                              month=words.months[local_due.month - 1], time=at)


def closed_reason(now: datetime, calendar: BusinessCalendar) -> str | None:
    """Why the desk is closed at ``now``: ``"now"`` (it opens again later today: a lunch break,
    before opening), ``"holiday"`` (a closed date stands between now and the next opening),
    ``"weekend"`` (a Saturday or Sunday without hours does), ``"day"`` (closed until tomorrow);
    None when it is open."""
    if calendar.is_open(now):
        return None
    tz = calendar.tz
    today = now.astimezone(tz).date()
    opens = calendar.next_open(now).astimezone(tz).date()
    if opens == today:
        return "now"
    day: date = today
    weekend = False
    while day < opens:
        if calendar.hours.periods(day.weekday()) and not _open_on(day, calendar):
            return "holiday"
        if day.weekday() >= 5 and not calendar.hours.periods(day.weekday()):
            weekend = True
        day += timedelta(days=1)
    return "weekend" if weekend else "day"


def _open_on(day: date, calendar: BusinessCalendar) -> bool:
    """Whether the desk opens at all on the local date ``day`` (False on a closed date)."""
    tz = calendar.tz
    start = datetime(day.year, day.month, day.day, tzinfo=tz)
    opening = calendar.next_open(start).astimezone(tz)
    return opening.date() == day


def expectation(due: datetime, now: datetime, calendar: BusinessCalendar,
                language: str) -> tuple[str, str]:
    """(the sentence, the due phrase): "We're closed for the weekend; you'll hear from us by
    Monday 10:00." and "Monday 10:00"."""
    words = _words(language)
    when = due_phrase(due, now, calendar, language)
    reason = closed_reason(now, calendar)
    sentence = {None: words.open, "now": words.closed_now, "day": words.closed_day,
                "weekend": words.closed_weekend,
                "holiday": words.closed_holiday}[reason]
    return sentence.format(due=when), when


# --- templates -----------------------------------------------------------------------------------

class _Blank(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def placeholders(text: str) -> set[str]:
    """The ``{names}`` a template uses (raises ValueError on a malformed one)."""
    names = set()
    for _literal, field, _spec, _conversion in string.Formatter().parse(text):
        if field is not None:
            if not field.isidentifier():
                raise ValueError(f"{{{field}}} is not a placeholder (write a literal brace as "
                                 "{{ or }})")
            names.add(field)
    return names


def check_template(kind: str, channel: str, language: str, subject: str, text: str) -> None:
    """Raise ValueError naming an unknown placeholder, or an SMS text longer than two segments
    when filled with long sample values."""
    allowed = FIELDS[kind]
    for part in (subject, text):
        unknown = placeholders(part) - allowed
        if unknown:
            raise ValueError(f"unknown placeholder {{{sorted(unknown)[0]}}} (use "
                             + ", ".join("{" + f + "}" for f in sorted(allowed)) + ")")
    if not text.strip():
        raise ValueError("text is empty")
    if channel in ("sms", "whatsapp", "voice", CHAT_KEY):
        sample = render(text, _sample_values(kind, language))
        segments = sms_segments(sample)
        if segments > MAX_SMS_SEGMENTS:
            raise ValueError(f"{channel} text takes {segments} SMS segments with long sample "
                             f"values; keep it to {MAX_SMS_SEGMENTS} (about 300 plain characters "
                             "or 130 with accents outside GSM-7)")


def _sample_values(kind: str, language: str) -> dict[str, str]:
    words = _words(language)
    longest_due = words.dated.format(weekday=max(words.weekdays, key=len), day=30,
                                     month=max(words.months, key=len), time="10:00")
    sentences = (words.open, words.closed_now, words.closed_day, words.closed_weekend,
                 words.closed_holiday)
    return {"reference": "FD-1234567", "name": "Alexandra Wellington",
            "first_name": "Alexandra", "subject": "Order 1234 never arrived",
            "due": longest_due,
            "expectation": max((s.format(due=longest_due) for s in sentences), key=len)}


def render(text: str, values: Mapping[str, Any]) -> str:
    """Fill a template; an unknown placeholder stays as written."""
    return text.format_map(_Blank({k: str(v) for k, v in values.items()}))


def choose(kind: str, channel: str, language: str, default_language: str,
           configured: Mapping[str, Mapping[str, TemplateLike]]) -> Template:
    """The template for a message of ``kind`` on ``channel`` in ``language``.

    Configured templates first (the channel's own, then ``chat`` for non-email channels; the
    language, its base language, then the default language), then the built-in ones.
    """
    keys = [channel] if channel == "email" else [channel, CHAT_KEY]
    languages = []
    for candidate in (language, base_language(language), default_language,
                      base_language(default_language)):
        if candidate and candidate not in languages:
            languages.append(candidate)
    for lang in languages:
        for key in keys:
            found = configured.get(key, {}).get(lang)
            if found is not None:
                return Template(found.subject, found.text)
    builtin = _BUILTIN[kind]
    for lang in [*languages, "en"]:
        table = builtin.get(base_language(lang))
        if table is not None:
            return table["email" if channel == "email" else CHAT_KEY]
    raise LookupError(kind)  # pragma: no cover - "en" is always there


def your_message(language: str) -> str:
    """The words "your message" in ``language`` (a subject that repeats nothing of the sender's)."""
    return _words(language).your_message


def greeting_name(name: str, language: str) -> tuple[str, str]:
    """({name}, {first_name}) for a template: the contact's name, or a neutral word."""
    name = " ".join(name.split())[:60]
    if name:
        return name, name.split()[0]
    fallback = _words(language).fallback_name
    return fallback, fallback


# --- SMS segments --------------------------------------------------------------------------------

_GSM7 = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
_GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")


def sms_segments(text: str) -> int:
    """How many SMS segments ``text`` takes: GSM-7 (160, or 153 per part; extension characters
    count twice) when every character is in it, else UCS-2 (70, or 67 per part)."""
    if all(ch in _GSM7 or ch in _GSM7_EXTENSION for ch in text):
        units = sum(2 if ch in _GSM7_EXTENSION else 1 for ch in text)
        single, part = 160, 153
    else:
        units = sum(2 if ord(ch) > 0xFFFF else 1 for ch in text)  # UTF-16 code units
        single, part = 70, 67
    if units <= single:
        return 1
    return -(-units // part)
