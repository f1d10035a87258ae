"""The Slack staff desk: conversations as threads, thread replies as answers to customers.

The modules, top-down (each imports only those below it; import-linter holds this):

``service``  the daemon service :class:`~.service.SlackDesk`: start/stop, readiness, the backlog
             gauge, its hooks into the daemon (inbound, delivery, the outbox handler, the HTTP
             route) and the refresh loop
``events``   the slack-bolt app (HTTP ``/slack/events`` and Socket Mode): thread replies
``actions``  the root message's buttons and the ``/frontdesk`` command
``cards``    the root card of a conversation: built from the store, posted, kept current
``api``      Slack's Web API: the client, paced posting, Retry-After, errors, the user directory
``queue``    the desk's outbox rows (no Slack SDK, e.g. for escalation notices in a thread)
``blocks``   what is posted, as Block Kit and mrkdwn (pure functions)

A lower module that needs something of the service names it in a small Protocol
(:class:`~.actions.DeskParts`), never by importing a module above it.
"""
