"""TwiML for the voice webhook: a greeting (open or closed wording) and a voicemail recording."""

from __future__ import annotations

from urllib.parse import urlencode

from twilio.twiml.voice_response import VoiceResponse

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'

RECORDING_PATH = "/webhooks/twilio/voice/recording"
TRANSCRIPTION_PATH = "/webhooks/twilio/voice/transcription"
DONE_PATH = "/webhooks/twilio/voice/done"


def voicemail_twiml(*, public_url: str, greeting: str, caller: str, called: str,
                    max_length: int) -> str:
    """Say the greeting, then record (at most ``max_length`` seconds) with transcription.

    The recording status callback carries no caller number, so the caller rides in its URL (the
    URL is part of what Twilio signs, so it cannot be forged).
    """
    query = urlencode({"caller": caller, "called": called})
    response = VoiceResponse()
    response.say(greeting)
    response.record(
        action=f"{public_url}{DONE_PATH}",
        max_length=max_length,
        play_beep=True,
        transcribe=True,
        transcribe_callback=f"{public_url}{TRANSCRIPTION_PATH}",
        recording_status_callback=f"{public_url}{RECORDING_PATH}?{query}",
        recording_status_callback_event="completed",
    )
    response.hangup()
    return str(response.to_xml())


def hangup_twiml() -> str:
    """The answer once the recording is over."""
    response = VoiceResponse()
    response.hangup()
    return str(response.to_xml())
