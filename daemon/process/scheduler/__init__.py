"""The scheduler: acknowledgements, SLA warnings and escalations, surveys, snoozes, reminders.

Time lives in the store. Every conversation carries its due times (``ack_due_at``,
``first_response_due_at``, ``next_response_due_at``, ``resolution_due_at``,
``escalation_due_at``, ``survey_due_at``, ``reminder_due_at``, ``snoozed_until``) and the earliest
of what the scheduler must act on, ``next_due_at`` (indexed). APScheduler only wakes the sweeps:
at the next due time and on ``scheduler.interval`` as a safety net. A restart loses no timer,
because there are none outside the store.

A sweep claims the conversations that are due, or that changed since the scheduler last planned
them, and in the same transaction writes the outbox rows of what it does and advances their due
times; several instances never act on the same conversation at once. Each escalation level is
counted on its SLA clock in that same transaction and carries an idempotency key: it fires once
per due time, across restarts and instances. An acknowledgement is decided under the recipient's
transaction advisory lock on PostgreSQL (:data:`ACK_LOCK_KEYS`), so the per-recipient rate limits
hold when several instances acknowledge one customer at once.

The ingest hook (:meth:`Scheduler.on_inbound`) runs inside the processing transaction: it starts
the SLA clocks of a customer message, sets ``ack_due_at`` for a new conversation, recognises a
survey answer ("5") and wakes the scheduler once the transaction commits.

The package, by duty:

* :mod:`.service`: the :class:`Scheduler` service: start and stop, wake-ups, the ingest hook, the
  sweep and its batches;
* :mod:`.claims`: which conversations a sweep takes and how it locks them;
* :mod:`.acknowledgements`: acknowledgements and the per-recipient rate limits;
* :mod:`.surveys`: surveys, reminders and ratings;
* :mod:`.escalations`: SLA warnings, escalation levels, notices to the person on call;
* :mod:`.customers`: the automatic messages to customers (may one go, language, words);
* :mod:`.staff`: notices to staff on the Slack desk (its thread, a managers' channel);
* :mod:`.rows`: the outbox rows a batch writes at its end, once per idempotency key;
* :mod:`.audit` and :mod:`.wording`: the scheduler's events and the words of its Slack notices;
* :mod:`.host`: what the scheduler takes from the daemon, as Protocols.
"""

from frontdesk.daemon.process.scheduler.acknowledgements import ACK_LOCK_KEYS, parse_rate_limits
from frontdesk.daemon.process.scheduler.service import Scheduler
from frontdesk.daemon.process.scheduler.staff import CHANNEL_POST
from frontdesk.daemon.process.scheduler.surveys import parse_rating
from frontdesk.daemon.process.scheduler.wording import slack_mention

__all__ = ["ACK_LOCK_KEYS", "CHANNEL_POST", "Scheduler", "parse_rate_limits", "parse_rating",
           "slack_mention"]
