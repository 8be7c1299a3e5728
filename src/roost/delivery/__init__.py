"""Routing and delivery: local (aliases, .forward, Maildir, mbox, pipes) and outbound SMTP."""
