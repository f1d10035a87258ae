"""Twilio: SMS, MMS, WhatsApp and voicemail."""
