"""The Slack staff desk: conversations as threads, thread replies as answers to customers.

``desk`` is the daemon service (outbox handler, ingest and delivery hooks, root refreshes),
``events`` the slack-bolt app (HTTP ``/slack/events`` and Socket Mode), ``actions`` the buttons
and the ``/frontdesk`` command, ``blocks`` what is posted, ``queue`` the outbox rows (usable
without the Slack SDK, e.g. for escalation notices in a thread).
"""
