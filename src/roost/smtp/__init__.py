"""SMTP server on aiosmtpd: listeners 25/587/465, policy, durable enqueue (RFC 5321)."""
