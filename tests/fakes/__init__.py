"""Loopback fakes of the remote SaaS APIs (Slack, Twilio, Telegram), speaking their wire protocols."""
