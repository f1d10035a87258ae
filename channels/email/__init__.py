"""Email: an SMTP server of our own, an IMAP mailbox, replies through a relay.

:class:`~frontdesk.channels.email.settings.EmailConfig` (``[email]``) builds the channels.
"""
