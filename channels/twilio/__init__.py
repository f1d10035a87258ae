"""Twilio: SMS, MMS, WhatsApp and voicemail.

:class:`~frontdesk.channels.twilio.settings.TwilioConfig` (``[twilio]``) builds the channel; the
twilio SDK is imported only when it runs.
"""
