"""The hosted contact form: ``GET /web/contact`` (a plain HTML form, no script needed) and
``POST /web/contact`` (urlencoded or multipart).

A submission is checked (origin, sizes, fields, file types, the per-address rate limits),
journaled, and answered once the processor has made it a conversation: ``303`` to a page naming
the reference, or ``201 {"reference": "FD-12"}`` with ``Accept: application/json``. A filled
honeypot (``website``) is answered exactly like a success and nothing is stored.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from aiohttp import web

from frontdesk.channels.base import Accept
from frontdesk.channels.web import WebConfig
from frontdesk.channels.web.body import BodyError, read_posted
from frontdesk.channels.web.guard import ClientAddress, OriginPolicy, RateWindows, file_type
from frontdesk.channels.web.pages import form_page, refusal_page, sent_page
from frontdesk.channels.web.parse import (
    clean_email,
    clean_language,
    clean_page,
    clean_text,
    form_message_id,
    form_row,
)
from frontdesk.channels.web.records import WebRecords
from frontdesk.domain.messages import Attachment

log = logging.getLogger(__name__)

_REFERENCE = re.compile(r"^FD-\d{1,18}$")
MAX_NAME = 200
MAX_SUBJECT = 200


class ContactForm:
    def __init__(self, config: WebConfig, *, records: WebRecords, origins: OriginPolicy,
                 client: ClientAddress, accept: Callable[[], Accept | None]) -> None:
        self._config = config
        self._records = records
        self._origins = origins
        self._client = client
        self._accept = accept
        self._per_address = RateWindows(config.form_rate_limits)
        self._per_email = RateWindows(config.form_rate_limits)

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/web/contact", self._page), web.post("/web/contact", self._post),
                web.get("/web/contact/sent", self._sent)]

    async def _page(self, request: web.Request) -> web.Response:
        return form_page(self._config.title, max_upload_bytes=self._config.max_upload_bytes)

    async def _sent(self, request: web.Request) -> web.Response:
        reference = request.query.get("reference", "")
        return sent_page(self._config.title, reference if _REFERENCE.match(reference) else None)

    def _refuse(self, request: web.Request, status: int, text: str,
                retry_after: float | None = None) -> web.Response:
        if _wants_json(request):
            response = web.json_response({"error": text}, status=status)
        else:
            response = refusal_page(self._config.title, status, text)
        if retry_after is not None:
            response.headers["Retry-After"] = str(max(1, int(retry_after + 0.999)))
        return response

    async def _post(self, request: web.Request) -> web.Response:
        if self._origins.refused(request):
            return self._refuse(request, 403, "this form may only be sent from our own pages")
        accept = self._accept()
        if accept is None:
            return self._refuse(request, 503, "we are starting or stopping; please try again")
        try:
            posted = await read_posted(request, max_upload_bytes=self._config.max_upload_bytes,
                                       file_fields=("attachment",))
        except BodyError as exc:
            if exc.status == 400 and exc.field:
                return self._invalid(request, {}, {exc.field: exc.reason})
            return self._refuse(request, exc.status, exc.reason)
        fields = posted.fields
        if fields.get("website", "").strip():
            log.info("web: a contact form with its honeypot filled was dropped (from %s)",
                     self._client(request))
            return self._success(request, None)
        values = {k: fields.get(k, "") for k in ("name", "email", "subject", "message")}
        errors: dict[str, str] = {}
        cleaned: dict[str, str] = {}
        for name, limit in (("name", MAX_NAME), ("subject", MAX_SUBJECT),
                            ("message", self._config.max_message_chars)):
            try:
                cleaned[name] = clean_text(values[name], limit)
            except ValueError as exc:
                errors[name] = f"it {exc}"
        if "\n" in cleaned.get("name", "") or "\n" in cleaned.get("subject", ""):
            errors.setdefault("name" if "\n" in cleaned.get("name", "") else "subject",
                              "it must be one line")
        email = clean_email(values["email"])
        if not values["email"].strip():
            errors["email"] = "please give your email address, so we can answer"
        elif email is None:
            errors["email"] = "that is not an email address (like ada@example.org)"
        if not cleaned.get("message") and "message" not in errors:
            errors["message"] = "please write your message"
        files = []
        for f in posted.files:
            kind = file_type(f.filename, f.data)
            if kind is None:
                errors["attachment"] = (f"{f.filename}: only images, PDF, text and office "
                                        "documents can be attached")
                break
            files.append(Attachment(f.filename, kind, f.data))
        if errors or email is None:
            return self._invalid(request, values, errors)
        for windows, key in ((self._per_address, self._client(request)),
                             (self._per_email, email)):
            if (wait := windows.take(key)) is not None:
                return self._refuse(request, 429, "too many messages from this address; "
                                                  "please try again later", retry_after=wait)
        key, raw = form_row(name=cleaned["name"], email=email, subject=cleaned["subject"],
                            message=cleaned["message"],
                            page=clean_page(request.headers.get("Referer")),
                            language=clean_language(request.headers.get("Accept-Language")),
                            files=files)
        try:
            await accept("form", key, raw, {"remote_id": key})
        except Exception as exc:  # noqa: BLE001 - the visitor may send it again
            log.warning("web: could not journal a contact form: %s", exc)
            return self._refuse(request, 503, "we could not take your message just now; "
                                              "please try again in a minute")
        reference = await self._records.reference_of(form_message_id(key))
        return self._success(request, reference)

    def _invalid(self, request: web.Request, values: dict[str, str],
                 errors: dict[str, str]) -> web.Response:
        if _wants_json(request):
            return web.json_response({"errors": errors}, status=400)
        return form_page(self._config.title, values=values, errors=errors,
                         max_upload_bytes=self._config.max_upload_bytes, status=400)

    def _success(self, request: web.Request, reference: str | None) -> web.Response:
        if _wants_json(request):
            return web.json_response({"reference": reference}, status=201)
        target = "/web/contact/sent" + (f"?reference={reference}" if reference else "")
        raise web.HTTPSeeOther(target)


def _wants_json(request: web.Request) -> bool:
    return "application/json" in request.headers.get("Accept", "")
