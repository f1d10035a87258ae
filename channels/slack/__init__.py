"""The Slack staff desk: conversations as threads, thread replies as answers to customers."""
