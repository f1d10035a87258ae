"""The REST API (``/api/v1``) and its OpenAPI document: :mod:`.models` declares the bodies,
:mod:`.spec` the operations and the document made from them, :mod:`.server` the steps every
request goes through (token, scope, rate, validation, idempotency, errors), :mod:`.operations`
what each route does, :mod:`.tokens` the tokens of ``frontdesk token``."""
