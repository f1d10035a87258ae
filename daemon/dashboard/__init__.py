"""The dashboard: a web page for the team lead at ``GET /dashboard`` on ``http.listen``.

Read top-down: :mod:`.server` (the routes: sign-in, sign-out, the page), :mod:`.sessions` (the
signed session cookie), :mod:`.page` (the HTML) and :mod:`.charts` (inline SVG). The figures come
from :mod:`frontdesk.domain.dashboard`, which shares its summary with ``frontdesk report``.
"""
