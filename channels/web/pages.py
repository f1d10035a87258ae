"""The pages frontdesk serves to visitors: the widget demo, the contact form, its answers.

Every value is escaped (``html.escape``); the pages run no script of their own, and their
Content-Security-Policy allows only what each needs: the demo loads ``/web/widget.js`` from
the daemon, the form posts to itself; their one style sheet is allowed by its hash.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from html import escape

from aiohttp import web

CSS = """
:root{color-scheme:light;font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
body{margin:0;background:#f5f6f8;color:#1d2330;line-height:1.5}
main{max-width:40rem;margin:0 auto;padding:2rem 1.25rem}
h1{font-size:1.6rem;margin:0 0 .5rem}
p.lead{color:#3d4555;margin:0 0 1.5rem}
form{background:#fff;border:1px solid #d5d9e0;border-radius:8px;padding:1.25rem}
.field{margin-bottom:1rem}
label{display:block;font-weight:600;margin-bottom:.25rem}
input,textarea{box-sizing:border-box;width:100%;font:inherit;font-size:1rem;padding:.5rem .6rem;
border:1px solid #8a93a3;border-radius:6px;background:#fff;color:inherit}
textarea{min-height:9rem;resize:vertical}
input:focus,textarea:focus,button:focus{outline:3px solid #1f5fbf;outline-offset:1px}
.hint{color:#4a5262;font-size:.9rem}
.error{color:#a4161a;font-weight:600;margin:.25rem 0 0}
.errors{border:2px solid #a4161a;border-radius:6px;padding:.75rem 1rem;margin-bottom:1rem;
background:#fff5f5}
button{font:inherit;font-size:1rem;font-weight:600;padding:.6rem 1.2rem;border:0;
border-radius:6px;background:#1f5fbf;color:#fff;cursor:pointer}
.trap{position:absolute;left:-10000px;width:1px;height:1px;overflow:hidden}
.ref{font-size:1.3rem;font-weight:700}
"""

CSS_HASH = "sha256-" + base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode()

HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def csp(*, scripts: bool = False, forms: bool = False) -> str:
    """The Content-Security-Policy of one of our pages."""
    parts = ["default-src 'none'", f"style-src '{CSS_HASH}'", "img-src 'self' data: blob:",
             "base-uri 'none'", "frame-ancestors 'none'",
             "form-action 'self'" if forms else "form-action 'none'"]
    if scripts:
        parts += ["script-src 'self'", "connect-src 'self'"]
    return "; ".join(parts)


def page(title: str, body: str, *, status: int = 200, scripts: bool = False,
         forms: bool = False, lang: str = "en") -> web.Response:
    document = (f'<!doctype html><html lang="{escape(lang)}"><head><meta charset="utf-8">'
                '<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>{escape(title)}</title><style>{CSS}</style></head>"
                f"<body><main>{body}</main></body></html>")
    response = web.Response(text=document, status=status, content_type="text/html",
                            charset="utf-8")
    response.headers.update(HEADERS)
    response.headers["Content-Security-Policy"] = csp(scripts=scripts, forms=forms)
    response.headers["Cache-Control"] = "no-store"
    return response


def demo_page(title: str) -> web.Response:
    body = (f"<h1>{escape(title)}</h1>"
            '<p class="lead">This page shows the website chat as a customer sees it. Open the '
            "chat with the button at the bottom right and write a message: it arrives in "
            "frontdesk like an email would, and staff answer from Slack or "
            "<code>frontdesk reply</code>.</p>"
            "<p>To put the chat on your own site, add one line to its pages:</p>"
            "<pre><code>&lt;script src=\"PUBLIC_URL/web/widget.js\" async&gt;&lt;/script&gt;"
            "</code></pre>"
            '<p>and list the site in <code>web.allowed_origins</code>. Prefer a form? '
            '<a href="/web/contact">The hosted contact form</a>.</p>'
            '<script src="/web/widget.js" async></script>')
    return page(f"{title}: chat demo", body, scripts=True)


FIELDS = ("name", "email", "subject", "message")
LABELS = {"name": "Your name", "email": "Your email", "subject": "Subject",
          "message": "Your message", "attachment": "Attach files (optional)"}


def form_page(title: str, *, values: Mapping[str, str] | None = None,
              errors: Mapping[str, str] | None = None, max_upload_bytes: int,
              status: int = 200) -> web.Response:
    values = values or {}
    errors = errors or {}
    parts = [f"<h1>{escape(title)}</h1>",
             '<p class="lead">Write to us and we will answer by email.</p>']
    if errors:
        items = "".join(f"<li>{escape(LABELS.get(k, k))}: {escape(v)}</li>"
                        for k, v in errors.items())
        parts.append(f'<div class="errors" role="alert"><p><strong>Please check '
                     f"{'this field' if len(errors) == 1 else 'these fields'}:</strong></p>"
                     f"<ul>{items}</ul></div>")
    parts.append('<form method="post" action="/web/contact" enctype="multipart/form-data">')
    for name in FIELDS:
        error = errors.get(name)
        described = f' aria-describedby="{name}-error" aria-invalid="true"' if error else ""
        required = " required" if name in ("email", "message") else ""
        value = escape(values.get(name, ""))
        if name == "message":
            control = (f'<textarea id="{name}" name="{name}"{required}{described}>{value}'
                       "</textarea>")
        else:
            kind = "email" if name == "email" else "text"
            auto = {"name": "name", "email": "email"}.get(name, "off")
            control = (f'<input id="{name}" name="{name}" type="{kind}" value="{value}" '
                       f'autocomplete="{auto}"{required}{described}>')
        note = (f'<p class="error" id="{name}-error">{escape(error)}</p>' if error else "")
        parts.append(f'<div class="field"><label for="{name}">{LABELS[name]}</label>'
                     f"{control}{note}</div>")
    error = errors.get("attachment")
    limit = f"{max_upload_bytes / 1048576:.0f} MB" if max_upload_bytes >= 1048576 \
        else f"{max_upload_bytes // 1024} KB"
    parts.append(
        '<div class="field"><label for="attachment">Attach files (optional)</label>'
        '<input id="attachment" name="attachment" type="file" multiple '
        'aria-describedby="attachment-hint">'
        f'<p class="hint" id="attachment-hint">Images, PDF, text and office documents, up to '
        f"{limit} in all.</p>"
        + (f'<p class="error">{escape(error)}</p>' if error else "") + "</div>")
    parts.append('<div class="trap" aria-hidden="true"><label for="website">Leave this empty'
                 '</label><input id="website" name="website" type="text" tabindex="-1" '
                 'autocomplete="off"></div>')
    parts.append('<button type="submit">Send</button></form>')
    return page(f"{title}: contact us", "".join(parts), status=status, forms=True)


def sent_page(title: str, reference: str | None) -> web.Response:
    if reference:
        said = (f'<p>Thank you. Your message is with us under the reference '
                f'<span class="ref">{escape(reference)}</span>.</p>'
                "<p>We will answer by email; please keep the reference if you write again.</p>")
    else:
        said = ("<p>Thank you. Your message is with us; we will answer by email.</p>")
    return page(f"{title}: message sent", f"<h1>{escape(title)}</h1>{said}"
                '<p><a href="/web/contact">Write another message</a></p>')


def refusal_page(title: str, status: int, text: str) -> web.Response:
    return page(f"{title}", f"<h1>{escape(title)}</h1><p role=\"alert\">{escape(text)}</p>",
                status=status)
