"""Loopback fakes of the remote SaaS APIs (Slack, Twilio, Telegram) speaking their protocols."""
